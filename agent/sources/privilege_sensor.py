"""The `privilege` sensor: ptrace injection, setuid-to-root and memfd_create from the
kernel (bpf/privilege.bpf.c; records decoded in agent/sources/privrecord.py).

A kind that no loaded rule (and no recording) is on is not sent at all: the kernel checks
a bitmask of skipped record kinds (`priv_skip`) before it reserves a record, so an unused
kind costs no wake-up and no userspace work.
"""

from __future__ import annotations

import ctypes
from collections.abc import Collection, Mapping

from agent.model import EventKind
from agent.sources import kevents
from agent.sources.bpf import BpfSensor

# record kind of each event kind this sensor sends
RECORDS: dict[EventKind, int] = {
    EventKind.PTRACE: kevents.RecordKind.PTRACE, EventKind.SETUID: kevents.RecordKind.SETUID,
    EventKind.MEMFD: kevents.RecordKind.MEMFD,
}


def skip_mask(records: Mapping[EventKind, int], wanted: Collection[EventKind]) -> int:
    """The bitmask (bit 1 << record kind) of the records no wanted kind needs (pure)."""
    mask = 0
    for kind, record in records.items():
        if kind not in wanted:
            mask |= 1 << record
    return mask


class KindFilter(BpfSensor):
    """A BPF sensor whose kernel side skips the record kinds set in a one-entry array
    `skip_map` (bit 1 << record kind); every kind is sent until `send_kinds` is called."""

    records: dict[EventKind, int]
    skip_map: str

    def send_kinds(self, wanted: Collection[EventKind]) -> frozenset[EventKind]:
        """Send only the records of the `wanted` event kinds (those the loaded rules are
        on, or all with a recording). Returns this sensor's kinds left out."""
        mask = skip_mask(self.records, wanted)
        self.program[self.skip_map][ctypes.c_int(0)] = ctypes.c_ulonglong(mask)
        return frozenset(k for k in self.records if k not in wanted)


class PrivilegeSensor(KindFilter):
    """ptrace attach/seize/pokes/register writes and process_vm_writev, set*id to 0 by a
    non-root process, memfd_create."""

    name = "privilege"
    kinds = frozenset(RECORDS)
    source = "privilege.bpf.c"
    records = RECORDS
    skip_map = "priv_skip"
