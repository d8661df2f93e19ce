"""The event thread's scheduling: SCHED_FIFO with `realtime: true`.

Measured (BENCHMARKS.md §4, §5): with a busy loop of equal priority on each CPU, the consumer
waits for the CPU when a record arrives or is preempted in the middle of judging it, and a
kill's p99 grows from ~2.5 to ~7 ms. A modest real-time priority puts the event thread ahead
of every normal task. SCHED_RESET_ON_FORK keeps it to this thread: threads it starts later
(a reloaded sink's worker) and processes start as SCHED_OTHER.

`sched_setscheduler(0, ...)` sets the calling thread's policy, so `Realtime.use` must run on
the event thread (start and reloads both do). Without CAP_SYS_NICE (or an RLIMIT_RTPRIO)
the kernel refuses: the agent says so once and runs on at normal priority.

A real-time thread still waits for the interpreter: `tuned()` (for `nodewarden run` only)
has a thread that holds the GIL (the metrics server, a sink's worker) hand it over within
SWITCH_INTERVAL instead of CPython's 5 ms, and `settle_heap()` (at ready) freezes what
start-up built (BPF objects, rules, modules: most of the heap) so that no garbage collection
walks it between a record and its kill (a full collection took 24 ms at ready, measured
with bench/stagetrace.py; young ones ~0.1 ms).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger("nodewarden")

# Of 1-99: below the kernel's threaded interrupt handlers (50), so an agent stuck in a loop
# cannot starve interrupt handling; above every SCHED_OTHER task, which is all it needs.
PRIORITY = 10

# seconds a thread holding the GIL runs on while the event thread waits for it (CPython's
# default is 5 ms, more than the whole kill budget); the agent's other threads are idle
# nearly always, so more frequent hand-overs cost nothing measurable
SWITCH_INTERVAL = 0.0005

Setter = Callable[[int, int, os.sched_param], None]


@contextmanager
def tuned(switch_interval: float = SWITCH_INTERVAL) -> Iterator[None]:
    """While the agent runs: the GIL switch interval at `switch_interval`. Afterwards the
    interpreter is as it was (the interval restored, a frozen heap unfrozen), so a caller
    in the same process (the tests, an embedding) is not left changed."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(switch_interval)
    try:
        yield
    finally:
        sys.setswitchinterval(old)
        gc.unfreeze()


def settle_heap() -> int:
    """Collect, then move every object alive now out of the collector's reach (gc.freeze):
    called once start-up is done, so later collections walk only what the agent made since.
    The objects frozen (their count) stay alive as they would have anyway."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def between_records(handle: Callable[[T], None]) -> Callable[[T], None]:
    """`handle` (one kernel record: judged, acted on, reported) with the garbage collector
    held off while it runs, so that no collection lands between a record and its kill. One
    that fell due meanwhile runs at the next allocation after it: in the loop, between
    records. Nothing changes when the collector is off already (a caller's choice)."""

    def held(record: T) -> None:
        if not gc.isenabled():
            handle(record)
            return
        gc.disable()
        try:
            handle(record)
        finally:
            gc.enable()

    return held


class Realtime:
    """Switches the calling thread between SCHED_FIFO and SCHED_OTHER, as the config asks.

    `setter` is `os.sched_setscheduler`, injected so tests can refuse it."""

    def __init__(self, setter: Setter = os.sched_setscheduler, priority: int = PRIORITY) -> None:
        self._set = setter
        self.priority = priority
        self.on = False
        self._warned = False

    def use(self, wanted: bool) -> bool:
        """Make the calling thread real-time (`wanted`) or not; whether it is now. A refusal
        is logged once per agent (a reload that asks again stays quiet)."""
        if wanted == self.on:
            return self.on
        try:
            if wanted:
                self._set(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK,
                          os.sched_param(self.priority))
            else:
                self._set(0, os.SCHED_OTHER, os.sched_param(0))
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warning("realtime: true, but the event thread stays at normal priority "
                            "(SCHED_FIFO refused: %s; it needs CAP_SYS_NICE, and on cgroup v1 "
                            "a realtime budget, cpu.rt_runtime_us, in the agent's cgroup): "
                            "under CPU load findings and kills may wait several milliseconds",
                            e.strerror or e)
            return self.on
        self.on = wanted
        log.info("event thread %s", f"in SCHED_FIFO, priority {self.priority}" if wanted
                 else "back at normal priority (SCHED_OTHER)")
        return self.on
