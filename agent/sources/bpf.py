"""The eBPF sensors through BCC: the only module that imports `bcc`.

`BpfSensor` compiles bpf/sensors.bpf.c, attaches its tracepoints and hands every decoded
record to a callback. `check()` says, before anything is loaded, what is missing on this
machine and how to fix it, so the agent can fall back to procfs scans with one clear
message instead of a compiler traceback.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

from agent.sources.kevents import RawEvent, decode

log = logging.getLogger("nodewarden.bpf")

TRACEFS = "/sys/kernel/tracing"
DEFAULT_RING_PAGES = 1024  # 4 MiB: ~12,000 events of headroom for a stalled consumer
MAX_BATCH = 4096  # records per poll, so the agent's loop turns at least every few ms


class BpfUnavailable(Exception):
    """eBPF cannot run here; `reason` says what is missing, `fix` how to get it."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(f"{reason} ({fix})")
        self.reason = reason
        self.fix = fix


def source_dir() -> Path:
    """bpf/ as installed with the package (agent.bpf), or the checkout's."""
    return Path(str(files("agent.bpf")))


def program_text() -> str:
    """The BPF program as BCC compiles it, header inlined: what `--print-bpf` shows."""
    d = source_dir()
    header = (d / "events.h").read_text()
    body = (d / "sensors.bpf.c").read_text()
    return body.replace('#include "events.h"', header)


def _tracefs_ready() -> bool:
    return os.path.isdir(f"{TRACEFS}/events/sched")


def _mount_tracefs() -> None:
    # the equivalent of `mount -t tracefs nodev /sys/kernel/tracing`
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"nodev", TRACEFS.encode(), b"tracefs", 0, None) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def check() -> None:
    """Raise BpfUnavailable naming the first thing eBPF lacks on this machine."""
    if os.geteuid() != 0:
        raise BpfUnavailable("not running as root", "run as root, or in the DaemonSet with "
                             "CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN")
    try:
        import bcc  # noqa: F401
    except ImportError:
        raise BpfUnavailable("the bcc Python module is missing",
                             "apt-get install python3-bpfcc, and use a venv made with "
                             "--system-site-packages (scripts/setup.sh does both)") from None
    if not _tracefs_ready():
        try:
            _mount_tracefs()
        except OSError as e:
            raise BpfUnavailable(f"tracefs is not mounted at {TRACEFS} and mounting it "
                                 f"failed: {e.strerror}",
                                 f"mount -t tracefs nodev {TRACEFS}") from None
        if not _tracefs_ready():
            raise BpfUnavailable("the kernel exposes no tracepoints",
                                 "use a kernel built with CONFIG_FTRACE and tracepoints")
        log.info("mounted tracefs at %s", TRACEFS)
    build = Path(f"/lib/modules/{platform.release()}/build")
    if not build.exists():
        raise BpfUnavailable(f"kernel headers are missing ({build})",
                             "apt-get install linux-headers-$(uname -r) or "
                             "linux-headers-cloud-amd64 and link it there (scripts/setup.sh)")


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


def cgroup2_root() -> str | None:
    """The root of the cgroup v2 hierarchy (unified or hybrid mount), if there is one."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                parts = line.split(" - ")
                if len(parts) == 2 and parts[1].startswith("cgroup2 "):
                    fields = parts[0].split()
                    if fields[3] == "/":
                        return fields[4]
    except OSError:
        pass
    return None


def kernel_has_ringbuf(release: str | None = None) -> bool:
    """BPF ring buffers exist from Linux 5.8 on; older kernels get the perf buffer."""
    parts = (release or platform.release()).split(".")
    try:
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (5, 8)
    except (IndexError, ValueError):
        return False


class BpfSensor:
    """Loaded sensors: call `poll()` in a loop; `lost()` counts records the kernel dropped."""

    source = "bpf"   # the label of its losses in events_lost_total

    def __init__(self, on_event: Callable[[RawEvent], None], ring_pages: int = DEFAULT_RING_PAGES,
                 perf: bool | None = None) -> None:
        from bcc import BPF

        if perf is None:
            perf = not kernel_has_ringbuf()
        if ring_pages < 1 or ring_pages & (ring_pages - 1):
            raise ValueError("ring_pages must be a power of two")
        self._on_event = on_event
        self.perf = perf
        cflags = [f"-I{source_dir()}", f"-DNW_RINGBUF_PAGES={ring_pages}", "-w"]
        if perf:
            cflags.append("-DNW_PERF")

        self._bpf = BPF(src_file=str(source_dir() / "sensors.bpf.c").encode(), cflags=cflags)
        self._lost = self._bpf["lost"]
        events = self._bpf["events"]
        if perf:
            # wakeup after a few records rather than each: the measured ceiling of a Python
            # consumer with wakeup_events=1 is ~100k/s
            events.open_perf_buffer(self._perf_cb, page_cnt=ring_pages,
                                    lost_cb=self._perf_lost)
        else:
            events.open_ring_buffer(self._ring_cb)
        self._perf_lost_count = 0
        self._batch = 0
        self.errors = 0
        self._guards: list[tuple[Any, int, Any]] = []
        self._links: list[int] = []
        self.connect_guard = self._attach_connect_guards()

    def _attach_connect_guards(self) -> bool:
        """Attach the connect4/connect6 programs to the root cgroup v2 (in-kernel connect
        rules). Without cgroup v2 those rules stay in userspace."""
        from bcc import BPF, BPFAttachType

        root = cgroup2_root()
        if root is None:
            log.warning("no cgroup v2 hierarchy: connect rules are enforced in userspace only")
            return False
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name, kind in (("nw_connect4", BPFAttachType.CGROUP_INET4_CONNECT),
                               ("nw_connect6", BPFAttachType.CGROUP_INET6_CONNECT)):
                fn = self._bpf.load_func(name.encode(), BPF.CGROUP_SOCK_ADDR, attach_type=kind)
                link = link_create(fn.fd, fd, int(kind))
                if link >= 0:
                    # a bpf_link lives as long as our fd: if the agent dies (SIGKILL, OOM,
                    # an uninstall past its grace period) the kernel detaches the guard, so
                    # no connect is refused on the node by an agent that is gone
                    self._links.append(link)
                else:
                    log.warning("bpf_link unavailable (%s): the connect guard is attached "
                                "with BPF_PROG_ATTACH and outlives a killed agent until the "
                                "next start replaces it", os.strerror(-link))
                    BPF.attach_func(fn, fd, kind)
                    self._guards.append((fn, fd, kind))
        except Exception as e:  # noqa: BLE001 - BCC raises bare Exception
            log.warning("connect guard not attached (%s): connect rules stay in userspace", e)
            self._detach_guards()
            os.close(fd)
            return False
        if not self._guards:
            os.close(fd)   # links hold the cgroup themselves
        return True

    def _detach_guards(self) -> None:
        from bcc import BPF

        for link in self._links:
            os.close(link)   # closing the last fd of a bpf_link detaches its program
        self._links.clear()

        for fn, fd, kind in self._guards:
            try:
                BPF.detach_func(fn, fd, kind)
            except Exception:  # noqa: BLE001, S110 - best effort at shutdown
                pass
        self._guards.clear()

    def _ring_cb(self, _ctx: object, data: int, size: int) -> int:
        self._deliver(data, size)
        self._batch += 1
        # a negative return ends this poll (libbpf has already consumed this record): under
        # a load above what we can consume the ring never drains, and the loop would never
        # see SIGTERM, timers or reloads
        return -1 if self._batch >= MAX_BATCH else 0

    def _deliver(self, data: int, size: int) -> None:
        # ctypes would print and swallow an exception raised in a callback: log it as ours
        try:
            self._on_event(decode(ctypes.string_at(data, size)))
        except Exception:
            self.errors += 1
            log.exception("error handling a kernel record (%d so far)", self.errors)

    def _perf_cb(self, _cpu: int, data: int, size: int) -> None:
        self._deliver(data, size)

    def _perf_lost(self, count: int) -> None:
        self._perf_lost_count += count

    def set_kernel_rules(self, specs: list[tuple[set[str], set[str], bool]]) -> None:
        """Load the in-kernel exec rules: one (names, paths, enforce) per slot, in order.
        Replaces what was there, so a reload never leaves a stale name behind."""
        names_t, paths_t, cfg = self._bpf["kexec_names"], self._bpf["kexec_paths"], self._bpf["kcfg"]
        names: dict[bytes, int] = {}
        paths: dict[bytes, int] = {}
        enforce = 0
        for slot, (ns, ps, enf) in enumerate(specs):
            for n in ns:
                names[n.encode()[:15]] = names.get(n.encode()[:15], 0) | (1 << slot)
            for p in ps:
                paths[p.encode()[:255]] = paths.get(p.encode()[:255], 0) | (1 << slot)
            if enf:
                enforce |= 1 << slot
        # enforcement off while the maps change, so no half-written set can kill
        cfg[ctypes.c_int(0)] = ctypes.c_ulonglong(0)
        names_t.clear()
        paths_t.clear()
        for raw, mask in names.items():
            k = names_t.Key()
            k.comm = raw
            names_t[k] = ctypes.c_ulonglong(mask)
        for raw, mask in paths.items():
            k = paths_t.Key()
            k.path = raw
            paths_t[k] = ctypes.c_ulonglong(mask)
        cfg[ctypes.c_int(0)] = ctypes.c_ulonglong(enforce)

    def set_kernel_connect_rules(self, specs: list[tuple[Any, bool]]) -> None:
        """Load the in-kernel connect rules: one (KernelConnectSpec, enforce) per slot."""
        net_t, ports_t, cfg = self._bpf["kconn_net"], self._bpf["kconn_ports"], self._bpf["kcfg"]
        nets: dict[tuple[int, bytes], int] = {}
        ports: dict[int, int] = {}
        enforce = need_net = need_ports = everything = 0
        for slot, (spec, enf) in enumerate(specs):
            bit = 1 << slot
            everything |= bit
            for prefix in spec.cidrs:
                nets[prefix] = nets.get(prefix, 0) | bit
            for port in spec.ports:
                ports[port] = ports.get(port, 0) | bit
            if spec.need_net:
                need_net |= bit
            if spec.need_ports:
                need_ports |= bit
            if enf:
                enforce |= bit
        cfg[ctypes.c_int(4)] = ctypes.c_ulonglong(0)  # off while the maps change
        net_t.clear()
        ports_t.clear()
        for (plen, addr), mask in nets.items():
            k = net_t.Key()
            k.prefixlen = plen
            k.addr = (ctypes.c_ubyte * 16)(*addr)
            net_t[k] = ctypes.c_ulonglong(mask)
        for port, mask in ports.items():
            ports_t[ports_t.Key(port)] = ctypes.c_ulonglong(mask)
        for i, v in ((1, enforce), (2, need_net), (3, need_ports), (4, everything)):
            cfg[ctypes.c_int(i)] = ctypes.c_ulonglong(v)

    def poll(self, timeout_ms: int) -> None:
        """Deliver pending records (at most MAX_BATCH) to the callback, waiting up to
        `timeout_ms` for one."""
        self._batch = 0
        if self.perf:
            self._bpf.perf_buffer_poll(timeout=timeout_ms)
        else:
            self._bpf.ring_buffer_poll(timeout_ms)

    def lost(self) -> int:
        """Records dropped since load (reserve failures counted in the kernel)."""
        return int(self._lost[0].value) + self._perf_lost_count

    def close(self) -> None:
        """Detach every tracepoint and cgroup program and free the maps."""
        fds = {fd for _, fd, _ in self._guards}
        self._detach_guards()
        for fd in fds:
            os.close(fd)
        self._bpf.cleanup()
