"""File descriptors: the soft limit raised at start, and running out of them counted,
logged once per burst, and survived.

A tenant can hold connections to the agent, and a node can run short of files; either way
the agent must keep judging. EMFILE/ENFILE in a scan, an event, a reload or a kill is
counted in `nodewarden_fd_exhausted_total{where}`, any other OS error there in
`nodewarden_errors_total{where}` (never the error text as a label), and the step is
retried on a later turn of the loop.
"""

from __future__ import annotations

import errno
import logging
import resource
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.errors import EXHAUSTED

if TYPE_CHECKING:
    from agent.metrics import Metrics

log = logging.getLogger("nodewarden")

# while a burst lasts, a reminder at most this often (the first error is always logged)
REMIND_EVERY = 60.0


def exhausted(e: BaseException) -> bool:
    """Whether `e` says the process (EMFILE) or the system (ENFILE) has no file left."""
    return isinstance(e, OSError) and e.errno in EXHAUSTED


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (what an unprivileged process may);
    returns the soft limit in effect. The status server caps its connections, so this is
    headroom for scans, pidfds and sensors, not the defence itself."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open", encoding="ascii") as f:
                want = int(f.read())
        except (OSError, ValueError):
            want = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (OSError, ValueError) as e:
            log.debug("could not raise RLIMIT_NOFILE from %d to %d: %s", soft, want, e)
    log.debug("RLIMIT_NOFILE: soft %d, hard %d", soft, hard)
    return soft


class Bursts:
    """Counts the OS errors of each place (`where`: scan, events, reload, http, kill) and
    logs the first of a burst, a reminder while it lasts, and its end, instead of one
    line per failure: a tenant holding the agent's descriptors cannot flood its log."""

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.clock = clock
        # where -> [errors in this burst, when it was last logged]
        self._open: dict[str, list[float]] = {}

    def failed(self, where: str, e: OSError) -> None:
        """Count one failure at `where`; log it if it starts a burst (or a reminder is due)."""
        if exhausted(e):
            self.metrics.fd_exhausted.labels(where=where).inc()
        else:
            self.metrics.errors.labels(where=where).inc()
        now = self.clock()
        burst = self._open.get(where)
        if burst is None:
            self._open[where] = [1, now]
        else:
            burst[0] += 1
            if now - burst[1] < REMIND_EVERY:
                return
            burst[1] = now
        name = errno.errorcode.get(e.errno or 0, "?")
        if exhausted(e):
            log.warning("%s: out of file descriptors (%s); counted in "
                        "nodewarden_fd_exhausted_total, retrying", where, name)
        else:
            log.warning("%s failed: %s (%s); counted in nodewarden_errors_total, retrying",
                        where, e.strerror, name)

    def ok(self, where: str) -> None:
        """`where` worked again: end its burst, if one was open."""
        burst = self._open.pop(where, None)
        if burst is not None:
            log.info("%s works again after %d failed attempts", where, int(burst[0]))
