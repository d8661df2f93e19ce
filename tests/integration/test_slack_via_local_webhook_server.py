"""The Slack sink against a local HTTP server speaking Slack's incoming-webhook protocol
(200 "ok", 429 + Retry-After, 500, slow answers, refused connections), driven through the
real slack-sdk client. No Slack is reachable from here; this server stands in for it."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from scripted_http import ScriptedHTTP

from agent.metrics import Metrics
from agent.model import Connection, Pod
from agent.sinks.findings import Finding
from agent.sinks.ratelimit import TokenBucket
from agent.sinks.slack import SlackSink, message
from tests.unit.sample_finding import sample

pytestmark = pytest.mark.integration


class FakeSlack(ScriptedHTTP):
    """Slack's incoming webhook: "ok" on 200, Slack's error texts otherwise."""

    def __init__(self) -> None:
        super().__init__("/services/T000/B000/XXXXSECRET",
                         {200: b"ok", 429: b"rate_limited", 500: b"internal_error"})

    @property
    def received(self) -> list[dict]:
        return [json.loads(p.body) for p in self.posts]

    @property
    def times(self) -> list[float]:
        return [p.at for p in self.posts]


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    s = FakeSlack()
    yield s
    s.stop()


def finding(rule: str = "crypto-miner-exec", severity: str = "critical", ws: str = "ws-1",
            exe: str = "/tmp/xmrig", pid: int = 4242) -> Finding:
    return sample(rule, severity, ws, exe, pid)


def _sink(slack: FakeSlack, metrics: Metrics, **kw) -> SlackSink:
    opts = {"rate": 50.0, "burst": 50.0, "backoff": 0.05, "min_severity": "high", **kw}
    return SlackSink(slack.url, metrics, **opts)


def _metric(m: Metrics, name: str, **labels: str) -> float:
    v = m.registry.get_sample_value(name, labels)
    return v or 0.0


def test_block_kit_message_posted_through_slack_sdk(slack):
    m = Metrics()
    sink = _sink(slack, m)
    sink.submit(finding())
    slack.wait_for(1)
    sink.close()
    msg = slack.received[0]
    att = msg["attachments"][0]
    assert att["color"] == "#E01E5A"  # critical
    text = json.dumps(att["blocks"])
    for part in ("crypto-miner-exec", "killed", "node-1", "workspace `ws-1`", "pid 4242"):
        assert part in text
    assert _metric(m, "nodewarden_alerts_sent_total", sink="slack") == 1


def test_duplicates_are_suppressed_then_summarised(slack):
    m = Metrics()
    sink = _sink(slack, m, dedupe_seconds=0.5)
    for _ in range(5):
        sink.submit(finding())
    sink.submit(finding(ws="ws-2"))  # another workspace is another incident
    slack.wait_for(2)
    time.sleep(0.7)
    sink.submit(finding(severity="critical", rule="other"))  # flushes the expired window
    slack.wait_for(4)
    sink.close()
    texts = [r["text"] for r in slack.received]
    assert sum("suppressed" in t for t in texts) == 1
    assert any(t.startswith("4 more `crypto-miner-exec`") for t in texts)


def test_below_min_severity_is_not_sent(slack):
    m = Metrics()
    sink = _sink(slack, m, min_severity="high")
    sink.submit(finding(severity="medium"))
    sink.submit(finding(severity="high", rule="r2"))
    slack.wait_for(1)
    sink.close()
    assert len(slack.received) == 1 and "r2" in json.dumps(slack.received[0])


def test_429_retry_after_is_honoured(slack):
    m = Metrics()
    slack.script = [(429, {"Retry-After": "1"}, 0.0)]
    sink = _sink(slack, m)
    started = time.monotonic()
    sink.submit(finding())
    slack.wait_for(1)
    sink.close()
    assert slack.times[0] - started >= 1.0
    assert _metric(m, "nodewarden_alerts_sent_total", sink="slack") == 1


def test_500_is_retried_with_backoff(slack):
    m = Metrics()
    slack.script = [(500, {}, 0.0), (500, {}, 0.0)]
    sink = _sink(slack, m)
    sink.submit(finding())
    slack.wait_for(1)
    sink.close()
    assert _metric(m, "nodewarden_alerts_sent_total", sink="slack") == 1
    assert _metric(m, "nodewarden_alerts_dropped_total", sink="slack", reason="failed") == 0


def test_connection_refused_is_retried_then_counted_as_dropped():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens there
    m = Metrics()
    sink = SlackSink(f"http://127.0.0.1:{port}/services/x", m, rate=50, burst=50,
                     backoff=0.01, max_attempts=3)
    sink.submit(finding())
    deadline = time.monotonic() + 10
    while _metric(m, "nodewarden_alerts_dropped_total", sink="slack", reason="failed") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    sink.close()


def test_a_stalled_slack_never_blocks_submit_and_overflow_is_counted(slack):
    m = Metrics()
    slack.release.clear()  # the server accepts and then hangs
    sink = _sink(slack, m, queue_size=10, timeout=30)
    done = threading.Event()

    def flood() -> None:
        for i in range(500):
            sink.submit(finding(exe=f"/tmp/x{i}"))  # distinct incidents
        done.set()

    threading.Thread(target=flood, daemon=True).start()
    # every submit returns although no message can be delivered
    assert done.wait(10), "submit blocked on a stalled Slack"
    dropped = _metric(m, "nodewarden_alerts_dropped_total", sink="slack", reason="queue_full")
    assert dropped >= 500 - 10 - 1  # the queue, plus the one the worker holds
    slack.release.set()
    sink.close(deadline=10)
    sent = _metric(m, "nodewarden_alerts_sent_total", sink="slack")
    shutdown = _metric(m, "nodewarden_alerts_dropped_total", sink="slack", reason="shutdown")
    assert sent + dropped + shutdown == 500, "every alert is sent or counted as dropped"


def test_slow_slack_and_shutdown_deadline_count_what_is_left(slack):
    m = Metrics()
    slack.script = [(200, {}, 1.5)] * 5
    sink = _sink(slack, m, rate=100, burst=100)
    for i in range(5):
        sink.submit(finding(exe=f"/tmp/y{i}"))
    sink.close(deadline=1.0)
    sent = _metric(m, "nodewarden_alerts_sent_total", sink="slack")
    dropped = _metric(m, "nodewarden_alerts_dropped_total", sink="slack", reason="shutdown")
    assert sent < 5 and sent + dropped == 5


def test_the_webhook_url_is_never_logged(slack, caplog):
    caplog.set_level(logging.DEBUG)
    logging.getLogger("slack_sdk").setLevel(logging.DEBUG)
    m = Metrics()
    slack.script = [(500, {}, 0.0), (429, {"Retry-After": "0"}, 0.0)]
    sink = _sink(slack, m)
    sink.submit(finding())
    slack.wait_for(1)
    sink.close()
    assert "XXXXSECRET" not in caplog.text
    assert "127.0.0.1" not in caplog.text


def test_token_bucket_paces_to_the_rate():
    now = [0.0]
    b = TokenBucket(rate=1.0, burst=2.0, clock=lambda: now[0])
    assert b.take() == 0 and b.take() == 0
    assert b.take() == pytest.approx(1.0)
    now[0] = 1.0
    assert b.take() == 0


def test_message_for_a_connection_and_a_pod():
    f = sample(pod=Pod("team-a", "ws-123", "u"),
               connection=Connection("10.0.0.5", 5, "1.2.3.4", 3333, netns=1))
    text = json.dumps(message(f))
    assert "pod `team-a/ws-123`" in text and "10.0.0.5:5 -> 1.2.3.4:3333" in text


def test_running_agent_posts_one_message_per_incident(slack, tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    exe = tmp_path / "xmrig"
    shutil.copy("/bin/sleep", exe)
    env = dict(os.environ, NODEWARDEN_SLACK_WEBHOOK_URL=slack.url)
    agent = subprocess.Popen([sys.executable, "-m", "agent", "-v", "run", "--listen", "off",
                              "--format", "json", "--interval", "0.2"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    miners = []
    lines: list[str] = []
    ready = threading.Event()

    def drain() -> None:  # -v logs a lot: a full pipe would stall the agent
        assert agent.stderr is not None
        for line in agent.stderr:
            lines.append(line)
            if "ready:" in line:
                ready.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert ready.wait(60), "".join(lines)
        # three execs of the same miner in the same place: one incident, one message
        miners = [subprocess.Popen([str(exe), "30"]) for _ in range(3)]
        slack.wait_for(1)
        time.sleep(1.0)
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        reader.join(timeout=10)
        err = "".join(lines)
        for m in miners:
            m.kill()
            m.wait()
    assert agent.returncode == 0
    mine = [r for r in slack.received if "crypto-miner-exec" in json.dumps(r)]
    assert len(mine) == 1
    assert "XXXXSECRET" not in err and slack.url not in err


def test_workload_text_cannot_inject_mentions_or_links_into_the_message():
    f = sample(comm="x<!channel>", cmdline=("sh", "-c", "echo <http://evil.example|click> & `id`"),
               message="miner <!here> started")
    text = json.dumps(message(f))
    for bad in ("<!channel>", "<!here>", "<http://evil.example|click>"):
        assert bad not in text
    assert "&lt;!channel&gt;" in text and "&amp;" in text
