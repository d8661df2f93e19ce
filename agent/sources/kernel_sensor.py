"""The `kernel` sensor: mount, setns, unshare, kernel module loads and BPF program loads
from the kernel (bpf/kernel.bpf.c; records decoded in agent/sources/kernrecord.py).

A kind no loaded rule (and no recording) is on is not sent (`kern_skip`, as the privilege
sensor's). A kernel without module support has no init_module/finit_module tracepoints:
the sensor runs without them (`OPTIONAL_TRACEPOINTS`), and the agent says so once. The
agent's own BPF loads are never sent: its pid is compiled into the program.
"""

from __future__ import annotations

from agent.model import EventKind
from agent.sources.bpf import BpfSensor, KindSwitch
from agent.sources.recordkind import records_of

RECORDS = records_of({EventKind.MOUNT, EventKind.SETNS, EventKind.UNSHARE, EventKind.MODULE,
                      EventKind.BPF})


class KernelSensor(BpfSensor):
    """mount, setns, unshare (CLONE_NEW* only), init_module/finit_module, and
    bpf(BPF_PROG_LOAD) by any process but the agent."""

    name = "kernel"
    kinds = frozenset(RECORDS)
    source = "kernel.bpf.c"
    kind_switch = KindSwitch(map="kern_skip", records=RECORDS)
    optional_tracepoints = ("syscalls:sys_enter_init_module",
                            "syscalls:sys_enter_finit_module")
