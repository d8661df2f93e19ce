"""The `tcp` sensor: TCP connect, accept and close from the kernel (bpf/tcp.bpf.c).

Records carry the 4-tuple; the observer attributes them to a process and its network
namespace. Nothing to attach beyond the tracepoints BCC attaches with the compile.
"""

from __future__ import annotations

from agent.model import EventKind
from agent.sources.bpf import BpfSensor


class TcpSensor(BpfSensor):
    """TCP v4/v6 connect (refused ones too), accept with its 4-tuple, and close."""

    name = "tcp"
    kinds = frozenset({EventKind.CONNECT, EventKind.ACCEPT, EventKind.CLOSE})
    source = "tcp.bpf.c"
