"""The kernel's event records (bpf/events.h) in Python: their kinds (from
agent/sources/recordkind.py), verdicts and config slots, and the decoders from bytes to
tuples (pure).

Every number here mirrors an enum or #define of bpf/events.h, which is the one source of
truth; tests/unit/test_bpf_contract.py parses the header and fails when they differ. Each
record kind has its own layout after the `u64 ts_ns; u32 kind;` every record starts with
(a TCP record carries no file name), and its decoder in `DECODERS`. The decoders use
`struct.unpack_from` on the raw bytes: half the cost of a ctypes cast per event, which
matters at tens of thousands of events per second on one core.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable
from enum import IntEnum
from typing import NamedTuple

from agent import text
from agent.details import Dns
from agent.sources import dnswire, kernrecord, privrecord
from agent.sources.execrecord import EXEC_FIELDS, exec_decoder
from agent.sources.filerecord import FILE_FIELDS, file_decoder
from agent.sources.recordkind import EVENT_KINDS as EVENT_KINDS  # re-exported
from agent.sources.recordkind import RecordKind as RecordKind


class Verdict(IntEnum):
    """`enum nw_verdict`: the `state` of a record an in-kernel rule matched."""

    WOULD_KILL = 1
    KILLED = 2


class KcfgSlot(IntEnum):
    """`enum nw_kcfg_slot`: the kcfg array's entries, each a bitmask of rule slots."""

    EXEC_ENFORCE = 0
    CONNECT_ENFORCE = 1
    CONNECT_NET = 2
    CONNECT_PORT = 3
    CONNECT_ALL = 4
    SKIP_KINDS = 5


KCFG_SLOTS = len(KcfgSlot)
COMM_LEN = 16        # NW_COMM_LEN: the kernel's comm, NUL included
FILENAME_LEN = 256   # NW_FILENAME_LEN: an exec's path, NUL included
ADDR_LEN = 16        # NW_ADDR_LEN: an IPv6 address (IPv4 in the first 4 bytes)
DNS_LEN = 512        # NW_DNS_LEN: bytes of a DNS query's datagram the kernel takes

# plain ints for the decoder and the observer's hot path
EXEC, FORK, EXIT, CONNECT, ACCEPT, CLOSE, CONNECT_VERDICT = (int(k) for k in (
    RecordKind.EXEC, RecordKind.FORK, RecordKind.EXIT, RecordKind.CONNECT, RecordKind.ACCEPT,
    RecordKind.CLOSE, RecordKind.CONNECT_VERDICT))
FILE, UDP, DNS = int(RecordKind.FILE), int(RecordKind.UDP), int(RecordKind.DNS)
VERDICT_WOULD_KILL, VERDICT_KILLED = int(Verdict.WOULD_KILL), int(Verdict.KILLED)
AF_INET, AF_INET6 = 2, 10
TCP_CLOSE = 7

Fields = tuple[tuple[str, str], ...]


# struct nw_proc_event (fork, exit): u64 ts_ns; u32 kind, pid, ppid, uid; char comm[16]
PROC_FIELDS: Fields = (
    ("ts_ns", "Q"), ("kind", "I"), ("pid", "I"), ("ppid", "I"), ("uid", "I"),
    ("comm", f"{COMM_LEN}s"),
)
PROC_FORMAT = struct.Struct("<" + "".join(code for _, code in PROC_FIELDS))

# struct nw_conn_event (connect, accept, close, connect verdict): u64 ts_ns; u32 kind, pid,
# uid, fd; u16 family, sport, dport, state; u8 saddr[16], daddr[16]; char comm[16];
# u32 count, pad
CONN_FIELDS: Fields = (
    ("ts_ns", "Q"), ("kind", "I"), ("pid", "I"), ("uid", "I"), ("fd", "I"),
    ("family", "H"), ("sport", "H"), ("dport", "H"), ("state", "H"),
    ("saddr", f"{ADDR_LEN}s"), ("daddr", f"{ADDR_LEN}s"), ("comm", f"{COMM_LEN}s"),
    ("count", "I"), ("pad", "I"),
)
CONN_FORMAT = struct.Struct("<" + "".join(code for _, code in CONN_FIELDS))

# struct nw_udp_event: u64 ts_ns; u32 kind, pid, uid, fd, suppressed; u16 family, dport;
# u8 daddr[16]; char comm[16]
UDP_FIELDS: Fields = (
    ("ts_ns", "Q"), ("kind", "I"), ("pid", "I"), ("uid", "I"), ("fd", "I"),
    ("suppressed", "I"), ("family", "H"), ("dport", "H"), ("daddr", f"{ADDR_LEN}s"),
    ("comm", f"{COMM_LEN}s"),
)
UDP_FORMAT = struct.Struct("<" + "".join(code for _, code in UDP_FIELDS))

# struct nw_dns_event: the udp record's fields, then u32 len, sent; u8 payload[512]
DNS_FIELDS: Fields = (*UDP_FIELDS, ("len", "I"), ("sent", "I"), ("payload", f"{DNS_LEN}s"))
DNS_HEAD = struct.Struct("<" + "".join(code for _, code in DNS_FIELDS[:-1]))

# each record struct of events.h by its C name (the contract test compares them)
LAYOUTS: dict[str, Fields] = {
    "nw_exec_event": EXEC_FIELDS, "nw_proc_event": PROC_FIELDS, "nw_conn_event": CONN_FIELDS,
    "nw_file_event": FILE_FIELDS,
    "nw_udp_event": UDP_FIELDS, "nw_dns_event": DNS_FIELDS,
    "nw_priv_event": privrecord.PRIV_FIELDS, "nw_mount_event": kernrecord.MOUNT_FIELDS,
    "nw_kern_event": kernrecord.KERN_FIELDS,
}


class RawEvent(NamedTuple):
    """One kernel record, decoded but not yet enriched."""

    ts_ns: int
    kind: int
    pid: int
    ppid: int
    uid: int
    fd: int
    family: int
    sport: int
    dport: int
    state: int
    saddr: str
    daddr: str
    comm: str
    filename: str
    # exec records (agent/sources/execrecord.py): argv as the exec got it, and the workspace
    # marker its environment set, taken in the kernel
    argv: tuple[str, ...] = ()
    marker: tuple[str, str] | None = None
    argv_cut: int = -1   # bytes of argv left out; -1: argv not taken in the kernel
    markers_scanned: tuple[str, ...] = ()   # names `marker` answers for; (): not scanned
    cgroup_id: int = 0   # the cgroup v2 id the exec ran in
    # records of issue 11's sensors: what the event is about (an agent.details family)
    detail: object = None
    # exec records whose task the kernel read (ExecFlag.TASK): (start time in clock ticks,
    # effective uid, network namespace inode), with the parent in `ppid`; None: not read
    task: tuple[int, int, int] | None = None
    # connect and accept records: the calls it stands for (repeats counted in the kernel)
    calls: int = 1


def raw_detail(ts_ns: int, kind: int, pid: int, uid: int, comm: str, detail: object,
               family: int = 0, sport: int = 0, dport: int = 0, saddr: str = "",
               daddr: str = "") -> RawEvent:
    """The RawEvent of a record of a kind that carries a detail (file, ptrace, mount, ...);
    `family`..`daddr` for one that also has a destination (udp, dns)."""
    return RawEvent(ts_ns, kind, pid, 0, uid, 0, family, sport, dport, 0, saddr, daddr, comm,
                    "", detail=detail)


def _cstr(b: bytes) -> str:
    end = b.find(b"\0")
    return text.decode(b if end < 0 else b[:end])


_V4_MAPPED = bytes(10) + b"\xff\xff"
_V4_COMPAT = bytes(12)


def _addr(family: int, raw: bytes) -> str:
    """The address as text, as `ipaddress` writes it. inet_ntop (C) does the common cases:
    `ipaddress` cost 4-5 us per address, a quarter of a TCP event's CPU."""
    if family == AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == AF_INET6:
        head = raw[:12]
        if head == _V4_MAPPED:
            # a v4 peer of a dual-stack socket: the same text /proc/net/tcp6 parsing gives
            return socket.inet_ntop(socket.AF_INET, raw[12:16])
        if head == _V4_COMPAT:
            # glibc writes ::a.b.c.d where ipaddress writes ::102:304: keep ipaddress's
            return str(ipaddress.IPv6Address(raw[:16]))
        return socket.inet_ntop(socket.AF_INET6, raw[:16])
    return ""


# a fork or exit record's RawEvent past its comm (the fields' defaults, and filename ""),
# and the RawEvent made by tuple.__new__ straight: two records per exec, and the
# NamedTuple's own __new__ (a Python function) cost as much as the rest of the decode
_PROC_TAIL = ("", *RawEvent._field_defaults.values())
_new_raw = tuple.__new__


def _raw_of(*fields: object) -> RawEvent:
    """A RawEvent of all its fields, in order (without the NamedTuple's __new__)."""
    return _new_raw(RawEvent, fields)  # type: ignore[type-var]


def _decode_proc(data: bytes | memoryview) -> RawEvent:
    ts, kind, pid, ppid, uid, comm = PROC_FORMAT.unpack_from(data)
    return _new_raw(RawEvent, (ts, kind, pid, ppid, uid, 0, 0, 0, 0, 0, "", "",  # type: ignore[type-var]
                               _comm_text(comm), *_PROC_TAIL))


# Texts already made, by the raw bytes: a node talks to a limited set of peers, and its
# processes have a limited set of names. Emptied when full (bounded); one per family, as
# the same 16 bytes are another address in each.
_TEXT_CACHE_MAX = 4096
_V4_TEXT: dict[bytes, str] = {}
_V6_TEXT: dict[bytes, str] = {}
_COMM_TEXT: dict[bytes, str] = {}


def _addr_text(family: int, raw: bytes) -> str:
    cache = _V4_TEXT if family == AF_INET else _V6_TEXT
    text = cache.get(raw)
    if text is None:
        text = _addr(family, raw)
        if len(cache) >= _TEXT_CACHE_MAX:
            cache.clear()
        cache[raw] = text
    return text


def _comm_text(raw: bytes) -> str:
    text = _COMM_TEXT.get(raw)
    if text is None:
        text = _cstr(raw)
        if len(_COMM_TEXT) >= _TEXT_CACHE_MAX:
            _COMM_TEXT.clear()
        _COMM_TEXT[raw] = text
    return text


def _decode_conn(data: bytes | memoryview) -> RawEvent:
    (ts, kind, pid, uid, fd, family, sport, dport, state, saddr, daddr,
     comm, count, _pad) = CONN_FORMAT.unpack_from(data)
    raw = RawEvent(ts, kind, pid, 0, uid, fd, family, sport, dport, state,
                   _addr_text(family, saddr), _addr_text(family, daddr), _comm_text(comm), "")
    # most records stand for one call: no second tuple made for them
    return raw if count <= 1 else raw._replace(calls=count)


def _decode_udp(data: bytes | memoryview) -> RawEvent:
    ts, kind, pid, uid, _fd, _suppressed, family, dport, daddr, comm = \
        UDP_FORMAT.unpack_from(data)
    return raw_detail(ts, kind, pid, uid, _comm_text(comm), None, family, 0, dport, "",
                      _addr_text(family, daddr))


def _decode_dns(data: bytes | memoryview) -> RawEvent:
    """A dns event with the question the kernel's bytes hold; a datagram to port 53 that
    is no query (or is cut) is a udp event to that destination."""
    (ts, _kind, pid, uid, _fd, _suppressed, family, dport, daddr, comm, n,
     _sent) = DNS_HEAD.unpack_from(data)
    start = DNS_HEAD.size
    q = dnswire.parse_query(bytes(data[start:start + min(n, DNS_LEN)]))
    dst = _addr_text(family, daddr)
    if q is None:
        return raw_detail(ts, UDP, pid, uid, _comm_text(comm), None, family, 0, dport, "", dst)
    return raw_detail(ts, DNS, pid, uid, _comm_text(comm), Dns(q.name, q.qtype), family, 0,
                      dport, "", dst)


Decoder = Callable[[bytes | memoryview], RawEvent]


def _with_detail(decode_fields: Callable[[bytes | memoryview], privrecord.Decoded]) -> Decoder:
    """The decoder of a record kind that carries a detail (privrecord, kernrecord)."""

    def decode_detail(data: bytes | memoryview) -> RawEvent:
        ts, kind, pid, uid, comm, detail = decode_fields(data)
        return raw_detail(ts, kind, pid, uid, comm, detail)

    return decode_detail


_PRIV = _with_detail(privrecord.decode_priv)
_KERN = _with_detail(kernrecord.decode_kern)

# record kind -> its decoder (each kind's layout is its owner's: see bpf/events.h)
DECODERS: dict[int, Decoder] = {
    EXEC: exec_decoder(_raw_of),
    FORK: _decode_proc, EXIT: _decode_proc,
    CONNECT: _decode_conn, ACCEPT: _decode_conn, CLOSE: _decode_conn,
    CONNECT_VERDICT: _decode_conn,
    FILE: file_decoder(raw_detail),
    UDP: _decode_udp, DNS: _decode_dns,
    RecordKind.PTRACE: _PRIV, RecordKind.SETUID: _PRIV, RecordKind.MEMFD: _PRIV,
    RecordKind.MOUNT: _with_detail(kernrecord.decode_mount),
    RecordKind.SETNS: _KERN, RecordKind.UNSHARE: _KERN, RecordKind.MODULE: _KERN,
    RecordKind.BPF: _KERN,
}
_KIND = struct.Struct("<8xI")


def decode(data: bytes | memoryview) -> RawEvent:
    """A RawEvent from the bytes the kernel sent, by the layout of its kind. Raises
    struct.error on short input, ValueError on a kind no decoder knows."""
    (kind,) = _KIND.unpack_from(data)
    decoder = DECODERS.get(kind)
    if decoder is None:
        raise ValueError(f"kernel record of unknown kind {kind}")
    return decoder(data)


def process_record(kind: RecordKind, ts_ns: int, pid: int, ppid: int = 0) -> RawEvent:
    """A record of a process's life (exec, fork, exit) from a source that knows no more
    than the pids, such as the netlink proc connector: the observer reads the rest."""
    return RawEvent(ts_ns, int(kind), pid, ppid, 0, 0, 0, 0, 0, 0, "", "", "", "")
