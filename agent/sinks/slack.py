"""Findings to a Slack incoming webhook, through slack-sdk, without ever slowing detection.

- `message()` is pure: one Block Kit message per incident (rule, severity colour, outcome,
  host, workspace or pod, process, connection), and a "N more suppressed" follow-up.
- `SlackSink.submit()` never blocks: it de-duplicates per (rule, workspace, executable)
  within a window and puts the message on a bounded queue; a full queue drops the alert
  and counts it (`alerts_dropped_total{sink="slack",reason}`), never silently.
- A worker thread sends at most `rate` messages per second (a token bucket, Slack allows
  about one per second per webhook), waits as long as a 429's Retry-After says, retries
  5xx and network errors with exponential backoff, and counts what it gives up on.
- The webhook URL is a secret (it is the credential): it comes from an environment
  variable or a file (a mounted Secret), and is never logged, not even by slack-sdk's
  debug logging.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.metrics import Metrics
from agent.sinks.ratelimit import TokenBucket
from agent.text import human

log = logging.getLogger("nodewarden.slack")
# slack-sdk logs the URL at DEBUG: its logger is held at WARNING whatever our level
_http_log = logging.getLogger("nodewarden.slack.http")
_http_log.setLevel(logging.WARNING)
_http_log.propagate = False

SEVERITY_ORDER = ("info", "low", "medium", "high", "critical")
COLOURS = {"info": "#439FE0", "low": "#2EB67D", "medium": "#ECB22E", "high": "#E8702A",
           "critical": "#E01E5A"}


def message(f: dict[str, Any]) -> dict[str, Any]:
    """The Block Kit message for one finding."""
    p = f["process"]
    where = []
    if f.get("pod"):
        where.append(f"pod `{f['pod']['namespace']}/{f['pod']['name']}`")
    if f.get("workspace"):
        where.append(f"workspace `{_clip(f['workspace']['id'], 253)}`")
    if f.get("container"):
        where.append(f"container `{f['container']['id'][:12]}`")
    fields = [
        f"*Rule*\n`{f['rule']}`",
        f"*Severity*\n{f['severity']}",
        f"*Outcome*\n{f['outcome']} ({f['mode']})",
        f"*Host*\n{f['host']}",
        f"*Process*\n`{_clip(p['comm'], 64)}` pid {p['pid']}\n`{_clip(' '.join(p['cmdline']), 300)}`",
        f"*Where*\n{', '.join(where) or 'host'}",
    ]
    c = f.get("connection")
    if c:
        fields.append(f"*Connection*\n{c['direction']} {c['src']}:{c['sport']} -> "
                      f"{c['dst']}:{c['dport']}")
    title = f":rotating_light: {f['severity'].upper()}: {_clip(f['message'], 200)}"
    return {
        "text": title,
        "attachments": [{
            "color": COLOURS.get(f["severity"], "#888888"),
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": title}},
                {"type": "section", "fields": [{"type": "mrkdwn", "text": x} for x in fields]},
                {"type": "context", "elements": [{"type": "mrkdwn",
                                                  "text": f"nodewarden · {f['time']}"}]},
            ],
        }],
    }


def suppressed_message(key: tuple[str, str, str], count: int, seconds: float) -> dict[str, Any]:
    rule, ws, exe = key
    text = (f"{count} more `{rule}` finding(s) for `{_clip(exe, 200)}`"
            f"{f' in workspace `{_clip(ws, 253)}`' if ws else ''} suppressed in the last {seconds:g}s")
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


def _clip(s: str, n: int) -> str:
    """Workload-controlled text made inert in mrkdwn: one line of printable text
    (agent/text.py), no code-span breakout, no <!channel> or <http://link|label> (Slack's
    control sequences need < and >, escaped as entities)."""
    s = human(s[:n])
    s = s.replace("`", "'").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return s if len(s) <= n else s[: n - 1] + "…"


@dataclass
class _Incident:
    first: float
    suppressed: int = 0


class SlackSink:
    """Sends findings at or above `min_severity` to a webhook, from its own thread."""

    def __init__(self, url: str, metrics: Metrics, min_severity: str = "high",
                 dedupe_seconds: float = 300.0, rate: float = 1.0, burst: float = 3.0,
                 queue_size: int = 1000, timeout: float = 5.0, max_attempts: int = 5,
                 backoff: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        from slack_sdk.webhook import WebhookClient

        self._client = WebhookClient(url, timeout=int(max(1, timeout)), logger=_http_log,
                                     retry_handlers=[])
        self.metrics = metrics
        self.min_rank = SEVERITY_ORDER.index(min_severity)
        self.dedupe_seconds = dedupe_seconds
        self.bucket = TokenBucket(rate, burst, clock)
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.clock = clock
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=queue_size)
        self._incidents: dict[tuple[str, str, str], _Incident] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        # the message being sent: counted once, by the worker or, if abandoned at the
        # shutdown deadline, by close()
        self._inflight = False
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, name="slack", daemon=True)
        self._thread.start()

    # -- producer side (the agent's thread): never blocks ----------------------------------

    def submit(self, f: dict[str, Any]) -> None:
        if SEVERITY_ORDER.index(f["severity"]) < self.min_rank or self._closing.is_set():
            return
        key = (f["rule"], (f.get("workspace") or {}).get("id", ""),
               f["process"].get("exe") or f["process"]["comm"])
        now = self.clock()
        with self._lock:
            self._flush_expired(now)
            inc = self._incidents.get(key)
            if inc is not None:
                inc.suppressed += 1
                return
            if len(self._incidents) >= 10_000:
                self._drop("dedupe_full")  # bounded: a flood of distinct keys is counted
                return
            self._incidents[key] = _Incident(now)
        self._put(message(f))

    def _flush_expired(self, now: float) -> None:
        for key, inc in list(self._incidents.items()):
            if now - inc.first >= self.dedupe_seconds:
                del self._incidents[key]
                if inc.suppressed:
                    self._put(suppressed_message(key, inc.suppressed, self.dedupe_seconds))

    def _put(self, msg: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(msg)
        except queue.Full:
            self._drop("queue_full")

    def _drop(self, reason: str, n: int = 1) -> None:
        self.metrics.alerts_dropped.labels(sink="slack", reason=reason).inc(n)

    # -- consumer side ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                msg = self._queue.get(timeout=1.0)
            except queue.Empty:
                with self._lock:
                    self._flush_expired(self.clock())
                if self._closing.is_set():
                    return
                continue
            with self._lock:
                self._inflight = True
            outcome = self._send(msg)
            with self._lock:
                self._inflight = False
                if not self._abandoned:
                    if outcome == "sent":
                        self.metrics.alerts_sent.labels(sink="slack").inc()
                    else:
                        self._drop(outcome)
            self._queue.task_done()

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless closing; False when shutdown interrupted the wait."""
        return not self._closing.wait(seconds)

    def _send(self, msg: dict[str, Any]) -> str:
        """"sent", or the reason it was given up on."""
        wait = self.bucket.take()
        while wait > 0:
            if not self._sleep(wait):
                return "shutdown"
            wait = self.bucket.take()
        delay = self.backoff
        for attempt in range(1, self.max_attempts + 1):
            try:
                resp = self._client.send_dict(msg)
                status = resp.status_code
            except Exception as e:  # noqa: BLE001 - urllib raises several kinds; none may stop us
                status = 0
                log.warning("Slack webhook unreachable (attempt %d/%d): %s", attempt,
                            self.max_attempts, type(e).__name__)
            if 200 <= status < 300:
                return "sent"
            if status == 429:
                retry_after = _retry_after(resp.headers) if status else delay
                log.warning("Slack rate limit: waiting %.1fs as Retry-After says", retry_after)
                if not self._sleep(retry_after):
                    break
                continue
            if status and not (500 <= status < 600):
                log.error("Slack rejected the message with HTTP %d; dropping it", status)
                return "rejected"
            if attempt < self.max_attempts and not self._sleep(delay):
                break
            delay *= 2
        return "failed" if not self._closing.is_set() else "shutdown"

    def close(self, deadline: float = 5.0) -> None:
        """Stop taking findings, send what is queued until `deadline` seconds, count the rest."""
        end = time.monotonic() + deadline
        while self._queue.unfinished_tasks and time.monotonic() < end:
            time.sleep(0.05)
        self._closing.set()
        self._thread.join(timeout=max(0.1, end - time.monotonic()))
        left = 0
        with self._lock:
            if self._inflight:  # still waiting on Slack: give it up, count it here
                self._abandoned = True
                left += 1
        while True:
            try:
                self._queue.get_nowait()
                left += 1
            except queue.Empty:
                break
        if left:
            self._drop("shutdown", left)
            log.warning("shutdown: %d Slack alert(s) not sent (counted as dropped)", left)


def _retry_after(headers: dict[str, Any]) -> float:
    for k, v in headers.items():
        if k.lower() == "retry-after":
            try:
                return min(300.0, max(0.0, float(v if not isinstance(v, list) else v[0])))
            except ValueError:
                break
    return 1.0


def read_webhook_url(env_var: str, file: str | None, environ: dict[str, str]) -> str | None:
    """The webhook URL from a file (a mounted Secret) or the environment; None if unset."""
    if file:
        with open(file, encoding="utf-8") as fh:
            url = fh.read().strip()
        return url or None
    return environ.get(env_var) or None
