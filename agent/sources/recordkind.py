"""The kernel's record kinds (bpf/events.h `enum nw_kind`) and the event kind each becomes:
the one table, apart from the decoders (agent/sources/kevents.py re-exports it) so that
the record modules kevents imports (privrecord, kernrecord) can name the kinds too.
tests/unit/test_bpf_contract.py holds it to the header."""

from __future__ import annotations

from collections.abc import Collection
from enum import IntEnum

from agent.model import EventKind


class RecordKind(IntEnum):
    """`enum nw_kind`: what a record reports (`NW_` + the member's name)."""

    EXEC = 1
    FORK = 2
    EXIT = 3
    CONNECT = 4
    ACCEPT = 5
    CLOSE = 6
    CONNECT_VERDICT = 7
    FILE = 8
    PTRACE = 9
    SETUID = 10
    MEMFD = 11
    MOUNT = 12
    SETNS = 13
    UNSHARE = 14
    MODULE = 15
    BPF = 16
    UDP = 17
    DNS = 18


# the event kind each record becomes (a connect verdict is a connect judged in the kernel)
EVENT_KINDS: dict[RecordKind, EventKind] = {
    RecordKind.EXEC: EventKind.EXEC, RecordKind.FORK: EventKind.FORK,
    RecordKind.EXIT: EventKind.EXIT, RecordKind.CONNECT: EventKind.CONNECT,
    RecordKind.ACCEPT: EventKind.ACCEPT, RecordKind.CLOSE: EventKind.CLOSE,
    RecordKind.CONNECT_VERDICT: EventKind.CONNECT, RecordKind.FILE: EventKind.FILE,
    RecordKind.UDP: EventKind.UDP, RecordKind.DNS: EventKind.DNS,
    RecordKind.PTRACE: EventKind.PTRACE, RecordKind.SETUID: EventKind.SETUID,
    RecordKind.MEMFD: EventKind.MEMFD, RecordKind.MOUNT: EventKind.MOUNT,
    RecordKind.SETNS: EventKind.SETNS, RecordKind.UNSHARE: EventKind.UNSHARE,
    RecordKind.MODULE: EventKind.MODULE, RecordKind.BPF: EventKind.BPF,
}


def records_of(kinds: Collection[EventKind]) -> dict[EventKind, RecordKind]:
    """The record kind each of these event kinds is sent as (a connect: the plain connect
    record, not the in-kernel rule's verdict), by EVENT_KINDS (pure)."""
    out: dict[EventKind, RecordKind] = {}
    for record, kind in EVENT_KINDS.items():
        if kind in kinds and record is not RecordKind.CONNECT_VERDICT:
            out.setdefault(kind, record)
    return out
