"""The `tcp` sensor: TCP connect, accept and close from the kernel (bpf/tcp.bpf.c).

Records carry the 4-tuple; the observer attributes them to a process and its network
namespace. Nothing to attach beyond the tracepoints BCC attaches with the compile. A kind
that no loaded rule (and no recording) uses is not sent at all: kcfg[NW_KCFG_SKIP_KINDS]
(`kind_switch`).
"""

from __future__ import annotations

from agent.model import EventKind
from agent.sources import kevents
from agent.sources.bpf import BpfSensor, KindSwitch
from agent.sources.recordkind import records_of

# the record kinds the kernel can leave out, by the event kind each becomes
SKIPPABLE = records_of({EventKind.CONNECT, EventKind.ACCEPT, EventKind.CLOSE})


class TcpSensor(BpfSensor):
    """TCP v4/v6 connect (refused ones too), accept with its 4-tuple, and close."""

    name = "tcp"
    kinds = frozenset({EventKind.CONNECT, EventKind.ACCEPT, EventKind.CLOSE})
    source = "tcp.bpf.c"
    # An inbound close is attributed to its process through the accept before it, so
    # wanting closes keeps accepts; connect verdicts (in-kernel rules) are always sent.
    kind_switch = KindSwitch(map="kcfg", slot=kevents.KcfgSlot.SKIP_KINDS, records=SKIPPABLE,
                             needs={EventKind.CLOSE: EventKind.ACCEPT}, label="TCP")
