"""The `connect_guard` sensor: in-kernel connect rules (bpf/connect_guard.bpf.c), as cgroup
connect4/connect6 programs on the root cgroup v2.

They run before the kernel sends anything: in enforce mode the connect fails with EPERM
and a verdict record asks userspace to SIGKILL the caller; in audit it only reports. The
maps hold destination networks and ports -> a bitmask of kernel rule slots.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import platform
from collections.abc import Sequence
from typing import Any

from agent.engine.kernel import KernelConnectSpec
from agent.model import EventKind
from agent.sources.bpf import BpfSensor, set_kcfg
from agent.sources.kevents import KcfgSlot
from agent.sources.sensor import SensorUnavailable

log = logging.getLogger("nodewarden.bpf")

# one kernel rule slot: what the rule tests, and whether it refuses (enforce) or reports
ConnectSlot = tuple[KernelConnectSpec, bool]

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351, "riscv64": 280}
_BPF_LINK_CREATE = 28


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """BPF_LINK_CREATE (Linux >= 5.7 for cgroup programs): a link fd, or -errno.

    BCC's attach_func uses BPF_PROG_ATTACH, whose attachment outlives the process; a link
    is released with its last fd. The attr is the link_create member of union bpf_attr:
    prog_fd, target_fd, attach_type, flags (u32 each), the rest zero."""
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        return -errno.ENOSYS
    attr = (ctypes.c_uint32 * 16)(prog_fd, target_fd, attach_type, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(ctypes.c_long(nr), ctypes.c_long(_BPF_LINK_CREATE), ctypes.byref(attr),
                      ctypes.c_uint(ctypes.sizeof(attr)))
    return int(fd) if fd >= 0 else -ctypes.get_errno()


def cgroup2_root(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The root of the cgroup v2 hierarchy (unified or hybrid mount), if there is one."""
    try:
        with open(mountinfo, encoding="utf-8") as f:
            for line in f:
                parts = line.split(" - ")
                if len(parts) == 2 and parts[1].startswith("cgroup2 "):
                    fields = parts[0].split()
                    if fields[3] == "/":
                        return fields[4]
    except OSError:
        pass
    return None


def connect_masks(slots: Sequence[ConnectSlot],
                  ) -> tuple[dict[tuple[int, bytes], int], dict[int, int], dict[KcfgSlot, int]]:
    """The maps' contents (pure): (prefixlen, address) -> slot bitmask, port -> slot
    bitmask, and the kcfg entries of the connect rules."""
    nets: dict[tuple[int, bytes], int] = {}
    ports: dict[int, int] = {}
    cfg = dict.fromkeys((KcfgSlot.CONNECT_ENFORCE, KcfgSlot.CONNECT_NET,
                         KcfgSlot.CONNECT_PORT, KcfgSlot.CONNECT_ALL), 0)
    for slot, (spec, enforce) in enumerate(slots):
        bit = 1 << slot
        cfg[KcfgSlot.CONNECT_ALL] |= bit
        for prefix in spec.cidrs:
            nets[prefix] = nets.get(prefix, 0) | bit
        for port in spec.ports:
            ports[port] = ports.get(port, 0) | bit
        if spec.need_net:
            cfg[KcfgSlot.CONNECT_NET] |= bit
        if spec.need_ports:
            cfg[KcfgSlot.CONNECT_PORT] |= bit
        if enforce:
            cfg[KcfgSlot.CONNECT_ENFORCE] |= bit
    return nets, ports, cfg


def write_connect_rules(net_t: Any, ports_t: Any, kcfg: Any,
                        slots: Sequence[ConnectSlot]) -> None:
    """Replace the connect rule maps' contents; every slot is off while they change."""
    nets, ports, cfg = connect_masks(slots)
    set_kcfg(kcfg, KcfgSlot.CONNECT_ALL, 0)
    net_t.clear()
    ports_t.clear()
    for (plen, addr), mask in nets.items():
        k = net_t.Key()
        k.prefixlen = plen
        k.addr = (ctypes.c_ubyte * 16)(*addr)
        net_t[k] = ctypes.c_ulonglong(mask)
    for port, mask in ports.items():
        ports_t[ports_t.Key(port)] = ctypes.c_ulonglong(mask)
    # CONNECT_ALL last: it turns the lookups back on
    for slot in sorted(cfg, key=lambda s: s is KcfgSlot.CONNECT_ALL):
        set_kcfg(kcfg, slot, cfg[slot])


class ConnectGuard(BpfSensor):
    """Refuses (enforce) or reports (audit) connects that in-kernel connect rules match."""

    name = "connect_guard"
    kinds = frozenset({EventKind.CONNECT})
    source = "connect_guard.bpf.c"

    def __init__(self, program: Any) -> None:
        super().__init__(program)
        self._guards: list[tuple[Any, int, Any]] = []
        self._links: list[int] = []
        self._cgroup_fd = -1

    def start(self) -> None:
        """Attach connect4/connect6 to the root cgroup v2, as bpf_links when the kernel has
        them. Without cgroup v2 connect rules stay in userspace."""
        from bcc import BPF, BPFAttachType

        root = cgroup2_root()
        if root is None:
            raise SensorUnavailable("no cgroup v2 hierarchy: connect rules are enforced in "
                                    "userspace only", "mount cgroup2 (systemd's unified "
                                    "hierarchy)")
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name, kind in (("nw_connect4", BPFAttachType.CGROUP_INET4_CONNECT),
                               ("nw_connect6", BPFAttachType.CGROUP_INET6_CONNECT)):
                fn = self.program.bpf.load_func(name.encode(), BPF.CGROUP_SOCK_ADDR,
                                                attach_type=kind)
                self._attach(fn, fd, kind)
        except Exception as e:  # noqa: BLE001 - BCC raises bare Exception
            self._detach()
            os.close(fd)
            raise SensorUnavailable(f"the connect guard did not attach ({e}); connect rules "
                                    "stay in userspace", "a kernel with cgroup BPF "
                                    "(CONFIG_CGROUP_BPF)") from None
        if self._guards:
            self._cgroup_fd = fd   # legacy attachments are detached through it
        else:
            os.close(fd)   # links hold the cgroup themselves
        self._up = True

    def _attach(self, fn: Any, cgroup_fd: int, kind: Any) -> None:
        from bcc import BPF

        link = link_create(fn.fd, cgroup_fd, int(kind))
        if link >= 0:
            # a bpf_link lives as long as our fd: if the agent dies (SIGKILL, OOM, an
            # uninstall past its grace period) the kernel detaches the guard, so no connect
            # is refused on the node by an agent that is gone
            self._links.append(link)
            return
        log.warning("bpf_link unavailable (%s): the connect guard is attached with "
                    "BPF_PROG_ATTACH and outlives a killed agent until the next start "
                    "replaces it", os.strerror(-link))
        BPF.attach_func(fn, cgroup_fd, kind)
        self._guards.append((fn, cgroup_fd, kind))

    def _detach(self) -> None:
        from bcc import BPF

        for link in self._links:
            os.close(link)   # closing the last fd of a bpf_link detaches its program
        self._links.clear()
        for fn, fd, kind in self._guards:
            with contextlib.suppress(Exception):   # best effort at shutdown
                BPF.detach_func(fn, fd, kind)
        self._guards.clear()

    def load_rules(self, slots: Sequence[ConnectSlot]) -> None:
        """Load the in-kernel connect rules: one (KernelConnectSpec, enforce) per slot."""
        p = self.program
        write_connect_rules(p["kconn_net"], p["kconn_ports"], p["kcfg"], slots)

    def close(self) -> None:
        """Detach both cgroup programs."""
        self._detach()
        if self._cgroup_fd >= 0:
            os.close(self._cgroup_fd)
            self._cgroup_fd = -1
        super().close()
