"""The Sink contract, and the one queued delivery behind every sink that talks to a service.

A sink takes findings from the agent's loop and must never slow it: `submit()` returns at
once, whatever the service does. Slack, Kubernetes Events, the generic webhook and the pod
deleter (an action, same needs) share `QueuedDelivery`, which gives each of them:

- a bounded queue: a full one drops the item and counts it (`reason="queue_full"`);
- a token bucket (`rate` per second, `burst` saved up) in front of every request;
- retries with exponential backoff (`backoff`, doubling, at most `max_backoff`), or as long
  as a Retry-After says, which pauses the whole sink (a rate limit is the service's, not
  one message's); `max_attempts` and the item is given up on (`reason="failed"`);
- `close(deadline)`: no new items; what is queued is delivered until the deadline, request
  timeouts shrink to what is left of it; then what is left, the request in flight included,
  is counted (`reason="shutdown"`) and close returns. It never blocks longer than asked.

A subclass says how to deliver one item (`deliver`, returning a `Result`) and, if it counts
elsewhere than `alerts_sent_total` / `alerts_dropped_total{sink,reason}`, how it counts.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from agent.sinks.ratelimit import TokenBucket

if TYPE_CHECKING:
    from agent.metrics import Metrics
    from agent.sinks.findings import Finding

log = logging.getLogger("nodewarden.sinks")

T = TypeVar("T")

RETRY_AFTER_MAX = 300.0     # a service asking for longer is waited on for this long


class Sink(Protocol):
    """Where findings go besides stdout: Slack, pod Events, a webhook."""

    name: str

    def submit(self, finding: Finding) -> None:
        """Take one finding; never blocks; what cannot be delivered is counted by reason."""

    def close(self, deadline: float) -> None:
        """Deliver what is pending for at most `deadline` seconds; count the rest."""


@dataclass(frozen=True)
class Result:
    """What one delivery attempt came to.

    `done`: delivered (or nothing more to do), `label` says how ("sent", "gone", ...);
    `drop`: given up on at once, `label` is the reason (e.g. "rejected");
    `retry`: try again after the backoff, or after `retry_after` seconds when the service
    said so; `again`: try again at once (the request must change, e.g. create -> patch).
    """

    kind: str
    label: str = ""
    retry_after: float | None = None
    why: str = ""               # for the log line of a retry: never a URL

    @classmethod
    def done(cls, label: str = "sent") -> Result:
        """Delivered."""
        return cls("done", label)

    @classmethod
    def drop(cls, reason: str) -> Result:
        """Given up on without retrying, counted under `reason`."""
        return cls("drop", reason)

    @classmethod
    def retry(cls, why: str, retry_after: float | None = None) -> Result:
        """A transient failure (`why` is logged): try again later."""
        return cls("retry", retry_after=retry_after, why=why)

    @classmethod
    def again(cls) -> Result:
        """Try again at once, with a request the sink has changed."""
        return cls("again")


def retry_after(headers: Mapping[str, Any] | None) -> float | None:
    """The seconds a Retry-After header asks for (at most RETRY_AFTER_MAX), None if absent or
    not a number of seconds."""
    for k, v in (headers or {}).items():
        if k.lower() == "retry-after":
            try:
                return min(RETRY_AFTER_MAX, max(0.0, float(v[0] if isinstance(v, list) else v)))
            except (TypeError, ValueError):
                return None
    return None


@dataclass(order=True)
class _Job(Generic[T]):
    due: float
    seq: int
    item: T = field(compare=False)
    attempts: int = field(default=0, compare=False)


class QueuedDelivery(Generic[T]):
    """A bounded queue of items delivered by one worker thread (see the module docstring)."""

    def __init__(self, name: str, metrics: Metrics | None, *, rate: float, burst: float,
                 queue_size: int, max_attempts: int = 5, backoff: float = 1.0,
                 max_backoff: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self.name = name
        self.metrics = metrics
        self.bucket = TokenBucket(rate, burst, clock)
        self.queue_size = queue_size
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.clock = clock
        self._jobs: list[_Job[T]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closing = False           # close() was called: drain until _end
        self._end = 0.0                 # time.monotonic() deadline of the drain
        self._stop = False              # the worker must exit now
        self._inflight: _Job[T] | None = None
        self._abandoned = False         # the in-flight item was counted by close()
        self._paused_until = 0.0        # a Retry-After: nothing is sent before this (clock)
        self._idled = time.monotonic()  # when idle() last ran
        self._thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)
        self._thread.start()

    # -- what a subclass provides ----------------------------------------------------------

    def deliver(self, item: T, timeout: float) -> Result:
        """Deliver one item, waiting at most `timeout` seconds for the service."""
        raise NotImplementedError

    def count_done(self, item: T, label: str) -> None:
        """Count a delivered item (default: alerts_sent_total{sink})."""
        if self.metrics is not None:
            self.metrics.alerts_sent.labels(sink=self.name).inc()

    def count_dropped(self, reason: str, n: int = 1) -> None:
        """Count items given up on (default: alerts_dropped_total{sink,reason})."""
        if self.metrics is not None:
            self.metrics.alerts_dropped.labels(sink=self.name, reason=reason).inc(n)

    def gave_up(self, item: T, reason: str) -> None:
        """Called once an item is dropped after it was queued (not for queue_full)."""

    def idle(self) -> None:
        """Called about once a second while nothing is due (housekeeping)."""

    # -- producer side: never blocks -------------------------------------------------------

    @property
    def closing(self) -> bool:
        """Whether close() was called (new items are refused)."""
        return self._closing

    def enqueue(self, item: T, delay: float = 0.0) -> bool:
        """Queue `item` to be delivered in `delay` seconds; False (and counted) if full."""
        with self._cond:
            if self._stop or (self._closing and threading.current_thread() is not self._thread):
                return False
            if len(self._jobs) >= self.queue_size:
                full = True
            else:
                full = False
                heapq.heappush(self._jobs, _Job(self.clock() + delay, next(self._seq), item))
                self._cond.notify()
        if full:
            self.count_dropped("queue_full")
        return not full

    def pending(self) -> int:
        """Items queued or in flight."""
        with self._cond:
            return len(self._jobs) + (self._inflight is not None)

    # -- the worker ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            job, idle = self._next()
            if idle:
                self.idle()
                continue
            if job is None:
                return
            if not self._take_token(job):
                return
            try:
                result = self.deliver(job.item, self._timeout())
            except Exception as e:  # noqa: BLE001 - a sink's bug must not kill its worker
                log.exception("%s: delivery raised %s", self.name, type(e).__name__)
                result = Result.retry(type(e).__name__)
            self._settle(job, result)

    def _next(self) -> tuple[_Job[T] | None, bool]:
        """(the next due job, False); (None, True) when idle() is due (once a second while
        nothing is); (None, False): exit."""
        with self._cond:
            while not self._stop:
                now = self.clock()
                due = max(self._jobs[0].due, self._paused_until) if self._jobs else None
                if self._closing and (due is None or self._late(due - now)):
                    return None, False
                if due is not None and due <= now:
                    job = heapq.heappop(self._jobs)
                    self._inflight = job
                    return job, False
                if time.monotonic() - self._idled >= 1.0:
                    self._idled = time.monotonic()
                    return None, True
                self._cond.wait(1.0 if due is None else min(1.0, due - now))
            return None, False

    def _late(self, seconds: float) -> bool:
        """While closing: whether `seconds` from now is past the close deadline."""
        return time.monotonic() + max(0.0, seconds) > self._end

    def _take_token(self, job: _Job[T]) -> bool:
        """Wait for the rate limit; False (the job put back) when closing cuts the wait."""
        while True:
            wait = self.bucket.take()
            if wait <= 0:
                return True
            with self._cond:
                if self._stop or (self._closing and self._late(wait)):
                    heapq.heappush(self._jobs, job)
                    self._inflight = None
                    return False
                self._cond.wait(min(wait, 0.5))

    def _timeout(self, usual: float = 10.0) -> float:
        """The request timeout: the usual one, or at close what is left of the deadline."""
        if not self._closing:
            return usual
        return max(0.1, min(usual, self._end - time.monotonic()))

    def _settle(self, job: _Job[T], result: Result) -> None:
        with self._cond:
            self._inflight = None
            if self._abandoned:
                return                   # close() gave up on it and counted it
            if result.kind == "retry" or result.kind == "again":
                job.attempts += 1
                if job.attempts < self.max_attempts:
                    self._requeue(job, result)
                    return
        if result.kind == "done":
            self.count_done(job.item, result.label)
            return
        reason = result.label if result.kind == "drop" else "failed"
        if reason == "failed":
            log.error("%s: giving up after %d attempts (last: %s)", self.name, job.attempts,
                      result.why or "failed")
        self.count_dropped(reason)
        self.gave_up(job.item, reason)

    def _requeue(self, job: _Job[T], result: Result) -> None:
        """Schedule the next attempt (called holding the lock)."""
        now = self.clock()
        if result.kind == "again":
            delay = 0.0
        elif result.retry_after is not None:
            delay = result.retry_after
            self._paused_until = max(self._paused_until, now + delay)
            log.warning("%s: rate limited, waiting %.1fs as Retry-After says", self.name, delay)
        else:
            delay = min(self.max_backoff, self.backoff * 2 ** (job.attempts - 1))
            log.warning("%s: delivery failed (%s), retrying in %.1fs (attempt %d/%d)",
                        self.name, result.why, delay, job.attempts, self.max_attempts)
        job.due = now + delay
        heapq.heappush(self._jobs, job)

    # -- shutdown --------------------------------------------------------------------------

    def close(self, deadline: float = 5.0) -> None:
        """Refuse new items, deliver what is queued for at most `deadline` seconds, count
        what is left (the request in flight included) as dropped with reason "shutdown"."""
        with self._cond:
            if self._stop:
                return
            self._closing = True
            self._end = time.monotonic() + deadline
            self._cond.notify_all()
        self._thread.join(timeout=max(0.0, self._end - time.monotonic()))
        with self._cond:
            self._stop = True
            left = [j.item for j in self._jobs]
            self._jobs.clear()
            if self._inflight is not None:
                self._abandoned = True
                left.append(self._inflight.item)
            self._cond.notify_all()
        if left:
            self.count_dropped("shutdown", len(left))
            for item in left:
                self.gave_up(item, "shutdown")
            log.warning("shutdown: %d %s deliveries not done (counted as dropped)",
                        len(left), self.name)
