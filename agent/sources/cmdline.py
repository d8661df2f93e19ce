"""Command lines, bounded: the head and the tail of /proc/PID/cmdline, and one byte budget.

A tenant controls argv: up to 128 KiB per argument and several MiB in all (a quarter of its
stack limit, at most 6 MiB), and one emoji makes Python hold every character of a string in
four bytes. So the agent keeps at most HEAD + TAIL bytes of a command line: the first HEAD,
where the program and its options are, and the last TAIL, which is where whatever follows
an argv padding ends up (`miner <300 kB of junk> -o stratum+tcp://...`). 16 KiB each keeps
whole every command line seen in practice (long Java class paths stay under 16 KiB) and
bounds a process at 32 KiB of bytes, 128 KiB of memory at worst.

The middle is never read. procfs serves /proc/PID/cmdline at any offset, so its length is
found by probing single bytes with pread (a few dozen reads) and the tail read from there:
the bytes read per process are bounded by HEAD + TAIL whatever the tenant passes.

Every command line the agent holds counts against one budget (`CmdlineBudget`), released
when the Process that holds it is freed; past the budget, new command lines keep a small
head and tail, so the memory held per process stays near what the rest of a Process costs.
A cut command line is marked (`Process.cmdline_cut`, the rule field
`proc.cmdline_truncated`) and counted.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cachetools import LRUCache

if TYPE_CHECKING:
    from agent.model import Process

HEAD = 16 * 1024
TAIL = 16 * 1024
# what a command line keeps once the budget is spent
TIGHT_HEAD = 512
TIGHT_TAIL = 512
# memory of all the command lines held (sys.getsizeof of the argv tuple and its strings)
BUDGET = 64 * 1024 * 1024
# no command line is longer; probing stops here even if procfs misbehaves
_MAX_LENGTH = 1 << 32


@dataclass(frozen=True, slots=True)
class RawCmdline:
    """What was read of one /proc/PID/cmdline: its first bytes and its last bytes, and how
    many bytes between them were left out (0: `head` is the whole command line)."""

    head: bytes
    tail: bytes = b""
    cut: int = 0

    def joined(self) -> bytes:
        """The kept bytes as one NUL-separated argv; the arguments cut in two at either
        side of the gap stay two arguments (they are not one text)."""
        if not self.cut:
            return self.head
        return self.head.rstrip(b"\0") + b"\0" + self.tail.lstrip(b"\0")


def _pread(fd: int, size: int, offset: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _length(fd: int, known: int) -> int:
    """The length of the file, known to be at least `known` bytes: an exponential probe
    for an offset past the end, then a binary search (reading one byte per probe)."""
    lo, hi = known, 2 * known
    while hi < _MAX_LENGTH and os.pread(fd, 1, hi - 1):
        lo, hi = hi, 2 * hi
    # length >= lo and length < hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if os.pread(fd, 1, mid - 1):
            lo = mid
        else:
            hi = mid
    return lo


def read_cmdline(fd: int, head: int = HEAD, tail: int = TAIL) -> RawCmdline:
    """The first `head` and last `tail` bytes of an open /proc/PID/cmdline (or any file).
    OSError from the first read propagates; a process that exits after it keeps its head."""
    data = _pread(fd, head + tail + 1, 0)
    if len(data) <= head + tail:
        return RawCmdline(data)
    try:
        length = _length(fd, len(data))
        last = _pread(fd, tail, length - tail)
    except OSError:
        return RawCmdline(data[:head], b"", len(data) - head)
    return RawCmdline(data[:head], last, length - head - tail)


def held_size(argv: tuple[str, ...]) -> int:
    """The memory an argv takes: the tuple and each string (shared ones counted each time)."""
    return sys.getsizeof(argv) + sum(map(sys.getsizeof, argv)) if argv else 0


# what sys.getsizeof gives for an empty tuple, per item of a tuple, and for an empty str; an
# ASCII str takes one byte more per character (checked here, else `argv_size` counts each)
_TUPLE0 = sys.getsizeof(())
_SLOT = sys.getsizeof((None,)) - _TUPLE0
_STR0 = sys.getsizeof("")
_ASCII_FLAT = all(sys.getsizeof("x" * k) == _STR0 + k for k in (1, 2, 100, 5000))


def argv_size(data: bytes, argv: tuple[str, ...]) -> int:
    """`held_size(argv)` of an argv parsed from `data` (parse_cmdline): by arithmetic when
    the bytes are ASCII (a call of sys.getsizeof per argument costs more than the read),
    else argument by argument."""
    if not argv:
        return 0
    if _ASCII_FLAT and data.isascii():
        n = len(argv)
        # n strings whose characters are the bytes left after the padding, less n - 1 NULs
        return _TUPLE0 + n * (_SLOT + _STR0 - 1) + len(data.rstrip(b"\0")) + 1
    return held_size(argv)


class CmdlineBudget:
    """The memory of the command lines the agent holds, against `limit`.

    `hold` counts a Process's argv until the Process is freed (wherever it was kept: the
    process tree, an event, an ancestor list). The limit may be passed by the command line
    read last; after that, every command line read keeps TIGHT_HEAD + TIGHT_TAIL bytes.
    """

    def __init__(self, limit: int = BUDGET) -> None:
        self.limit = limit
        self.held = 0
        # processes whose command line kept only its head and tail, by why; each counted
        # once, not on every scan that reads it again
        self.cut = {"long": 0, "budget": 0}
        self._counted: LRUCache[int, bool] = LRUCache(maxsize=65536)
        # the size counted for each Process held, by a weak reference to it
        self._sizes: dict[weakref.ref[Process], int] = {}
        # re-entrant: a release can run inside `hold` when a collection frees a Process
        self._lock = threading.RLock()
        # the release callback, bound once (a bound method made per hold costs as much as
        # the weak reference it is given to)
        self._on_free = self._release

    @property
    def counted(self) -> LRUCache[int, bool]:
        """The processes already counted as cut (by Process.id), bounded: for the metrics."""
        return self._counted

    def allowance(self) -> tuple[int, int]:
        """(head, tail) bytes for the next command line read."""
        return (HEAD, TAIL) if self.held < self.limit else (TIGHT_HEAD, TIGHT_TAIL)

    def hold(self, p: Process, raw: RawCmdline, why: str = "") -> None:
        """Count `p`'s argv (read as `raw`) until `p` is freed; a cut one is counted as
        `why` ("long" or "budget"), or by its head's length when not told."""
        if raw.cut:
            with self._lock:
                if self._counted.get(p.id) is None:
                    self._counted[p.id] = True
                    # a cut head shorter than HEAD was cut by a tight allowance
                    self.cut[why or ("long" if len(raw.head) >= HEAD else "budget")] += 1
        size = held_size(p.cmdline)
        if not size:
            return
        # a weak reference whose callback gives the size back when `p` is freed: a tenth
        # of what a weakref.finalize costs (a scan holds one per process). Two references
        # to one Process are equal while it lives, so a second hold adds to the first.
        ref = weakref.ref(p, self._on_free)
        with self._lock:
            self.held += size
            self._sizes[ref] = self._sizes.get(ref, 0) + size

    def hold_read(self, p: Process, raw: RawCmdline, data: bytes) -> None:
        """`hold` for a Process just made from the command line read as `raw`, whose kept
        bytes `data` its argv was parsed from: one read whole (nearly all) takes the cheap
        path of `hold_new`."""
        if raw.cut:
            self.hold(p, raw)
        else:
            self.hold_new(p, argv_size(data, p.cmdline))

    def hold_new(self, p: Process, size: int) -> None:
        """`hold` for a Process just made from a command line read whole (a first scan's
        common case), whose argv takes `size` (`argv_size`): never held before and not cut,
        so nothing is looked up or counted as cut; the size is given back when `p` is freed."""
        if not size:
            return
        ref = weakref.ref(p, self._on_free)
        with self._lock:
            self.held += size
            self._sizes[ref] = size

    def _release(self, ref: weakref.ref[Process]) -> None:
        with self._lock:
            self.held -= self._sizes.pop(ref, 0)
