"""The values that flow through the pipeline: processes, connections, events, matches.

They are plain slotted dataclasses so that building millions of them stays cheap, and
derived fields (basenames, identity) are computed once when the value is made rather
than on every rule that reads them.
"""

from __future__ import annotations

import ipaddress
import struct

# _socket, not socket: the same C functions, without socket.py's enums and selectors (a few
# ms of every command's start-up)
from _socket import AF_INET, AF_INET6, inet_pton
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import xxhash

_ID = struct.Struct("<QQQQQ")



class EventKind(StrEnum):
    """What an event reports: the one list of kinds. The kernel's numbers for the kinds its
    sensors send are in bpf/events.h (`enum nw_kind`), which a test holds to this list.

    A StrEnum: a kind compares, hashes and serialises as its text, so recorded events and
    rules keep saying "exec"."""

    EXEC = "exec"
    SCAN = "scan"
    CONNECT = "connect"
    ACCEPT = "accept"
    CLOSE = "close"
    EXIT = "exit"
    FORK = "fork"
    # issue 11's sensors: each carries an agent.details family as Event.detail (udp: none,
    # its Connection is the destination)
    FILE = "file"
    PTRACE = "ptrace"
    SETUID = "setuid"
    MEMFD = "memfd"
    MOUNT = "mount"
    SETNS = "setns"
    UNSHARE = "unshare"
    MODULE = "module"
    BPF = "bpf"
    UDP = "udp"
    DNS = "dns"


EVENT_KINDS = tuple(EventKind)
# what rules may name in `on:` (a fork is never judged: the child runs its parent's program)
RULE_KINDS = tuple(k for k in EventKind if k is not EventKind.FORK)
# kinds that judge a process instance, and kinds that carry a connection
PROCESS_KINDS = (EventKind.EXEC, EventKind.SCAN)
CONNECTION_KINDS = (EventKind.CONNECT, EventKind.ACCEPT)
# every kind whose events may carry a Connection
WITH_CONNECTION = frozenset({EventKind.CONNECT, EventKind.ACCEPT, EventKind.CLOSE,
                             EventKind.UDP, EventKind.DNS})


class Severity(StrEnum):
    """How bad a finding is, least first: the order `slack_min_severity` and friends use."""

    INFO = "info"
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 for info up to 4 for critical."""
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {s: i for i, s in enumerate(Severity)}
SEVERITIES = tuple(Severity)

# The bytes of a process name (comm) the kernel keeps: TASK_COMM_LEN 16 less the NUL. A
# comm of 15 bytes may have been cut from a longer name.
COMM_LEN = 15

# (pid, starttime, exe device, exe inode): one process instance running one program
InstanceKey = tuple[int, int, int, int]


def process_identity(pid: int, ppid: int, starttime: int, exe_dev: int = 0,
                     exe_ino: int = 0) -> int:
    """xxhash64 of (pid, ppid, starttime, exe device, exe inode).

    pid + starttime alone name a process instance; the executable's (dev, inode) makes a
    process that re-execs into another binary a new identity, so it is judged again.
    """
    return xxhash.xxh64_intdigest(
        _ID.pack(pid & 0xFFFFFFFFFFFFFFFF, ppid & 0xFFFFFFFFFFFFFFFF,
                 starttime & 0xFFFFFFFFFFFFFFFF, exe_dev & 0xFFFFFFFFFFFFFFFF,
                 exe_ino & 0xFFFFFFFFFFFFFFFF)
    )


@dataclass(slots=True, eq=False, weakref_slot=True)
class Process:
    """One process as procfs (or an exec event) describes it.

    `starttime` is in clock ticks since boot (field 22 of /proc/PID/stat): with the pid it
    names one process instance, which is what kills are checked against.

    The command line is held once, as `cmdline` (argv); the joined text and the arguments
    are views made when a rule asks. `cmdline_cut` is how many bytes were left out of its
    middle (agent/sources/cmdline.py). Text that was not UTF-8 holds surrogate escapes
    (agent/text.py). A weak reference lets the command-line budget see it freed.
    """

    pid: int
    ppid: int
    starttime: int
    comm: str
    exe: str = ""
    cmdline: tuple[str, ...] = ()
    cmdline_cut: int = 0
    uid: int = -1
    state: str = "R"
    kthread: bool = False
    exe_dev: int = 0
    exe_ino: int = 0
    container_id: str = ""
    netns: int = 0
    # the pod uid from the kubelet's cgroup name (resolves a pod before its status lists
    # the container); internal, not part of the finding format
    pod_uid: str = ""
    # derived, filled in __post_init__
    exe_name: str = field(init=False, default="")
    argv0: str = field(init=False, default="")
    # the identity (`id`), made on first use: most events are judged without it (it is
    # hashed from five integers, a fifth of what making a Process costs); -1 until then
    _id: int = field(init=False, default=-1, repr=False)

    def __post_init__(self) -> None:
        exe = self.exe
        exe = exe.removesuffix(" (deleted)")
        # basenames as os.path.basename makes them, without its two Python calls
        self.exe_name = exe.rpartition("/")[2] if exe else self.comm
        cmd = self.cmdline
        first = cmd[0] if cmd else ""
        if len(cmd) == 1 and " " in first:
            # a setproctitle'd title ("sshd: /usr/sbin/sshd -D [listener]"): its first word
            first = first.split(" ", 1)[0].rstrip(":")
        self.argv0 = first.rpartition("/")[2]

    @property
    def id(self) -> int:
        """xxhash64 of (pid, ppid, starttime, exe device, exe inode): `process_identity`."""
        ident = self._id
        if ident == -1:
            ident = self._id = process_identity(self.pid, self.ppid, self.starttime,
                                                self.exe_dev, self.exe_ino)
        return ident

    @property
    def id_hex(self) -> str:
        """The identity as 16 hex digits, as findings and recorded events show it."""
        return f"{self.id:016x}"

    @property
    def instance_key(self) -> InstanceKey:
        """(pid, starttime, exe device, exe inode): this process running this program. Unlike
        `id` it leaves out the ppid, which changes when the parent exits (reparenting) while
        the process and its program stay the same; an exec into another binary changes it."""
        return (self.pid, self.starttime, self.exe_dev, self.exe_ino)

    @property
    def args(self) -> tuple[str, ...]:
        """argv[1:]."""
        return self.cmdline[1:]

    @property
    def cmdline_str(self) -> str:
        """argv joined with spaces (made on each use: a copy held would double the memory
        a long command line takes)."""
        return " ".join(self.cmdline)

    @property
    def cmdline_truncated(self) -> bool:
        """Whether the middle of an over-long command line was left out."""
        return self.cmdline_cut > 0

    def to_json(self) -> dict[str, Any]:
        """The process as the finding and recorded-event formats carry it."""
        return {
            "pid": self.pid,
            "ppid": self.ppid,
            "starttime": self.starttime,
            "id": self.id_hex,
            "comm": self.comm,
            "exe": self.exe,
            "cmdline": list(self.cmdline),
            "cmdline_truncated": self.cmdline_truncated,
            "cmdline_cut_bytes": self.cmdline_cut,
            "uid": self.uid,
            "netns": self.netns,
        }


@dataclass(slots=True, eq=False)
class Connection:
    """A TCP connection as seen from the process that owns the socket."""

    src: str
    sport: int
    dst: str
    dport: int
    family: str = "ipv4"
    direction: str = "outbound"
    netns: int = 0
    # the connects (accepts) it stands for: the kernel counts repeats of a (process,
    # destination) and reports them once per window (bpf/tcp.bpf.c)
    count: int = 1
    src_ip: int = field(init=False, default=0)
    dst_ip: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.src_ip = _ip_int(self.src)
        self.dst_ip = _ip_int(self.dst)

    def to_json(self) -> dict[str, Any]:
        """The connection as findings and recorded events show it (no derived integers;
        `count` only when it stands for more than one call)."""
        out = {
            "src": self.src, "sport": self.sport, "dst": self.dst, "dport": self.dport,
            "family": self.family, "direction": self.direction, "netns": self.netns,
        }
        if self.count != 1:
            out["count"] = self.count
        return out


def _ip_int(addr: str) -> int:
    """An address as an integer for CIDR checks; IPv4 in the IPv4-mapped IPv6 space so one
    integer comparison serves both families. Unparseable addresses map to -1 (never in a CIDR).

    inet_pton first (C, ~0.2 us): `ipaddress` cost 4-5 us per address, a quarter of the CPU
    a TCP event took. What it refuses (scoped IPv6 like fe80::1%eth0) goes to `ipaddress`."""
    try:
        return 0xFFFF00000000 | int.from_bytes(inet_pton(AF_INET, addr), "big")
    except OSError:
        pass
    try:
        # an IPv4-mapped address is already 0xFFFF00000000 | the IPv4 address
        return int.from_bytes(inet_pton(AF_INET6, addr), "big")
    except OSError:
        pass
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return -1
    if ip.version == 4:
        return 0xFFFF00000000 | int(ip)
    mapped = ip.ipv4_mapped  # type: ignore[union-attr]
    return 0xFFFF00000000 | int(mapped) if mapped else int(ip)


@dataclass(slots=True, eq=False)
class Pod:
    """The Kubernetes pod a container belongs to (filled by the Kubernetes enrichment)."""

    namespace: str = ""
    name: str = ""
    uid: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The pod as findings and recorded events show it (labels copied, not shared)."""
        return {"namespace": self.namespace, "name": self.name, "uid": self.uid,
                "labels": dict(self.labels)}


@dataclass(slots=True, eq=False)
class Event:
    """Something a source saw, enriched with what the rules need to judge it.

    `ancestors` runs parent first; `workspace` is the workspace id or "" when the process
    is in no workspace.
    """

    kind: str
    time: float
    process: Process
    ancestors: tuple[Process, ...] = ()
    workspace: str = ""
    pod: Pod | None = None
    connection: Connection | None = None
    # CLOCK_MONOTONIC ns when the kernel saw it (eBPF events: for latency), when the scan
    # began reading (scan events: an exec record older than that was seen by the scan), or 0
    ktime_ns: int = 0
    # an in-kernel rule's verdict on this exec: (kernel rule slot, killed) or None
    kernel_verdict: tuple[int, bool] | None = None
    # what a file, ptrace, mount, ... event is about: one of agent.details' families
    detail: Any = None
    # its JSON form (`--record`, `replay`) is agent.codec.event_to_json
