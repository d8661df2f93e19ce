"""The one queued delivery under every sink (agent/sinks/base.py), and the fan-out that opens,
reconfigures and closes the sinks (agent/sinks/registry.py). The service here is a scripted
`deliver`; the HTTP edges are tested in tests/integration against local servers."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest

from agent.config import Config
from agent.metrics import Metrics
from agent.sinks.base import QueuedDelivery, Result, retry_after
from agent.sinks.registry import Sinks, sections
from agent.sinks.webhook import WebhookConfig, WebhookSink
from tests.unit.sample_finding import sample


class Scripted(QueuedDelivery[int]):
    """Answers each delivery with the next scripted Result (then done), after `hold` s."""

    def __init__(self, metrics: Metrics, script: list[Result] | None = None, hold: float = 0.0,
                 **kw: object) -> None:
        self.script = list(script or [])
        self.hold = hold
        self.tries: list[tuple[int, float]] = []
        self.timeouts: list[float] = []
        self.given_up: list[tuple[int, str]] = []
        opts: dict = {"rate": 1000.0, "burst": 1000.0, "queue_size": 100, "backoff": 0.05, **kw}
        super().__init__("test", metrics, **opts)

    def deliver(self, item: int, timeout: float) -> Result:
        self.tries.append((item, time.monotonic()))
        self.timeouts.append(timeout)
        time.sleep(self.hold)
        return self.script.pop(0) if self.script else Result.done()

    def gave_up(self, item: int, reason: str) -> None:
        self.given_up.append((item, reason))


def _n(m: Metrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


def _until(cond, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end
        time.sleep(0.01)


def test_delivered_items_are_counted_sent():
    m = Metrics()
    q = Scripted(m)
    for i in range(3):
        assert q.enqueue(i)
    q.close(2.0)
    assert [i for i, _ in q.tries] == [0, 1, 2]
    assert _n(m, "nodewarden_alerts_sent_total", sink="test") == 3


def test_retries_back_off_exponentially_then_give_up_as_failed():
    m = Metrics()
    q = Scripted(m, [Result.retry("HTTP 500")] * 3, max_attempts=3, backoff=0.1)
    q.enqueue(7)
    _until(lambda: q.given_up)
    q.close(1.0)
    times = [t for _, t in q.tries]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.1 and times[2] - times[1] >= 0.2
    assert q.given_up == [(7, "failed")]
    assert _n(m, "nodewarden_alerts_dropped_total", sink="test", reason="failed") == 1


def test_retry_after_pauses_the_whole_sink():
    m = Metrics()
    q = Scripted(m, [Result.retry("HTTP 429", retry_after=0.5)])
    q.enqueue(1)
    q.enqueue(2)
    _until(lambda: len(q.tries) == 3)
    q.close(1.0)
    (_, t0), (_, t1), (_, t2) = q.tries
    assert min(t1, t2) - t0 >= 0.5, "nothing was sent while the service said wait"


def test_a_drop_is_not_retried_and_counted_by_reason():
    m = Metrics()
    q = Scripted(m, [Result.drop("rejected")])
    q.enqueue(1)
    _until(lambda: q.given_up)
    q.close(1.0)
    assert len(q.tries) == 1
    assert _n(m, "nodewarden_alerts_dropped_total", sink="test", reason="rejected") == 1


def test_a_full_queue_refuses_at_once_and_counts():
    m = Metrics()
    q = Scripted(m, hold=0.5, queue_size=2)
    t0 = time.monotonic()
    results = [q.enqueue(i) for i in range(10)]
    assert time.monotonic() - t0 < 0.1, "enqueue never waits"
    assert results.count(False) >= 7
    assert _n(m, "nodewarden_alerts_dropped_total", sink="test", reason="queue_full") == \
        results.count(False)
    q.close(0.1)


@pytest.mark.parametrize("deadline", [0.0, 0.3, 1.0])
def test_close_never_blocks_longer_than_asked_and_counts_what_is_left(deadline):
    m = Metrics()
    q = Scripted(m, hold=0.4)
    for i in range(10):
        q.enqueue(i)
    t0 = time.monotonic()
    q.close(deadline)
    took = time.monotonic() - t0
    assert took < deadline + 0.15, f"close({deadline}) took {took:.2f}s"
    sent = _n(m, "nodewarden_alerts_sent_total", sink="test")
    shutdown = _n(m, "nodewarden_alerts_dropped_total", sink="test", reason="shutdown")
    time.sleep(0.5)                     # the abandoned delivery ends: counted once, by close
    assert _n(m, "nodewarden_alerts_sent_total", sink="test") == sent
    assert sent + shutdown == 10
    assert not q.enqueue(99), "closed: refused"


def test_at_close_request_timeouts_shrink_to_the_deadline():
    q = Scripted(Metrics(), hold=0.2)
    for i in range(3):
        q.enqueue(i)
    q.close(1.0)
    assert q.timeouts[0] == 10.0 or q.timeouts[0] <= 1.0
    assert all(t <= 1.0 for t in q.timeouts[1:])


def test_a_rate_limit_that_outlasts_the_deadline_ends_close_at_once():
    m = Metrics()
    q = Scripted(m, rate=0.1, burst=1.0)
    for i in range(3):
        q.enqueue(i)
    _until(lambda: len(q.tries) == 1)
    t0 = time.monotonic()
    q.close(2.0)
    assert time.monotonic() - t0 < 0.5, "a token 10s away is not waited for"
    assert _n(m, "nodewarden_alerts_dropped_total", sink="test", reason="shutdown") == 2


def test_a_deliver_that_raises_is_retried_not_fatal():
    class Buggy(Scripted):
        def deliver(self, item: int, timeout: float) -> Result:
            if not self.tries:
                self.tries.append((item, time.monotonic()))
                raise RuntimeError("bug")
            return super().deliver(item, timeout)

    m = Metrics()
    q = Buggy(m)
    q.enqueue(1)
    _until(lambda: _n(m, "nodewarden_alerts_sent_total", sink="test") == 1)
    q.close(1.0)


@pytest.mark.parametrize("headers,want", [
    ({"Retry-After": "3"}, 3.0), ({"retry-after": ["2.5"]}, 2.5), ({"Retry-After": "9999"}, 300.0),
    ({"Retry-After": "-1"}, 0.0), ({"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}, None),
    ({}, None), (None, None)])
def test_retry_after_header(headers, want):
    assert retry_after(headers) == want


# -- the fan-out --------------------------------------------------------------------------------

def _url_file(tmp_path: Path, url: str = "http://127.0.0.1:9/hook") -> str:
    p = tmp_path / "url"
    p.write_text(url)
    return str(p)


def test_sections_are_found_from_the_config_itself():
    assert [name for name, _ in sections(Config())] == ["webhook"]


def test_sinks_write_every_finding_and_open_only_configured_sinks(tmp_path):
    out, file = io.StringIO(), io.StringIO()
    cfg = Config()
    sinks = Sinks.open(cfg, Metrics(), out, "json", file, None)
    assert {n for n, s in sinks.slots.items() if s.sink is not None} == set()
    sinks.submit([sample(), sample(rule="r2")])
    assert out.getvalue() == file.getvalue() and out.getvalue().count("\n") == 2
    sinks.close(0.5)


def test_reconfigure_keeps_unchanged_sinks_and_reopens_changed_ones(tmp_path):
    cfg = Config(webhook=WebhookConfig(url_file=_url_file(tmp_path)))
    sinks = Sinks.open(cfg, Metrics(), io.StringIO(), "json", None, None)
    first = sinks.slots["webhook"].sink
    assert isinstance(first, WebhookSink)
    sinks.reconfigure(Config(webhook=WebhookConfig(url_file=cfg.webhook.url_file)))
    assert sinks.slots["webhook"].sink is first, "same settings: same sink, same queue"
    sinks.reconfigure(Config(webhook=WebhookConfig(url_file=cfg.webhook.url_file,
                                                   min_severity="critical")))
    second = sinks.slots["webhook"].sink
    assert second is not first and isinstance(second, WebhookSink)
    assert second.min_severity == "critical"
    _until(lambda: first.closing)
    sinks.reconfigure(Config())
    assert sinks.slots["webhook"].sink is None, "turned off"
    _until(lambda: second.closing)
    sinks.close(0.5)


def test_kubernetes_events_follow_the_config_while_the_sink_keeps_its_state():
    class Events:
        name = "kubernetes"

        def __init__(self) -> None:
            self.got: list = []

        def submit(self, finding) -> None:
            self.got.append(finding)

        def close(self, deadline: float) -> None:
            pass

    sinks = Sinks(Metrics(), [], None)
    events = Events()
    sinks._set("kubernetes", ("same",), lambda: events)
    sinks.events_on = True
    sinks.submit([sample()])
    sinks.reconfigure(Config(kubernetes_events=False))
    sinks.submit([sample()])
    assert len(events.got) == 1 and sinks.events_on is False


def test_close_closes_every_sink_at_once_within_the_deadline():
    slow = [Scripted(Metrics(), hold=1.0) for _ in range(3)]
    sinks = Sinks(Metrics(), [], None)
    for i, q in enumerate(slow):
        sinks._set(f"s{i}", i, lambda q=q: q)
        q.enqueue(1)
        q.enqueue(2)
    time.sleep(0.1)
    t0 = time.monotonic()
    sinks.close(0.5)
    assert time.monotonic() - t0 < 0.8, "three sinks closed together, not one after another"
    assert all(q.closing for q in slow)


def test_submit_never_waits_on_a_stalled_sink():
    release = threading.Event()

    class Stalled(Scripted):
        def deliver(self, item: int, timeout: float) -> Result:
            release.wait(5)
            return Result.done()

    q = Stalled(Metrics(), queue_size=5)
    sinks = Sinks(Metrics(), [], None)
    sinks._set("stalled", 0, lambda: q)

    class AsSink:
        name = "stalled"

        def submit(self, finding) -> None:
            q.enqueue(finding.process.pid)

        def close(self, deadline: float) -> None:
            q.close(deadline)

    sinks.slots["stalled"].sink = AsSink()
    t0 = time.monotonic()
    sinks.submit([sample(pid=i) for i in range(100)])
    assert time.monotonic() - t0 < 0.5
    release.set()
    sinks.close(1.0)


def test_a_reload_whose_sink_cannot_open_keeps_the_running_one(tmp_path, caplog):
    from agent.errors import ConfigError

    cfg = Config(webhook=WebhookConfig(url_file=_url_file(tmp_path)))
    sinks = Sinks.open(cfg, Metrics(), io.StringIO(), "json", None, None)
    running = sinks.slots["webhook"].sink
    missing = str(tmp_path / "missing")
    sinks.reconfigure(Config(webhook=WebhookConfig(url_file=missing)))
    assert sinks.slots["webhook"].sink is running and not running.closing
    assert "webhook not reopened" in caplog.text and "cannot read it" in caplog.text
    with pytest.raises(ConfigError, match="cannot read it"):
        Sinks.open(Config(webhook=WebhookConfig(url_file=missing)), Metrics(), io.StringIO(),
                   "json", None, None)
    sinks.close(0.5)
