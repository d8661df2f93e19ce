"""The event thread's scheduling: SCHED_FIFO with `realtime: true`.

Measured (BENCHMARKS.md §4, §5): with a busy loop of equal priority on each CPU, the consumer
waits for the CPU when a record arrives or is preempted in the middle of judging it, and a
kill's p99 grows from ~2.5 to ~7 ms. A modest real-time priority puts the event thread ahead
of every normal task. SCHED_RESET_ON_FORK keeps it to this thread: threads it starts later
(a reloaded sink's worker) and processes start as SCHED_OTHER.

`sched_setscheduler(0, ...)` sets the calling thread's policy, so `Realtime.use` must run on
the event thread (start and reloads both do). Without CAP_SYS_NICE (or an RLIMIT_RTPRIO)
the kernel refuses: the agent says so once and runs on at normal priority.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

log = logging.getLogger("nodewarden")

# Of 1-99: below the kernel's threaded interrupt handlers (50), so an agent stuck in a loop
# cannot starve interrupt handling; above every SCHED_OTHER task, which is all it needs.
PRIORITY = 10

Setter = Callable[[int, int, os.sched_param], None]


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
