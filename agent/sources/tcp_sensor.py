"""The `tcp` sensor: TCP connect, accept and close from the kernel (bpf/tcp.bpf.c).

Records carry the 4-tuple; the observer attributes them to a process and its network
namespace. Nothing to attach beyond the tracepoints BCC attaches with the compile. A kind
that no loaded rule (and no recording) uses is not sent at all: kcfg[NW_KCFG_SKIP_KINDS]
(`kind_switch`).

Repeats are counted in the kernel: the first connect (accept) of a (process, destination)
is sent at once, the repeats within the next second are counted, and the next record of
that key carries them (`Connection.count`). A burst that stops leaves its count in the
kernel map: `flush`, run by the program's poll once a window, asks the kernel to send it.
"""

from __future__ import annotations

import ctypes
import time
from typing import Any

from agent.model import EventKind
from agent.sources import kevents
from agent.sources.bpf import BpfSensor, KindSwitch
from agent.sources.recordkind import records_of

# the record kinds the kernel can leave out, by the event kind each becomes
SKIPPABLE = records_of({EventKind.CONNECT, EventKind.ACCEPT, EventKind.CLOSE})

# bpf/tcp.bpf.c: NW_TCP_WINDOW_NS, NW_FLUSH_FD, the map of counted repeats
WINDOW_NS = 1_000_000_000
FLUSH_FD = -7
SEEN_MAP = "tcp_seen"
EXEC_TRACEPOINT, EXEC_HOOK = "sched:sched_process_exec", "tcp_on_exec"

_libc = ctypes.CDLL(None, use_errno=True)
_accept4 = _libc.accept4
_accept4.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
_accept4.restype = ctypes.c_int


def due(entries: Any, now_ns: int) -> list[Any]:
    """The keys of `tcp_seen` entries holding repeats whose window is over (pure but for
    reading the entries: each has `.count` and `.since`, CLOCK_MONOTONIC ns)."""
    return [k for k, v in entries if v.count and now_ns - v.since >= WINDOW_NS]


class TcpSensor(BpfSensor):
    """TCP v4/v6 connect (refused ones too), accept with its 4-tuple, and close."""

    name = "tcp"
    kinds = frozenset({EventKind.CONNECT, EventKind.ACCEPT, EventKind.CLOSE})
    source = "tcp.bpf.c"
    # An inbound close is attributed to its process through the accept before it, so
    # wanting closes keeps accepts; connect verdicts (in-kernel rules) are always sent.
    kind_switch = KindSwitch(map="kcfg", slot=kevents.KcfgSlot.SKIP_KINDS, records=SKIPPABLE,
                             needs={EventKind.CLOSE: EventKind.ACCEPT}, label="TCP")

    def start(self) -> None:
        """Attached with the compile but for the exec hook (which starts a new key for a
        new program: its first connect is never a repeat); a flush once per window."""
        self.program.attach_tracepoint(EXEC_TRACEPOINT, EXEC_HOOK)
        super().start()
        self.program.every(WINDOW_NS / 1e9, self.flush)

    def flush(self) -> int:
        """Have the kernel send the repeats it counted for every (process, destination)
        whose window is over and that no record carried (a burst that stopped). Each is a
        failing accept4() the kernel's probe answers with a flush record, so only the
        kernel ever takes a count. Returns how many keys were flushed."""
        seen = self.program[SEEN_MAP]
        try:
            entries = list(seen.items_lookup_batch())
        except Exception:  # noqa: BLE001 - BCC raises bare Exception; no batch ops
            entries = list(seen.items())
        keys = due(entries, time.monotonic_ns())
        for key in keys:
            _accept4(FLUSH_FD, ctypes.addressof(key), None, 0)
        return len(keys)
