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
from collections.abc import Callable

from agent.sources import kevents
from agent.sources.kevents import RawEvent

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
NLMSG_DONE = 3
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_EXIT = 0x80000000

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


def _raw(kind: int, ts: int, pid: int, ppid: int = 0) -> RawEvent:
    return RawEvent(ts, kind, pid, ppid, 0, 0, 0, 0, 0, 0, "", "", "", "")


def _event(what: int, ts: int, buf: bytes, at: int) -> RawEvent | None:
    try:
        if what == PROC_EVENT_EXEC:
            pid, tgid = _PIDS.unpack_from(buf, at)
            return _raw(kevents.EXEC, ts, tgid) if pid == tgid else None
        if what == PROC_EVENT_FORK:
            _ppid, ptgid, cpid, ctgid = _FORK.unpack_from(buf, at)
            return _raw(kevents.FORK, ts, ctgid, ptgid) if cpid == ctgid else None
        if what == PROC_EVENT_EXIT:
            pid, tgid = _PIDS.unpack_from(buf, at)
            return _raw(kevents.EXIT, ts, tgid) if pid == tgid else None
    except struct.error:
        return None
    return None


class ProcConnector:
    """A subscribed proc connector socket with the BpfSensor interface (poll, lost, close)."""

    source = "proc_connector"   # the label of its losses in events_lost_total

    perf = False

    def __init__(self, on_event: Callable[[RawEvent], None]) -> None:
        self._on_event = on_event
        self._lost = 0
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            self._sock.bind((os.getpid(), CN_IDX_PROC))
            op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
            cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0)
            hdr = _NLMSGHDR.pack(_NLMSGHDR.size + len(cn) + len(op), NLMSG_DONE, 0, 0, os.getpid())
            self._sock.send(hdr + cn + op)
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)

    def poll(self, timeout_ms: int) -> None:
        ready, _, _ = select.select([self._sock], [], [], timeout_ms / 1000)
        if not ready:
            return
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self._lost += 1  # the socket overflowed: some events are gone
                    continue
                raise
            for ev in parse(data):
                self._on_event(ev)

    def lost(self) -> int:
        return self._lost

    def close(self) -> None:
        self._sock.close()
