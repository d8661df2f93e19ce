"""The `webhook:` section of the config (agent/sinks/webhook.py is the sink it opens).

Apart from the sink so that reading a config, as every command does, imports no HTTP, no
HMAC and no delivery queue: `nodewarden scan` starts without them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.errors import ConfigError
from agent.model import Severity

if TYPE_CHECKING:
    from agent.metrics import Metrics
    from agent.sinks.webhook import WebhookSink

log = logging.getLogger("nodewarden.webhook")


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
        from agent.sinks.webhook import WebhookSink

        log.info("webhook on (severity >= %s, %s); the URL is not logged",
                 self.min_severity.value, "signed" if key else "unsigned")
        return WebhookSink(url, metrics, key, self.min_severity, rate=self.rate_per_second,
                           burst=max(1.0, 2 * self.rate_per_second),
                           queue_size=self.queue_size, timeout=self.timeout_seconds)
