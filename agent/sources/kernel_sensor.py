"""The `kernel` sensor: mount, setns, unshare, kernel module loads and BPF program loads
from the kernel (bpf/kernel.bpf.c; records decoded in agent/sources/kernrecord.py).

A kind no loaded rule (and no recording) is on is not sent (`kern_skip`, as the privilege
sensor's). A kernel without module support has no init_module/finit_module tracepoints:
the sensor runs without them (`OPTIONAL_TRACEPOINTS`), and the agent says so once. The
agent's own BPF loads are never sent: its pid is compiled into the program.
"""

from __future__ import annotations

from agent.model import EventKind
from agent.sources import kevents
from agent.sources.bpf import BpfSensor, KindSwitch

RECORDS: dict[EventKind, int] = {
    EventKind.MOUNT: kevents.RecordKind.MOUNT, EventKind.SETNS: kevents.RecordKind.SETNS,
    EventKind.UNSHARE: kevents.RecordKind.UNSHARE, EventKind.MODULE: kevents.RecordKind.MODULE,
    EventKind.BPF: kevents.RecordKind.BPF,
}


class KernelSensor(BpfSensor):
    """mount, setns, unshare (CLONE_NEW* only), init_module/finit_module, and
    bpf(BPF_PROG_LOAD) by any process but the agent."""

    name = "kernel"
    kinds = frozenset(RECORDS)
    source = "kernel.bpf.c"
    kind_switch = KindSwitch(map="kern_skip", records=RECORDS)
    optional_tracepoints = ("syscalls:sys_enter_init_module",
                            "syscalls:sys_enter_finit_module")
