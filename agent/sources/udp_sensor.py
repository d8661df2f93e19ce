"""The `udp` sensor: UDP destinations and DNS query names from the kernel (bpf/udp.bpf.c).

The kernel reports a (process, destination) once per 10 s and a (process, query name)
once per 2 s, so a UDP flood costs no wake-up per packet; and nothing at all while no
loaded rule (or a recording) is on `udp` or `dns`: `send_kinds` tells the kernel which of
the two kinds are used (`udp_want`), at start and after every reload. A DNS record carries
the datagram's first bytes; its name and type are parsed here (agent/sources/dnswire.py),
not in the kernel.
"""

from __future__ import annotations

from collections.abc import Collection

from agent.model import EventKind
from agent.sources.bpf import BpfSensor, KindSwitch
from agent.sources.recordkind import records_of

# the record kind each event kind of this sensor is sent as
RECORDS = records_of({EventKind.UDP, EventKind.DNS})

# `udp_want` holds the kinds to send: 0 (none) turns the sensor's programs into one map
# lookup per call. Turned back on, the kernel forgets the sockets it knew (it stopped
# watching them close, so a number may name another socket now).
SWITCH = KindSwitch(map="udp_want", records=RECORDS, sends=True,
                    resume_clears=("socks", "sock_owners"))


def wanted_mask(kinds: Collection[EventKind]) -> int:
    """The `udp_want` bitmask (bit 1 << record kind) for the event kinds the rules use
    (pure)."""
    return SWITCH.mask(kinds)[0]


class UdpSensor(BpfSensor):
    """UDP sends (connect, sendto, sendmsg, sendmmsg) by destination, and DNS queries."""

    name = "udp"
    kinds = frozenset({EventKind.UDP, EventKind.DNS})
    source = "udp.bpf.c"
    kind_switch = SWITCH
