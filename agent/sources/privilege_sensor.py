"""The `privilege` sensor: ptrace injection, setuid-to-root and memfd_create from the
kernel (bpf/privilege.bpf.c; records decoded in agent/sources/privrecord.py).

A kind that no loaded rule (and no recording) is on is not sent at all: the kernel checks
a bitmask of skipped record kinds (`priv_skip`) before it reserves a record, so an unused
kind costs no wake-up and no userspace work.
"""

from __future__ import annotations

from agent.model import EventKind
from agent.sources.bpf import BpfSensor, KindSwitch
from agent.sources.recordkind import records_of

# record kind of each event kind this sensor sends
RECORDS = records_of({EventKind.PTRACE, EventKind.SETUID, EventKind.MEMFD})


class PrivilegeSensor(BpfSensor):
    """ptrace attach/seize/pokes/register writes and process_vm_writev, set*id to 0 by a
    non-root process, memfd_create."""

    name = "privilege"
    kinds = frozenset(RECORDS)
    source = "privilege.bpf.c"
    kind_switch = KindSwitch(map="priv_skip", records=RECORDS)
