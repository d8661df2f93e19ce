"""The kernel sensor's records (bpf/events.h `struct nw_mount_event`, `struct
nw_kern_event`) in Python: layouts, decoders, the names of MS_* and CLONE_NEW* flags and
BPF program types, and what is read from /proc while the caller lives.

What only /proc can say is resolved by the observer through the detail's
`resolve(pid, procfs)`: what a setns descriptor names (`/proc/PID/fd/FD` reads
`mnt:[4026531841]`, or it is a pidfd whose fdinfo has `Pid:`), whether that namespace is
pid 1's, a finit_module descriptor's file, a relative mount target's directory. setns is
usually followed by an exec at once (nsenter): when the descriptor is already closed, the
namespace the caller is in now stands for the one it entered.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass

from agent.details import BpfLoad, ModuleLoad, Mount, Namespaces
from agent.sources.privrecord import COMM_LEN, Call, Decoded, ProcRoot, cstr
from agent.sources.recordkind import RecordKind
from agent.text import decode

FSTYPE_LEN = 32         # NW_FSTYPE_LEN
MOUNT_PATH_LEN = 256    # NW_MOUNT_PATH_LEN

# struct nw_mount_event
MOUNT_FIELDS: tuple[tuple[str, str], ...] = (
    ("ts_ns", "Q"), ("kind", "I"), ("pid", "I"), ("uid", "I"), ("call", "I"),
    ("flags", "Q"), ("comm", f"{COMM_LEN}s"), ("fstype", f"{FSTYPE_LEN}s"),
    ("source", f"{MOUNT_PATH_LEN}s"), ("target", f"{MOUNT_PATH_LEN}s"),
)
MOUNT_FORMAT = struct.Struct("<" + "".join(code for _, code in MOUNT_FIELDS))

# struct nw_kern_event
KERN_FIELDS: tuple[tuple[str, str], ...] = (
    ("ts_ns", "Q"), ("kind", "I"), ("pid", "I"), ("uid", "I"), ("call", "I"),
    ("flags", "Q"), ("fd", "I"), ("prog_type", "I"), ("comm", f"{COMM_LEN}s"),
    ("name", f"{COMM_LEN}s"),
)
KERN_FORMAT = struct.Struct("<" + "".join(code for _, code in KERN_FIELDS))

# MS_* (linux/mount.h), by the name `mount.options` gives
MS_FLAGS: tuple[tuple[int, str], ...] = (
    (1, "rdonly"), (2, "nosuid"), (4, "nodev"), (8, "noexec"), (16, "synchronous"),
    (32, "remount"), (64, "mandlock"), (128, "dirsync"), (256, "nosymfollow"),
    (1024, "noatime"), (2048, "nodiratime"), (4096, "bind"), (8192, "move"),
    (16384, "rec"), (32768, "silent"), (1 << 16, "posixacl"), (1 << 17, "unbindable"),
    (1 << 18, "private"), (1 << 19, "slave"), (1 << 20, "shared"), (1 << 21, "relatime"),
    (1 << 23, "i_version"), (1 << 24, "strictatime"), (1 << 25, "lazytime"),
)
MS_MGC_MSK, MS_MGC_VAL = 0xFFFF0000, 0xC0ED0000

# CLONE_NEW* (linux/sched.h), by the namespace type named in /proc/PID/ns
CLONE_NEW: tuple[tuple[int, str], ...] = (
    (0x00020000, "mnt"), (0x02000000, "cgroup"), (0x04000000, "uts"), (0x08000000, "ipc"),
    (0x10000000, "user"), (0x20000000, "pid"), (0x40000000, "net"), (0x00000080, "time"),
)

# enum bpf_prog_type (linux/bpf.h), lower case without BPF_PROG_TYPE_
PROG_TYPES: tuple[str, ...] = (
    "unspec", "socket_filter", "kprobe", "sched_cls", "sched_act", "tracepoint", "xdp",
    "perf_event", "cgroup_skb", "cgroup_sock", "lwt_in", "lwt_out", "lwt_xmit", "sock_ops",
    "sk_skb", "cgroup_device", "sk_msg", "raw_tracepoint", "cgroup_sock_addr",
    "lwt_seg6local", "lirc_mode2", "sk_reuseport", "flow_dissector", "cgroup_sysctl",
    "raw_tracepoint_writable", "cgroup_sockopt", "tracing", "struct_ops", "ext", "lsm",
    "sk_lookup", "syscall", "netfilter",
)

# the initial namespaces' inodes (linux/nsfs.h `enum init_ns_ino`; net and mnt from 6.18
# on): pid 1's, when its /proc/1/ns cannot be read (a pid 1 that is not dumpable)
INIT_NS_INODES: dict[str, int] = {
    "ipc": 0xEFFFFFFF, "uts": 0xEFFFFFFE, "user": 0xEFFFFFFD, "pid": 0xEFFFFFFC,
    "cgroup": 0xEFFFFFFB, "time": 0xEFFFFFFA, "net": 0xEFFFFFF9, "mnt": 0xEFFFFFF8,
}

_NS_LINK = re.compile(r"^(\w+):\[(\d+)\]$")
_MODULE_SUFFIX = re.compile(r"\.ko(\.(xz|zst|gz))?$")


def mount_options(flags: int) -> tuple[str, ...]:
    """The MS_* flags by name, in bit order (the old magic number in the high bits is not
    a flag)."""
    if flags & MS_MGC_MSK == MS_MGC_VAL:
        flags &= ~MS_MGC_MSK
    return tuple(name for bit, name in MS_FLAGS if flags & bit)


def ns_types(flags: int) -> tuple[str, ...]:
    """The namespace types of a CLONE_NEW* mask, in `CLONE_NEW`'s order."""
    return tuple(name for bit, name in CLONE_NEW if flags & bit)


def prog_type_name(t: int) -> str:
    """A BPF program type's name, or its number for one newer than this table."""
    return PROG_TYPES[t] if 0 <= t < len(PROG_TYPES) else str(t)


def module_name(path: str) -> str:
    """The name the kernel gives a module file (`/lib/.../nf-nat.ko.xz` -> `nf_nat`)."""
    base = path.rpartition("/")[2]
    stripped = _MODULE_SUFFIX.sub("", base)
    return stripped.replace("-", "_") if stripped != base else ""


def _readlink(path: str) -> str:
    try:
        return decode(os.fsencode(os.readlink(path)))
    except OSError:
        return ""


def _ns_inode(procfs: ProcRoot, pid: int, ns_type: str) -> int:
    """The inode of process `pid`'s namespace of a type (0 when unreadable)."""
    m = _NS_LINK.match(_readlink(f"{procfs.root}/{pid}/ns/{ns_type}"))
    return int(m.group(2)) if m else 0


def _pidfd_target(procfs: ProcRoot, pid: int, fd: int) -> int:
    """The pid a pidfd refers to, from its fdinfo's `Pid:` line (0 when not a pidfd)."""
    try:
        with open(f"{procfs.root}/{pid}/fdinfo/{fd}", "rb") as f:
            info = f.read()
    except OSError:
        return 0
    for line in info.splitlines():
        if line.startswith(b"Pid:"):
            try:
                return max(int(line.split()[1]), 0)
            except (IndexError, ValueError):
                return 0
    return 0


def _host_inode(procfs: ProcRoot, ns_type: str) -> int:
    """The inode of pid 1's namespace of a type; the initial namespace's when /proc/1/ns
    cannot be read."""
    return _ns_inode(procfs, 1, ns_type) or INIT_NS_INODES.get(ns_type, 0)


def _hosts(procfs: ProcRoot, types: tuple[str, ...], inode_of: dict[str, int]) -> bool:
    """Whether any of these namespaces (type -> inode) is pid 1's."""
    return any(inode_of.get(t, 0) and inode_of[t] == _host_inode(procfs, t) for t in types)


@dataclass(frozen=True, slots=True)
class PendingSetns:
    """A setns record before its descriptor is read: `resolve` gives the Namespaces."""

    fd: int
    nstype: int

    def resolve(self, pid: int, procfs: ProcRoot) -> Namespaces:
        """What the descriptor names, read from `procfs` while the caller holds it: a
        namespace (`mnt:[ino]`) or a pidfd (fdinfo `Pid:`). Once it is closed, the
        namespaces the caller is in now (it entered them) stand in."""
        types = ns_types(self.nstype)
        link = _readlink(f"{procfs.root}/{pid}/fd/{self.fd}")
        m = _NS_LINK.match(link)
        if m:
            kind, inode = m.group(1), int(m.group(2))
            types = types or (kind,)
            return Namespaces(call="setns", types=types,
                              host=inode == _host_inode(procfs, kind))
        target = _pidfd_target(procfs, pid, self.fd) if link else 0
        if target:
            inodes = {t: _ns_inode(procfs, target, t) for t in types}
            return Namespaces(call="setns", types=types, target_pid=target,
                              host=target == 1 or _hosts(procfs, types, inodes))
        inodes = {t: _ns_inode(procfs, pid, t) for t in types}
        return Namespaces(call="setns", types=types, host=_hosts(procfs, types, inodes))


@dataclass(frozen=True, slots=True)
class PendingModule:
    """A finit_module record before its descriptor is read: `resolve` gives the file."""

    fd: int

    def resolve(self, pid: int, procfs: ProcRoot) -> ModuleLoad:
        """The module file the caller passed, from /proc/PID/fd/FD (empty once closed)."""
        path = _readlink(f"{procfs.root}/{pid}/fd/{self.fd}")
        return ModuleLoad(call="finit_module", path=path, name=module_name(path))


@dataclass(frozen=True, slots=True)
class PendingMount:
    """A mount whose target is relative: `resolve` makes it absolute against the
    caller's working directory."""

    mount: Mount

    def resolve(self, pid: int, procfs: ProcRoot) -> Mount:
        """The Mount with the target joined to /proc/PID/cwd (as given when unreadable)."""
        cwd = _readlink(f"{procfs.root}/{pid}/cwd")
        if not cwd.startswith("/"):
            return self.mount
        target = os.path.normpath(os.path.join(cwd, self.mount.target))
        return Mount(source=self.mount.source, target=target, fstype=self.mount.fstype,
                     flags=self.mount.flags, options=self.mount.options)


def decode_mount(data: bytes | memoryview) -> Decoded:
    """(ts_ns, kind, pid, uid, comm, detail) of a mount record."""
    ts, kind, pid, uid, _, flags, comm, fstype, source, target = MOUNT_FORMAT.unpack_from(data)
    m = Mount(source=cstr(source), target=cstr(target), fstype=cstr(fstype), flags=flags,
              options=mount_options(flags))
    detail: object = m if m.target.startswith("/") else PendingMount(m)
    return ts, kind, pid, uid, cstr(comm), detail


def decode_kern(data: bytes | memoryview) -> Decoded:
    """(ts_ns, kind, pid, uid, comm, detail) of a setns, unshare, module or bpf record.
    Raises ValueError for a kind this layout does not carry."""
    ts, kind, pid, uid, call, flags, fd, prog_type, comm, name = KERN_FORMAT.unpack_from(data)
    detail: object
    if kind == RecordKind.SETNS:
        detail = PendingSetns(fd, flags)
    elif kind == RecordKind.UNSHARE:
        detail = Namespaces(call="unshare", types=ns_types(flags))
    elif kind == RecordKind.MODULE:
        detail = (PendingModule(fd) if call == Call.FINIT_MODULE
                  else ModuleLoad(call="init_module"))
    elif kind == RecordKind.BPF:
        detail = BpfLoad(cmd="prog_load", prog_type=prog_type_name(prog_type),
                         prog_name=cstr(name))
    else:
        raise ValueError(f"not a kernel sensor record kind: {kind}")
    return ts, kind, pid, uid, cstr(comm), detail
