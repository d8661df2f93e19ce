"""The netlink proc connector: exec, fork and exit from the kernel without eBPF.

The fallback sensor when BCC cannot run (headers or bcc missing) but we are root: every
exec is reported as it happens, so a short-lived process is still judged (its image read
from procfs), where periodic scans alone would miss it. Connections need eBPF.
Message layouts are UAPI (<linux/netlink.h>, <linux/connector.h>, <linux/cn_proc.h>).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from typing import ClassVar

from agent.model import EventKind
from agent.sources.kevents import RawEvent, RecordKind, process_record
from agent.sources.sensor import OnRecord, SensorUnavailable

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
NLMSG_DONE = 3
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_EXIT = 0x80000000

MAX_DATAGRAMS = 4096   # per poll, so the agent's loop turns under any load

_NLMSGHDR = struct.Struct("=IHHII")
_CN_MSG = struct.Struct("=IIIIHH")
_PROC_EVENT = struct.Struct("=IIQ")   # what, cpu, timestamp_ns (CLOCK_MONOTONIC)
_FORK = struct.Struct("=IIII")        # parent pid, parent tgid, child pid, child tgid
_PIDS = struct.Struct("=II")          # pid, tgid (exec, exit)


def parse(datagram: bytes) -> list[RawEvent]:
    """Process events of one netlink datagram (pure); threads are filtered out."""
    out = []
    off = 0
    while off + _NLMSGHDR.size <= len(datagram):
        length, _type, _flags, _seq, _pid = _NLMSGHDR.unpack_from(datagram, off)
        if length < _NLMSGHDR.size:
            break
        body = off + _NLMSGHDR.size + _CN_MSG.size
        if body + _PROC_EVENT.size <= len(datagram):
            what, _cpu, ts = _PROC_EVENT.unpack_from(datagram, body)
            data = body + _PROC_EVENT.size
            ev = _event(what, ts, datagram, data)
            if ev is not None:
                out.append(ev)
        off += (length + 3) & ~3
    return out


def _event(what: int, ts: int, buf: bytes, at: int) -> RawEvent | None:
    try:
        if what == PROC_EVENT_EXEC:
            pid, tgid = _PIDS.unpack_from(buf, at)
            return process_record(RecordKind.EXEC, ts, tgid) if pid == tgid else None
        if what == PROC_EVENT_FORK:
            _ppid, ptgid, cpid, ctgid = _FORK.unpack_from(buf, at)
            return process_record(RecordKind.FORK, ts, ctgid, ptgid) if cpid == ctgid else None
        if what == PROC_EVENT_EXIT:
            pid, tgid = _PIDS.unpack_from(buf, at)
            return process_record(RecordKind.EXIT, ts, tgid) if pid == tgid else None
    except struct.error:
        return None
    return None


class ProcConnector:
    """The `proc_connector` sensor: a subscribed proc connector socket. It stands in for
    the `exec` sensor when eBPF cannot run (it reports no TCP)."""

    name: ClassVar[str] = "proc_connector"
    title: ClassVar[str] = "netlink proc connector (exec, fork, exit)"
    kinds: ClassVar[frozenset[EventKind]] = frozenset(
        {EventKind.EXEC, EventKind.FORK, EventKind.EXIT})
    fallback_for: ClassVar[str | None] = "exec"

    def __init__(self, on_record: OnRecord) -> None:
        self._on_record = on_record
        self._lost = 0
        self._sock: socket.socket | None = None

    @property
    def up(self) -> bool:
        """Whether the socket is subscribed."""
        return self._sock is not None

    def start(self) -> None:
        """Subscribe to the kernel's process events (root, or CAP_NET_ADMIN)."""
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError as e:
            raise SensorUnavailable(str(e.strerror), "a kernel with CONFIG_PROC_EVENTS") from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            sock.bind((os.getpid(), CN_IDX_PROC))
            op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
            cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0)
            hdr = _NLMSGHDR.pack(_NLMSGHDR.size + len(cn) + len(op), NLMSG_DONE, 0, 0,
                                 os.getpid())
            sock.send(hdr + cn + op)
        except OSError as e:
            sock.close()
            raise SensorUnavailable(str(e.strerror), "run as root (CAP_NET_ADMIN)") from None
        sock.setblocking(False)
        self._sock = sock

    def poll(self, timeout_ms: int) -> None:
        """Deliver the datagrams waiting, after up to `timeout_ms` for the first."""
        sock = self._sock
        if sock is None:
            return
        ready, _, _ = select.select([sock], [], [], timeout_ms / 1000)
        if not ready:
            return
        for _ in range(MAX_DATAGRAMS):
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self._lost += 1  # the socket overflowed: some events are gone
                    continue
                raise
            for ev in parse(data):
                self._on_record(ev)

    def fileno(self) -> int | None:
        """The netlink socket."""
        return self._sock.fileno() if self._sock is not None else None

    def lost(self) -> int:
        """Overflows of the socket's buffer (each lost one or more events)."""
        return self._lost

    def close(self) -> None:
        """Unsubscribe."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
