"""The `udp` sensor: UDP destinations and DNS query names from the kernel (bpf/udp.bpf.c).

The kernel reports a (process, destination) once per 10 s and a (process, query name)
once per 2 s, so a UDP flood costs no wake-up per packet; and nothing at all while no
loaded rule (or a recording) is on `udp` or `dns`: `send_kinds` tells the kernel which of
the two kinds are used, at start and after every reload. A DNS record carries the datagram's first
bytes; its name and type are parsed here (agent/sources/dnswire.py), not in the kernel.
"""

from __future__ import annotations

import ctypes
from collections.abc import Collection

from agent.model import EventKind
from agent.sources import kevents
from agent.sources.bpf import BpfProgram, BpfSensor

# the record kind each event kind of this sensor is sent as
RECORDS: dict[EventKind, int] = {EventKind.UDP: kevents.UDP, EventKind.DNS: kevents.DNS}


def wanted_mask(kinds: Collection[EventKind]) -> int:
    """The `udp_want` bitmask (bit 1 << record kind) for the event kinds the rules use
    (pure): 0 turns the sensor's programs into one map lookup per call."""
    mask = 0
    for kind, record in RECORDS.items():
        if kind in kinds:
            mask |= 1 << record
    return mask


class UdpSensor(BpfSensor):
    """UDP sends (connect, sendto, sendmsg, sendmmsg) by destination, and DNS queries."""

    name = "udp"
    kinds = frozenset({EventKind.UDP, EventKind.DNS})
    source = "udp.bpf.c"

    def __init__(self, program: BpfProgram) -> None:
        super().__init__(program)
        self.mask = 0

    def send_kinds(self, wanted: Collection[EventKind]) -> frozenset[EventKind]:
        """Send only the kinds (udp, dns) wanted: those some loaded rule is on, or both with
        a recording (SensorSet.send_only); none: the programs stop at their first lookup.
        Turned back on, the kernel forgets the sockets it knew (it stopped watching them
        close, so a number may name another socket now). Returns its kinds left out."""
        mask = wanted_mask(wanted)
        if mask and not self.mask:
            self.program["socks"].clear()
            self.program["sock_owners"].clear()
        self.program["udp_want"][ctypes.c_int(0)] = ctypes.c_ulonglong(mask)
        self.mask = mask
        return frozenset(k for k in self.kinds if k not in wanted)
