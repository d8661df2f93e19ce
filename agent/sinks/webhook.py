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
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent import __version__
from agent.errors import ConfigError
from agent.model import Severity
from agent.sinks.base import QueuedDelivery, Result, retry_after
from agent.sinks.findings import Finding
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
    rejected). urllib is imported here, by the sink that uses it: `nodewarden scan` reads
    this module for its config section only and starts without HTTP."""
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


def _read_secret(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            value = f.read(65536).strip()
    except OSError as e:
        raise ConfigError(f"webhook.{what} {path}: cannot read it: {e.strerror}") from None
    if not value:
        raise ConfigError(f"webhook.{what} {path}: the file is empty")
    return value


@dataclass
class WebhookConfig:
    """The `webhook:` section of the config: on when `url_file` names a file."""

    url_file: str = ""              # the URL, a secret: a file (a mounted Secret), never here
    hmac_key_file: str = ""         # sign each body with this key (X-Nodewarden-Signature)
    min_severity: Severity = Severity.INFO
    rate_per_second: float = 5.0
    queue_size: int = 1000
    timeout_seconds: float = 5.0

    def __post_init__(self) -> None:
        self.min_severity = Severity(self.min_severity)

    def validate(self) -> None:
        """Raise ConfigError for values the sink cannot work with."""
        if self.rate_per_second <= 0 or self.queue_size < 1 or self.timeout_seconds <= 0:
            raise ConfigError("webhook: rate_per_second, queue_size and timeout_seconds must "
                              "be positive")
        if self.hmac_key_file and not self.url_file:
            raise ConfigError("webhook: hmac_key_file is set but url_file is not")

    def _secrets(self) -> tuple[str, bytes | None]:
        """(the URL, the HMAC key or None) from their files. Raises ConfigError."""
        url = _read_secret(self.url_file, "url_file").decode("utf-8", "replace")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"webhook.url_file {self.url_file}: the file must hold an "
                              "http:// or https:// URL")
        key = _read_secret(self.hmac_key_file, "hmac_key_file") if self.hmac_key_file else None
        return url, key

    def open_sink(self, metrics: Metrics) -> WebhookSink | None:
        """The sink this section asks for, or None when it is off. Raises ConfigError."""
        if not self.url_file:
            return None
        url, key = self._secrets()
        log.info("webhook on (severity >= %s, %s); the URL is not logged",
                 self.min_severity.value, "signed" if key else "unsigned")
        return WebhookSink(url, metrics, key, self.min_severity, rate=self.rate_per_second,
                           burst=max(1.0, 2 * self.rate_per_second),
                           queue_size=self.queue_size, timeout=self.timeout_seconds)
