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
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.errors import ConfigError
from agent.metrics import Bounded, Metrics
from agent.model import Severity
from agent.sinks.base import QueuedDelivery, Result, retry_after
from agent.sinks.findings import Finding
from agent.text import human

if TYPE_CHECKING:
    from agent.config import Config

log = logging.getLogger("nodewarden.slack")
# (rule, workspace, executable): what makes repeated findings one incident
Key = tuple[str, str, str]
# slack-sdk logs the URL at DEBUG: its logger is held at WARNING whatever our level
_http_log = logging.getLogger("nodewarden.slack.http")
_http_log.setLevel(logging.WARNING)
_http_log.propagate = False

# open incidents at most: a flood of distinct keys past it is counted as dropped
MAX_INCIDENTS = 10_000

COLOURS = {Severity.INFO: "#439FE0", Severity.LOW: "#2EB67D", Severity.MEDIUM: "#ECB22E",
           Severity.HIGH: "#E8702A", Severity.CRITICAL: "#E01E5A"}


def message(f: Finding) -> dict[str, Any]:
    """The Block Kit message for one finding."""
    p = f.process
    where = []
    if f.pod:
        where.append(f"pod `{f.pod.namespace}/{f.pod.name}`")
    if f.workspace:
        where.append(f"workspace `{_clip(f.workspace, 253)}`")
    if f.container:
        where.append(f"container `{f.container[:12]}`")
    fields = [
        f"*Rule*\n`{f.rule}`",
        f"*Severity*\n{f.severity.value}",
        f"*Outcome*\n{f.outcome} ({f.mode})",
        f"*Host*\n{f.host}",
        f"*Process*\n`{_clip(p.comm, 64)}` pid {p.pid}\n`{_clip(p.cmdline_str, 300)}`",
        f"*Where*\n{', '.join(where) or 'host'}",
    ]
    c = f.connection
    if c:
        fields.append(f"*Connection*\n{c.direction} {c.src}:{c.sport} -> {c.dst}:{c.dport}")
    title = f":rotating_light: {f.severity.value.upper()}: {_clip(f.message, 200)}"
    return {
        "text": title,
        "attachments": [{
            "color": COLOURS.get(f.severity, "#888888"),
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": title}},
                {"type": "section", "fields": [{"type": "mrkdwn", "text": x} for x in fields]},
                {"type": "context", "elements": [{"type": "mrkdwn",
                                                  "text": f"nodewarden · {f.time_text}"}]},
            ],
        }],
    }


def suppressed_message(key: Key, count: int, seconds: float) -> dict[str, Any]:
    """The follow-up that says how many repeats of an incident were not sent."""
    rule, ws, exe = key
    where = f" in workspace `{_clip(ws, 253)}`" if ws else ""
    text = (f"{count} more `{rule}` finding(s) for `{_clip(exe, 200)}`{where} suppressed in "
            f"the last {seconds:g}s")
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


class SlackSink(QueuedDelivery[dict[str, Any]]):
    """Sends findings at or above `min_severity` to a webhook, from its own thread."""

    def __init__(self, url: str, metrics: Metrics, min_severity: str = "high",
                 dedupe_seconds: float = 300.0, rate: float = 1.0, burst: float = 3.0,
                 queue_size: int = 1000, timeout: float = 5.0, max_attempts: int = 5,
                 backoff: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        from slack_sdk.webhook import WebhookClient

        self._client = WebhookClient(url, timeout=int(max(1, timeout)), logger=_http_log,
                                     retry_handlers=[])
        self.timeout = timeout
        self.min_rank = Severity(min_severity).rank
        self.dedupe_seconds = dedupe_seconds
        self._incidents: dict[Key, _Incident] = {}
        self._lock = threading.Lock()
        super().__init__("slack", metrics, rate=rate, burst=burst, queue_size=queue_size,
                         max_attempts=max_attempts, backoff=backoff, clock=clock)

    # -- producer side (the agent's thread): never blocks ----------------------------------

    def submit(self, finding: Finding) -> None:
        """Queue the message of `finding` unless below the severity or a repeat."""
        if finding.severity.rank < self.min_rank or self.closing:
            return
        key = incident_key(finding)
        now = self.clock()
        with self._lock:
            self._flush_expired(now)
            inc = self._incidents.get(key)
            if inc is not None:
                inc.suppressed += 1
                return
            if len(self._incidents) >= MAX_INCIDENTS:
                self.count_dropped("dedupe_full")  # bounded: a flood of distinct keys is counted
                return
            self._incidents[key] = _Incident(now)
        self.enqueue(message(finding))

    def cache(self) -> Bounded:
        """The open incidents against their bound (for the cache metrics)."""
        return Bounded(self._incidents, MAX_INCIDENTS)

    def _flush_expired(self, now: float) -> None:
        for key, inc in list(self._incidents.items()):
            if now - inc.first >= self.dedupe_seconds:
                del self._incidents[key]
                if inc.suppressed:
                    self.enqueue(suppressed_message(key, inc.suppressed, self.dedupe_seconds))

    def idle(self) -> None:
        """Send the "N more suppressed" of windows that ended while nothing came."""
        with self._lock:
            self._flush_expired(self.clock())

    # -- consumer side ---------------------------------------------------------------------

    def deliver(self, item: dict[str, Any], timeout: float) -> Result:
        """POST one message through slack-sdk; 429 waits as Retry-After says."""
        self._client.timeout = int(max(1, min(self.timeout, timeout)))
        try:
            resp = self._client.send_dict(item)
        except Exception as e:  # noqa: BLE001 - urllib raises several kinds; none may stop us
            return Result.retry(f"Slack webhook unreachable: {type(e).__name__}")
        status = resp.status_code
        if 200 <= status < 300:
            return Result.done()
        if status == 429:
            wait = retry_after(resp.headers)
            return Result.retry("HTTP 429", 1.0 if wait is None else wait)
        if 500 <= status < 600:
            return Result.retry(f"HTTP {status}")
        log.error("Slack rejected the message with HTTP %d; dropping it", status)
        return Result.drop("rejected")


def incident_key(f: Finding) -> Key:
    """What makes repeats one incident: the rule, the workspace, the executable."""
    return (f.rule, f.workspace, f.process.exe or f.process.comm)


def read_webhook_url(env_var: str, file: str | None, environ: Mapping[str, str]) -> str | None:
    """The webhook URL from a file (a mounted Secret) or the environment; None if unset."""
    if file:
        with open(file, encoding="utf-8") as fh:
            url = fh.read().strip()
        return url or None
    return environ.get(env_var) or None


def open_slack(cfg: Config, metrics: Metrics, environ: Mapping[str, str] | None = None,
               ) -> SlackSink | None:
    """The Slack sink the config asks for: on when a webhook URL is configured (the
    environment variable `slack_webhook_url_env` or the Secret file `slack_webhook_url_file`).
    Raises ConfigError when the file cannot be read."""
    try:
        url = read_webhook_url(cfg.slack_webhook_url_env, cfg.slack_webhook_url_file or None,
                               os.environ if environ is None else environ)
    except OSError as e:
        raise ConfigError(f"cannot read the Slack webhook URL file: {e.strerror}") from None
    if url is None:
        return None
    log.info("Slack alerts on (severity >= %s); the webhook URL is not logged",
             cfg.slack_min_severity)
    return SlackSink(url, metrics, min_severity=cfg.slack_min_severity,
                     dedupe_seconds=cfg.slack_dedupe_seconds, rate=cfg.slack_rate_per_second,
                     queue_size=cfg.slack_queue_size)
