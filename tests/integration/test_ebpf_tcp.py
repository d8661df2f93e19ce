"""The TCP sensor sends only the record kinds a loaded rule (or a recording) uses: with real
eBPF, rules `on: accept` / `on: close` still see every accept and close, the shipped rules
(connects only) get no accept or close records at all, and the port-scan window rule still
fires on a scan.

Each test runs `nodewarden run` as a subprocess WITHOUT --record (a recording wants every
kind) and reads its findings and /metrics.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.agentproc import RunningAgent

pytestmark = [pytest.mark.ebpf, pytest.mark.integration]


def _agent(tmp: Path, *args: str) -> RunningAgent:
    agent = RunningAgent(tmp, "", ["--interval", "3600", *args])
    assert any("ready: eBPF sensors" in line for line in agent.stderr), agent.stderr
    return agent


def _stop(agent: RunningAgent) -> None:
    assert agent.stop() == 0, "".join(agent.stderr)
    assert "Traceback" not in "".join(agent.stderr)


def _settled(agent: RunningAgent, name: str, quiet: float = 1.0, limit: float = 30) -> float:
    """The value of a counter once it stopped moving for `quiet` seconds: records queued
    before the rules were applied (every kind is sent until then) and the connections open
    at start are judged first, and other processes on the machine connect too."""
    deadline = time.monotonic() + limit
    value, since = agent.metric(name), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, f"{name} never settled"
        time.sleep(0.1)
        now = agent.metric(name)
        if now != value:
            value, since = now, time.monotonic()
    return value


def _connection(lport: int, listener: socket.socket) -> int:
    """One connection from another process to `listener`, accepted and closed by both
    sides; returns the client's pid."""
    client = subprocess.Popen([sys.executable, "-c", f"""
import socket
c = socket.create_connection(("127.0.0.1", {lport}))
c.recv(1)
c.close()
"""])
    conn, _ = listener.accept()
    conn.close()
    client.wait(timeout=10)
    return client.pid


def test_rules_on_accept_and_close_see_them_without_a_recording(ebpf, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    lport = listener.getsockname()[1]
    rules = tmp_path / "tcp.yaml"
    rules.write_text(f"""rules:
  - id: saw-accept
    on: [accept]
    match: {{conn.dport: {{in: [{lport}]}}}}
  - id: saw-close
    on: [close]
    match: {{conn.dport: {{in: [{lport}]}}, conn.direction: inbound}}
""")
    agent = _agent(tmp_path, "--rules", str(rules))
    try:
        assert agent.wait_log("TCP records not sent (no loaded rule uses them): connect") >= 0
        connects = _settled(agent, 'nodewarden_events_total{source="connect"}')
        _connection(lport, listener)
        acc = agent.finding(lambda f: f["rule"] == "saw-accept")
        assert acc["process"]["pid"] == os.getpid()
        assert acc["connection"]["direction"] == "inbound"
        # the close of the accepted socket runs in softirq: attributed through its accept
        closed = agent.finding(lambda f: f["rule"] == "saw-close")
        assert closed["process"]["pid"] == os.getpid()
        assert agent.metric('nodewarden_events_total{source="connect"}') == connects
    finally:
        listener.close()
        _stop(agent)


def test_the_shipped_rules_get_connects_and_no_accept_or_close(ebpf, tmp_path):
    agent = _agent(tmp_path)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        agent.wait_log("TCP records not sent (no loaded rule uses them): accept, close")
        accepts = _settled(agent, 'nodewarden_events_total{source="accept"}')
        closes = _settled(agent, 'nodewarden_events_total{source="close"}')
        before = agent.metric('nodewarden_events_total{source="connect"}')
        for _ in range(3):
            _connection(listener.getsockname()[1], listener)
        deadline = time.monotonic() + 5
        while agent.metric('nodewarden_events_total{source="connect"}') < before + 3:
            assert time.monotonic() < deadline, "connects not judged"
            time.sleep(0.05)
        assert agent.metric('nodewarden_events_total{source="accept"}') == accepts
        assert agent.metric('nodewarden_events_total{source="close"}') == closes
    finally:
        listener.close()
        _stop(agent)


def test_a_port_scan_is_found_with_only_connects_sent(ebpf, tmp_path):
    """The window rule (more than 50 distinct ports in 10 s) on refused connects to a
    non-loopback address that exists only in a network namespace of this test."""
    if shutil.which("ip") is None:
        pytest.fail("iproute2 (ip) is missing: scripts/setup.sh installs it")
    name = f"nw-scan-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    agent = None
    try:
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "addr", "add", "10.99.0.1/32", "dev", "lo"]):
            subprocess.run(["ip", "netns", "exec", name, *cmd], check=True, timeout=30)
        agent = _agent(tmp_path)
        scan = """
import socket
for port in range(20000, 20060):
    s = socket.socket()
    try:
        s.connect(("10.99.0.1", port))
    except OSError:
        pass
    s.close()
"""
        scanner = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-c", scan])
        f = agent.finding(lambda f: f["rule"].startswith("port-scan-"))
        assert f["connection"]["dst"] == "10.99.0.1"
        assert 20000 <= f["connection"]["dport"] < 20060
        assert scanner.wait(timeout=30) == 0
    finally:
        if agent is not None:
            _stop(agent)
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)
