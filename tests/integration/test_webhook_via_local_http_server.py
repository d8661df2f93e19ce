"""The generic webhook sink against a local HTTP server (http.server in a thread) speaking
real HTTP: delivery of the finding's JSON, the HMAC signature, 429 + Retry-After, 5xx
backoff, a full queue, the close deadline, and a URL that never reaches the log."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scripted_http import ScriptedHTTP

from agent.config import load_config
from agent.errors import ConfigError
from agent.metrics import Metrics
from agent.sinks.webhook import SIGNATURE_HEADER, WebhookConfig, WebhookSink
from tests.unit.sample_finding import sample

pytestmark = pytest.mark.integration

KEY = b"0123456789abcdef-shared-key"


@pytest.fixture
def receiver() -> Iterator[ScriptedHTTP]:
    r = ScriptedHTTP("/hook/TOKEN-SECRET-42")
    yield r
    r.stop()


def _sink(r: ScriptedHTTP, m: Metrics, **kw: object) -> WebhookSink:
    opts: dict = {"rate": 100.0, "burst": 100.0, "backoff": 0.05, **kw}
    return WebhookSink(r.url, m, **opts)


def _n(m: Metrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


def _dropped(m: Metrics, reason: str, n: float = 1, timeout: float = 10) -> None:
    """Until `n` findings were dropped for `reason`."""
    deadline = time.monotonic() + timeout
    while _n(m, "nodewarden_alerts_dropped_total", sink="webhook", reason=reason) < n:
        assert time.monotonic() < deadline, f"no drop for {reason}"
        time.sleep(0.02)


def test_the_finding_json_is_posted_and_its_signature_verifies(receiver):
    m = Metrics()
    sink = _sink(receiver, m, key=KEY)
    f = sample()
    sink.submit(f)
    receiver.wait_for(1)
    sink.close(5)
    body, headers = receiver.posts[0].body, receiver.posts[0].headers
    assert json.loads(body) == f.to_json(), "the body is the finding's JSON form, unchanged"
    assert headers["Content-Type"] == "application/json"
    # what a receiver does: HMAC-SHA256 over the raw body with the shared key
    want = "sha256=" + hmac.new(KEY, body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers[SIGNATURE_HEADER], want)
    forged = "sha256=" + hmac.new(b"other key", body, hashlib.sha256).hexdigest()
    assert not hmac.compare_digest(headers[SIGNATURE_HEADER], forged)
    assert _n(m, "nodewarden_alerts_sent_total", sink="webhook") == 1


def test_unsigned_without_a_key_and_below_min_severity_not_sent(receiver):
    m = Metrics()
    sink = _sink(receiver, m, min_severity="high")
    sink.submit(sample(severity="medium"))
    sink.submit(sample(severity="high", rule="r2"))
    receiver.wait_for(1)
    sink.close(5)
    assert len(receiver.posts) == 1
    body, headers = receiver.posts[0].body, receiver.posts[0].headers
    assert json.loads(body)["rule"] == "r2" and SIGNATURE_HEADER not in headers


def test_429_retry_after_is_honoured(receiver):
    m = Metrics()
    receiver.script = [(429, {"Retry-After": "1"}, 0.0)]
    sink = _sink(receiver, m)
    sink.submit(sample())
    receiver.wait_for(1)
    sink.close(5)
    first, second = receiver.attempts[:2]
    assert second - first >= 1.0, "the retry waited as long as Retry-After said"
    assert _n(m, "nodewarden_alerts_sent_total", sink="webhook") == 1


def test_5xx_backs_off_exponentially_then_gives_up_counted(receiver):
    m = Metrics()
    receiver.script = [(500, {}, 0.0)] * 4
    sink = _sink(receiver, m, backoff=0.2, max_attempts=4)
    sink.submit(sample())
    _dropped(m, "failed")
    sink.close(1)
    gaps = [b - a for a, b in zip(receiver.attempts, receiver.attempts[1:], strict=False)]
    assert len(receiver.attempts) == 4
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[2] >= 0.8, gaps
    assert _n(m, "nodewarden_alerts_sent_total", sink="webhook") == 0


def test_a_4xx_is_dropped_as_rejected_not_retried(receiver):
    m = Metrics()
    receiver.script = [(400, {}, 0.0)]
    sink = _sink(receiver, m)
    sink.submit(sample())
    _dropped(m, "rejected")
    sink.close(1)
    assert len(receiver.attempts) == 1


def test_a_stalled_receiver_never_blocks_submit_and_overflow_is_counted(receiver):
    m = Metrics()
    receiver.release.clear()            # accepts, then hangs
    sink = _sink(receiver, m, queue_size=10, timeout=30)
    t0 = time.monotonic()
    for i in range(200):
        sink.submit(sample(pid=i))
    assert time.monotonic() - t0 < 1.0, "submit blocked on a stalled receiver"
    full = _n(m, "nodewarden_alerts_dropped_total", sink="webhook", reason="queue_full")
    assert full >= 200 - 10 - 1
    t0 = time.monotonic()
    sink.close(deadline=1.0)
    took = time.monotonic() - t0
    assert took < 1.5, f"close(deadline=1) took {took:.1f}s"
    shutdown = _n(m, "nodewarden_alerts_dropped_total", sink="webhook", reason="shutdown")
    sent = _n(m, "nodewarden_alerts_sent_total", sink="webhook")
    assert sent + full + shutdown == 200, "every finding is sent or counted as dropped"


def test_close_delivers_what_is_queued_within_the_deadline(receiver):
    m = Metrics()
    sink = _sink(receiver, m, rate=20.0, burst=1.0)
    for i in range(5):
        sink.submit(sample(pid=i))
    sink.close(deadline=5.0)
    assert _n(m, "nodewarden_alerts_sent_total", sink="webhook") == 5
    assert len(receiver.posts) == 5


def test_the_url_and_key_are_never_logged(receiver, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    url_file = tmp_path / "url"
    url_file.write_text(receiver.url + "\n")
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY)
    receiver.script = [(500, {}, 0.0), (429, {"Retry-After": "0"}, 0.0), (302, {}, 0.0)]
    m = Metrics()
    sink = WebhookConfig(url_file=str(url_file), hmac_key_file=str(key_file)).open_sink(m)
    assert sink is not None
    sink.backoff = 0.05
    sink.submit(sample())
    _dropped(m, "rejected")
    sink.submit(sample(rule="second"))
    receiver.wait_for(1)
    sink.close(5)
    assert len(receiver.posts) == 1, "the redirect was not followed"
    for secret in ("TOKEN-SECRET-42", "127.0.0.1", KEY.decode()):
        assert secret not in caplog.text and secret not in repr(sink)


def test_the_webhook_section_of_the_config_opens_the_sink(tmp_path: Path):
    url_file = tmp_path / "url"
    url_file.write_text("https://siem.example/hook\n")
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(f"webhook:\n  url_file: {url_file}\n  min_severity: high\n"
                        f"  rate_per_second: 2\n")
    cfg = load_config(str(cfg_file))
    assert cfg.webhook.min_severity == "high" and cfg.webhook.rate_per_second == 2.0
    sink = cfg.webhook.open_sink(Metrics())
    assert isinstance(sink, WebhookSink) and sink.min_severity == "high"
    sink.close(0.1)
    assert WebhookConfig().open_sink(Metrics()) is None, "off without url_file"
    url_file.write_text("ftp://nope\n")
    with pytest.raises(ConfigError, match="http:// or https://"):
        cfg.webhook.open_sink(Metrics())
    with pytest.raises(ConfigError, match="cannot read it"):
        WebhookConfig(url_file=str(tmp_path / "missing")).open_sink(Metrics())
