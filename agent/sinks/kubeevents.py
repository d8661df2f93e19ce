"""Findings to Warning Events on the offending pod (`kubectl describe pod` shows them).

A flood of findings must not become a flood of API requests, so:

- One Event per (pod uid, rule, reason) per `dedupe_seconds`: repeats raise its `count`
  and `lastTimestamp`, the way the kubelet aggregates its own Events.
- Repeats are coalesced: an Event is PATCHed at most once per `patch_interval`, with
  whatever count it has reached by then.
- All writes share a token bucket (`rate` per second, `burst`), in a worker thread;
  `submit()` never blocks the detection path.
- 429, 5xx and network errors back off exponentially; an Event given up on, or a finding
  refused because `max_series` Events are open, is counted in
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
from typing import Any

import xxhash

from agent.kubeapi import TIMEOUTS, status_of
from agent.metrics import Metrics
from agent.sinks.ratelimit import TokenBucket
from agent.text import human

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
    return REASONS.get(outcome, "NodewardenDetected")


def event_message(f: dict[str, Any]) -> str:
    """What `kubectl describe pod` shows: rule, outcome, process, and the rule's message."""
    p = f["process"]
    text = (f"[{f['severity']}] {f['rule']}: {f['outcome']} ({f['mode']}), pid {p['pid']} "
            f"{human(p['comm'])}: {human(f['message'][:MESSAGE_LIMIT])}")
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def _kept(f: dict[str, Any]) -> dict[str, Any]:
    """What a series keeps of a finding for its Event: not the command line, which could be
    held for `dedupe_seconds` in each of `max_series` series."""
    p = f["process"]
    return {**f, "process": {"pid": p["pid"], "comm": p["comm"]},
            "message": f["message"][:MESSAGE_LIMIT]}


def event_name(pod_name: str, key: tuple[str, str, str], opened: float) -> str:
    """A name unique per Event series: the pod's name (as the kubelet does) plus a hash."""
    digest = xxhash.xxh64(f"{key}|{opened}".encode()).hexdigest()
    return f"{pod_name[:253 - 18]}.{digest}"


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_body(f: dict[str, Any], name: str, count: int, first: float, last: float,
               node: str) -> dict[str, Any]:
    """A core/v1 Warning Event about the finding's pod."""
    pod = f["pod"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": pod["namespace"],
                     "labels": {"app.kubernetes.io/managed-by": COMPONENT}},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": pod["namespace"],
                           "name": pod["name"], "uid": pod["uid"]},
        "type": "Warning",
        "reason": reason_of(f["outcome"]),
        "message": event_message(f),
        "count": count,
        "firstTimestamp": rfc3339(first),
        "lastTimestamp": rfc3339(last),
        "source": {"component": COMPONENT, "host": node},
    }


@dataclass
class _Series:
    """One Event object: the findings of one (pod, rule, reason) within the window."""

    name: str
    finding: dict[str, Any]     # the latest
    opened: float               # monotonic
    first: float                # wall clock
    last: float
    count: int = 0
    sent: int = 0               # the count the API server has
    created: bool = False
    next_send: float = 0.0
    attempts: int = 0


class PodEventSink:
    """Writes findings about pods as Warning Events, from its own thread."""

    def __init__(self, api: Any, node: str, metrics: Metrics, rate: float = 2.0,
                 burst: float = 10.0, dedupe_seconds: float = 600.0,
                 patch_interval: float = 30.0, max_series: int = 2048, max_attempts: int = 5,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.api = api
        self.node = node
        self.metrics = metrics
        self.bucket = TokenBucket(rate, burst, clock)
        self.dedupe_seconds = dedupe_seconds
        self.patch_interval = patch_interval
        self.max_series = max_series
        self.max_attempts = max_attempts
        self.clock = clock
        self.wall = wall
        self._series: OrderedDict[tuple[str, str, str], _Series] = OrderedDict()
        self._dirty: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kube-events", daemon=True)
        self._thread.start()

    # -- producer side (the agent's loop) --------------------------------------------------

    def submit(self, f: dict[str, Any]) -> None:
        """Take one finding; those without a pod are not this sink's."""
        pod = f.get("pod")
        if not pod or not pod.get("uid") or not pod.get("namespace") or self._closing.is_set():
            return
        key = (pod["uid"], f["rule"], reason_of(f["outcome"]))
        f = _kept(f)
        now, wall = self.clock(), self.wall()
        with self._lock:
            s = self._series.get(key)
            # a new Event once the window has passed and the last one is fully written;
            # until then repeats keep counting on it, so nothing is lost at the rollover
            if s is None or (now - s.opened >= self.dedupe_seconds and key not in self._dirty):
                if s is None and not self._make_room():
                    self._drop("queue_full")
                    return
                s = _Series(event_name(pod["name"], key, wall), f, now, wall, wall)
                self._series[key] = s
                self._series.move_to_end(key)
            s.count += 1
            s.last = wall
            s.finding = f
            self._dirty[key] = None
        self._wake.set()

    def _make_room(self) -> bool:
        """Forget the oldest series with nothing left to send; False if all are pending."""
        if len(self._series) < self.max_series:
            return True
        for key in self._series:
            if key not in self._dirty:
                del self._series[key]
                return True
        return False

    def _drop(self, reason: str) -> None:
        self.metrics.alerts_dropped.labels(sink="kubernetes", reason=reason).inc()

    # -- consumer side ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closing.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            self.flush()

    def _timeouts(self, until: float | None) -> tuple[float, float]:
        """Request timeouts: the usual ones, or at shutdown what is left of the deadline."""
        if until is None:
            return TIMEOUTS
        left = max(0.1, until - self.clock())
        return (min(TIMEOUTS[0], left), min(TIMEOUTS[1], left))

    def flush(self, until: float | None = None) -> bool:
        """Send every Event whose time has come; True when nothing is left to send."""
        while True:
            now = self.clock()
            with self._lock:
                due = [k for k in self._dirty if self._series[k].next_send <= now]
                self._expire(now)
            if not due:
                with self._lock:
                    return not self._dirty
            for key in due:
                if until is None and self._closing.is_set():
                    return False                  # close() takes over, with its deadline
                if until is not None and self.clock() >= until:
                    return False
                wait = self.bucket.take()
                while wait > 0:
                    if not self._pause(wait, until):
                        return False
                    wait = self.bucket.take()
                self._send(key, self._timeouts(until))

    def _pause(self, seconds: float, until: float | None) -> bool:
        """Wait for a token: in the worker until closing, at shutdown until the deadline."""
        if until is None:
            return not self._closing.wait(seconds)
        if self.clock() + seconds > until:
            return False
        time.sleep(seconds)
        return True

    def _expire(self, now: float) -> None:
        """Forget series whose window has passed and that have nothing left to send."""
        for key in [k for k, s in self._series.items()
                    if now - s.opened >= self.dedupe_seconds and k not in self._dirty]:
            del self._series[key]

    def _send(self, key: tuple[str, str, str], timeouts: tuple[float, float] = TIMEOUTS) -> None:
        with self._lock:
            s = self._series.get(key)
            if s is None or key not in self._dirty:
                return
            count, last, f, created = s.count, s.last, s.finding, s.created
        ns = f["pod"]["namespace"]
        try:
            if not created:
                self.api.create_namespaced_event(
                    ns, event_body(f, s.name, count, s.first, last, self.node),
                    _request_timeout=timeouts)
            else:
                # a JSON patch: explicit about the three fields it changes, whatever
                # content type the client version would pick for a merge patch
                self.api.patch_namespaced_event(
                    s.name, ns, [{"op": "replace", "path": "/count", "value": count},
                                 {"op": "replace", "path": "/lastTimestamp", "value": rfc3339(last)},
                                 {"op": "replace", "path": "/message", "value": event_message(f)}],
                    _request_timeout=timeouts)
            outcome = "sent"
        except Exception as e:  # noqa: BLE001 - the client raises several kinds; none may stop us
            outcome = self._failed(s, e, created)
        with self._lock:
            if outcome == "sent":
                s.created, s.sent, s.attempts = True, count, 0
                s.next_send = self.clock() + self.patch_interval
                if s.count == count and self._series.get(key) is s:
                    self._dirty.pop(key, None)
            elif outcome == "retry":
                s.attempts += 1
                s.next_send = self.clock() + min(60.0, 2.0 ** s.attempts)
            elif outcome == "again":
                s.next_send = 0.0
            else:
                self._dirty.pop(key, None)
                self._series.pop(key, None)
        if outcome == "sent":
            self.metrics.alerts_sent.labels(sink="kubernetes").inc()
        elif outcome in ("failed", "rejected"):
            self._drop(outcome)

    def _failed(self, s: _Series, e: BaseException, created: bool) -> str:
        status = status_of(e)
        if status == 409 and not created:        # it exists (we restarted): count on it
            s.created = True
            return "again"
        if status == 404 and created:            # expired (Events live an hour): a new one
            s.created = False
            s.name = event_name(s.finding["pod"]["name"], ("", s.name, ""), self.wall())
            return "again"
        if status in (400, 401, 403, 404, 422):  # forbidden, namespace gone, invalid
            log.error("the API server refused an Event for pod %s/%s (HTTP %d)%s",
                      s.finding["pod"]["namespace"], s.finding["pod"]["name"], status,
                      ": the ServiceAccount needs events create and patch"
                      if status in (401, 403) else "")
            return "rejected"
        if s.attempts + 1 >= self.max_attempts:
            log.error("giving up on an Event for pod %s/%s after %d attempts",
                      s.finding["pod"]["namespace"], s.finding["pod"]["name"], s.attempts + 1)
            return "failed"
        log.warning("writing an Event failed (%s), retrying",
                    f"HTTP {status}" if status else type(e).__name__)
        return "retry"

    def close(self, deadline: float = 5.0) -> None:
        """Send what is pending until `deadline` seconds from now; count the rest."""
        end = self.clock() + deadline
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout=deadline)
        if not self._thread.is_alive():
            # the worker stopped between requests: send what is left, within the deadline
            # (no retries: a failure now stays pending and is counted below)
            self.flush(until=end)
        with self._lock:
            left = len(self._dirty)
            self._dirty.clear()
        for _ in range(left):
            self._drop("shutdown")
        if left:
            log.warning("shutdown: %d Kubernetes Event write(s) not done (counted as dropped)",
                        left)
