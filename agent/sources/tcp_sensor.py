"""The `tcp` sensor: TCP connect, accept and close from the kernel (bpf/tcp.bpf.c).

Records carry the 4-tuple; the observer attributes them to a process and its network
namespace. Nothing to attach beyond the tracepoints BCC attaches with the compile. A kind
that no loaded rule (and no recording) uses is not sent at all (`skipped_kinds`).
"""

from __future__ import annotations

from collections.abc import Collection

from agent.model import EventKind
from agent.sources import kevents
from agent.sources.bpf import BpfSensor

# the record kinds the kernel can leave out, by the event kind each becomes
SKIPPABLE: dict[EventKind, int] = {
    EventKind.CONNECT: kevents.CONNECT, EventKind.ACCEPT: kevents.ACCEPT,
    EventKind.CLOSE: kevents.CLOSE,
}


def skipped_kinds(wanted: Collection[EventKind]) -> int:
    """The kcfg SKIP_KINDS bitmask (bit 1 << record kind) for the event kinds `wanted`
    (pure). An inbound close is attributed to its process through the accept before it, so
    wanting closes keeps accepts; connect verdicts (in-kernel rules) are always sent."""
    need = set(wanted)
    if EventKind.CLOSE in need:
        need.add(EventKind.ACCEPT)
    mask = 0
    for kind, record in SKIPPABLE.items():
        if kind not in need:
            mask |= 1 << record
    return mask


class TcpSensor(BpfSensor):
    """TCP v4/v6 connect (refused ones too), accept with its 4-tuple, and close."""

    name = "tcp"
    kinds = frozenset({EventKind.CONNECT, EventKind.ACCEPT, EventKind.CLOSE})
    source = "tcp.bpf.c"
