"""Findings to Warning Events on the offending pod (`kubectl describe pod` shows them).

A flood of findings must not become a flood of API requests, so:

- One Event per (pod uid, rule, reason) per `dedupe_seconds`: repeats raise its `count`
  and `lastTimestamp`, the way the kubelet aggregates its own Events.
- Repeats are coalesced: an Event is PATCHed at most once per `patch_interval`, with
  whatever count it has reached by then.
- All writes share a token bucket (`rate` per second, `burst`), in the worker thread of
  agent/sinks/base.py; `submit()` never blocks the detection path.
- 429 (as its Retry-After says), 5xx and network errors back off exponentially; an Event
  given up on, or a finding refused because `max_series` Events are open, is counted in
  `alerts_dropped_total{sink="kubernetes",reason}`.

Events are readable by whoever can read Events in the pod's namespace (usually the
tenant), so they carry the rule's message and the process's pid and name, and never
environ values.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import xxhash

from agent.kubeapi import TIMEOUTS, Kube, status_of
from agent.metrics import Bounded, Metrics
from agent.model import Pod
from agent.sinks.base import QueuedDelivery, Result, retry_after
from agent.sinks.findings import Finding
from agent.text import human

if TYPE_CHECKING:
    from agent.config import Config

log = logging.getLogger("nodewarden.kubernetes")

REASONS = {
    "killed": "NodewardenKilled",
    "would_kill": "NodewardenWouldKill",
    "reported": "NodewardenDetected",
    "gone": "NodewardenDetected",      # it exited before the kill reached it
    "protected": "NodewardenProtected",
    "failed": "NodewardenKillFailed",
}
COMPONENT = "nodewarden"
MESSAGE_LIMIT = 1024                    # what the API server keeps of a message


def reason_of(outcome: str) -> str:
    """The Event's reason for a finding's outcome."""
    return REASONS.get(outcome, "NodewardenDetected")


def event_message(f: Finding) -> str:
    """What `kubectl describe pod` shows: rule, outcome, process, and the rule's message."""
    p = f.process
    text = (f"[{f.severity.value}] {f.rule}: {f.outcome} ({f.mode}), pid {p.pid} "
            f"{human(p.comm)}: {human(f.message[:MESSAGE_LIMIT])}")
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def event_name(pod_name: str, key: tuple[str, str, str], opened: float) -> str:
    """A name unique per Event series: the pod's name (as the kubelet does) plus a hash."""
    digest = xxhash.xxh64(f"{key}|{opened}".encode()).hexdigest()
    return f"{pod_name[:253 - 18]}.{digest}"


def rfc3339(t: float) -> str:
    """`t` (Unix seconds) as an Event timestamp."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_body(f: Finding, pod: Pod, name: str, count: int, first: float, last: float,
               node: str) -> dict[str, Any]:
    """A core/v1 Warning Event about the finding's pod."""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": pod.namespace,
                     "labels": {"app.kubernetes.io/managed-by": COMPONENT}},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": pod.namespace,
                           "name": pod.name, "uid": pod.uid},
        "type": "Warning",
        "reason": reason_of(f.outcome),
        "message": event_message(f),
        "count": count,
        "firstTimestamp": rfc3339(first),
        "lastTimestamp": rfc3339(last),
        "source": {"component": COMPONENT, "host": node},
    }


def event_patch(f: Finding, count: int, last: float) -> list[dict[str, Any]]:
    """A JSON patch of a series' Event: explicit about the three fields it changes, whatever
    content type the client version would pick for a merge patch."""
    return [{"op": "replace", "path": "/count", "value": count},
            {"op": "replace", "path": "/lastTimestamp", "value": rfc3339(last)},
            {"op": "replace", "path": "/message", "value": event_message(f)}]


SeriesKey = tuple[str, str, str]    # (pod uid, rule, reason)


@dataclass
class _Series:
    """One Event object: the findings of one (pod, rule, reason) within the window."""

    name: str
    pod: Pod
    finding: Finding            # the latest, slimmed
    opened: float               # monotonic
    first: float                # wall clock
    last: float
    count: int = 0
    sent: int = 0               # the count the API server has
    created: bool = False
    next_send: float = 0.0      # no PATCH before this (monotonic)


class PodEventSink(QueuedDelivery[SeriesKey]):
    """Writes findings about pods as Warning Events, from its own thread."""

    def __init__(self, api: Any, node: str, metrics: Metrics, rate: float = 2.0,
                 burst: float = 10.0, dedupe_seconds: float = 600.0,
                 patch_interval: float = 30.0, max_series: int = 2048, max_attempts: int = 5,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.api = api
        self.node = node
        self.dedupe_seconds = dedupe_seconds
        self.patch_interval = patch_interval
        self.max_series = max_series
        self.wall = wall
        self._series: OrderedDict[SeriesKey, _Series] = OrderedDict()
        self._dirty: set[SeriesKey] = set()     # queued or being written
        self._lock = threading.Lock()
        super().__init__("kubernetes", metrics, rate=rate, burst=burst, queue_size=max_series,
                         max_attempts=max_attempts, backoff=2.0, clock=clock)

    # -- producer side (the agent's loop) --------------------------------------------------

    def submit(self, finding: Finding) -> None:
        """Take one finding; those without a pod are not this sink's."""
        pod = finding.pod
        if pod is None or not pod.uid or not pod.namespace or self.closing:
            return
        key = (pod.uid, finding.rule, reason_of(finding.outcome))
        f = finding.slim(MESSAGE_LIMIT)
        now, wall = self.clock(), self.wall()
        with self._lock:
            s = self._series.get(key)
            # a new Event once the window has passed and the last one is fully written;
            # until then repeats keep counting on it, so nothing is lost at the rollover
            if s is None or (now - s.opened >= self.dedupe_seconds and key not in self._dirty):
                if s is None and not self._make_room():
                    self.count_dropped("queue_full")
                    return
                s = _Series(event_name(pod.name, key, wall), pod, f, now, wall, wall)
                self._series[key] = s
                self._series.move_to_end(key)
            s.count += 1
            s.last = wall
            s.finding = f
            if key in self._dirty:
                return
            self._dirty.add(key)
            delay = max(0.0, s.next_send - now)
        if not self.enqueue(key, delay):
            with self._lock:
                self._dirty.discard(key)

    def cache(self) -> Bounded:
        """The open Event series against `max_series` (for the cache metrics)."""
        return Bounded(self._series, self.max_series)

    def _make_room(self) -> bool:
        """Forget the oldest series with nothing left to send; False if all are pending."""
        if len(self._series) < self.max_series:
            return True
        for key in self._series:
            if key not in self._dirty:
                del self._series[key]
                return True
        return False

    def idle(self) -> None:
        """Forget series whose window has passed and that have nothing left to send."""
        now = self.clock()
        with self._lock:
            for key in [k for k, s in self._series.items()
                        if now - s.opened >= self.dedupe_seconds and k not in self._dirty]:
                del self._series[key]

    # -- consumer side ---------------------------------------------------------------------

    def deliver(self, item: SeriesKey, timeout: float) -> Result:
        """Create the series' Event, or PATCH its count; a 409 or 404 changes which."""
        with self._lock:
            s = self._series.get(item)
            if s is None:
                self._dirty.discard(item)
                return Result.done("nothing")
            count, last, f, created, name = s.count, s.last, s.finding, s.created, s.name
        ns = s.pod.namespace
        timeouts = (min(TIMEOUTS[0], timeout), min(TIMEOUTS[1], timeout))
        try:
            if not created:
                self.api.create_namespaced_event(
                    ns, event_body(f, s.pod, name, count, s.first, last, self.node),
                    _request_timeout=timeouts)
            else:
                self.api.patch_namespaced_event(name, ns, event_patch(f, count, last),
                                                _request_timeout=timeouts)
        except Exception as e:  # noqa: BLE001 - the client raises several kinds; none may stop us
            return self._failed(s, e, created)
        with self._lock:
            s.created, s.sent = True, count
            s.next_send = self.clock() + self.patch_interval
            more = s.count != count and self._series.get(item) is s
            if not more:
                self._dirty.discard(item)
        if more and not self.enqueue(item, self.patch_interval):
            with self._lock:
                self._dirty.discard(item)
        return Result.done()

    def count_done(self, item: SeriesKey, label: str) -> None:
        """Count Event writes (not the no-ops of a forgotten series)."""
        if label == "sent":
            super().count_done(item, label)

    def gave_up(self, item: SeriesKey, reason: str) -> None:
        """Forget a series given up on: the next finding starts a new Event."""
        with self._lock:
            self._dirty.discard(item)
            if reason != "shutdown":
                self._series.pop(item, None)

    def _failed(self, s: _Series, e: BaseException, created: bool) -> Result:
        status = status_of(e)
        where = f"{s.pod.namespace}/{s.pod.name}"
        if status == 409 and not created:        # it exists (we restarted): count on it
            s.created = True
            return Result.again()
        if status == 404 and created:            # expired (Events live an hour): a new one
            s.created = False
            s.name = event_name(s.pod.name, ("", s.name, ""), self.wall())
            return Result.again()
        if status in (400, 401, 403, 404, 422):  # forbidden, namespace gone, invalid
            log.error("the API server refused an Event for pod %s (HTTP %d)%s", where, status,
                      ": the ServiceAccount needs events create and patch"
                      if status in (401, 403) else "")
            return Result.drop("rejected")
        why = f"HTTP {status}" if status else type(e).__name__
        return Result.retry(f"an Event for pod {where}: {why}",
                            retry_after(getattr(e, "headers", None)) if status == 429 else None)

    @classmethod
    def open(cls, kube: Kube, cfg: Config, metrics: Metrics) -> PodEventSink:
        """The Event writer the config's `kubernetes_event_*` keys ask for."""
        return cls(kube.api, kube.node, metrics, rate=cfg.kubernetes_event_rate_per_second,
                   dedupe_seconds=cfg.kubernetes_event_dedupe_seconds)
