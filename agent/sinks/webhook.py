"""Findings to any HTTP endpoint: a JSON POST of the finding, optionally signed.

The body is the finding's JSON form (`Finding.to_json()`, the one of `--format json`), one
object, UTF-8. The URL is a secret (it often carries a token): it is read from a file (a
mounted Secret), never from the config, and never logged. With `hmac_key_file`, each
request carries

    X-Nodewarden-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes, keyed by the file>

A receiver verifies it by computing the same HMAC over the raw request body (before any JSON
parsing) with the shared key and comparing in constant time (Python:
`hmac.compare_digest(header, "sha256=" + hmac.new(key, body, "sha256").hexdigest())`); the
finding's `time` lets it refuse replays older than it accepts.

Delivery is the shared queued one (agent/sinks/base.py): bounded queue, rate limit, backoff,
Retry-After, a close deadline, drops counted as alerts_dropped_total{sink="webhook",reason}.
Redirects are not followed: a signed finding goes to the configured URL or nowhere.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import TYPE_CHECKING

from agent import __version__
from agent.model import Severity
from agent.sinks.base import QueuedDelivery, Result, retry_after
from agent.sinks.findings import Finding
from agent.sinks.webhookconfig import WebhookConfig as WebhookConfig  # its config section
from agent.text import json_line

if TYPE_CHECKING:
    import urllib.request

    from agent.metrics import Metrics

log = logging.getLogger("nodewarden.webhook")

SIGNATURE_HEADER = "X-Nodewarden-Signature"


def signature(key: bytes, body: bytes) -> str:
    """The signature header's value for `body`."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def body_of(finding: Finding) -> bytes:
    """The request body: the finding's JSON form, valid UTF-8 whatever the workload wrote."""
    return json_line(finding.to_json()).encode("utf-8")


def _opener() -> urllib.request.OpenerDirector:
    """An opener that refuses redirects (the 3xx is then an error the sink drops as
    rejected). urllib is imported here, by the sink that uses it."""
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *_args: object, **_kwargs: object) -> None:
            """Never follow."""
            return None

    return urllib.request.build_opener(NoRedirect())


class WebhookSink(QueuedDelivery[bytes]):
    """POSTs findings at or above `min_severity` to `url`, from its own thread."""

    def __init__(self, url: str, metrics: Metrics | None, key: bytes | None = None,
                 min_severity: Severity = Severity.INFO, rate: float = 5.0,
                 burst: float = 10.0, queue_size: int = 1000, timeout: float = 5.0,
                 max_attempts: int = 5, backoff: float = 1.0) -> None:
        self._url = url
        self._key = key
        self.min_severity = Severity(min_severity)
        self.timeout = timeout
        self._opener = _opener()
        super().__init__("webhook", metrics, rate=rate, burst=burst, queue_size=queue_size,
                         max_attempts=max_attempts, backoff=backoff)

    def __repr__(self) -> str:
        return f"WebhookSink(min_severity={self.min_severity.value}, signed={bool(self._key)})"

    def submit(self, finding: Finding) -> None:
        """Queue the finding's JSON unless it is below `min_severity`; never blocks."""
        if finding.severity.rank >= self.min_severity.rank and not self.closing:
            self.enqueue(body_of(finding))

    def deliver(self, item: bytes, timeout: float) -> Result:
        """One POST; 2xx is sent, 429 and 5xx and network errors retried, the rest dropped."""
        import urllib.error
        import urllib.request

        headers = {"Content-Type": "application/json", "User-Agent": f"nodewarden/{__version__}"}
        if self._key is not None:
            headers[SIGNATURE_HEADER] = signature(self._key, item)
        req = urllib.request.Request(self._url, data=item, headers=headers, method="POST")
        try:
            with self._opener.open(req, timeout=min(self.timeout, timeout)) as resp:
                resp.read(65536)
                status = resp.status
        except urllib.error.HTTPError as e:
            status = e.code
            wait = retry_after(dict(e.headers.items())) if e.headers is not None else None
            e.close()
            if status == 429 or (status == 503 and wait is not None):
                return Result.retry(f"HTTP {status}", 1.0 if wait is None else wait)
        except (OSError, ValueError) as e:   # URLError, timeouts, resets, a bad URL
            return Result.retry(f"unreachable: {type(e).__name__}")
        if 200 <= status < 300:
            return Result.done()
        if status >= 500 or status == 408:
            return Result.retry(f"HTTP {status}")
        log.error("the webhook refused a finding with HTTP %d; dropping it", status)
        return Result.drop("rejected")
