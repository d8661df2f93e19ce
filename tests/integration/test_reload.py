"""Hot reload and the HTTP endpoints of a running agent: a broken rule set is refused and
the old one keeps judging; a ConfigMap-style symlink swap and SIGHUP reload; /healthz and
/readyz answer."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

RULE = """rules:
  - id: {rid}
    severity: high
    match: {{proc.exe_name: {name}}}
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except urllib.error.URLError:
        return 0, ""  # not listening yet


def _swap(configmap: Path, generation: int, text: str) -> None:
    """What the kubelet does on a ConfigMap update: a new timestamped dir, then an atomic
    rename of the `..data` symlink; the visible files are symlinks through `..data`."""
    gen = configmap / f"..gen{generation}"
    gen.mkdir()
    (gen / "rules.yaml").write_text(text)
    tmp = configmap / "..data_tmp"
    tmp.symlink_to(gen.name)
    os.replace(tmp, configmap / "..data")
    link = configmap / "rules.yaml"
    if not link.is_symlink():
        link.symlink_to("..data/rules.yaml")


def test_reload_refuses_broken_rules_keeps_old_ones_and_follows_configmap_swaps(tmp_path):
    configmap = tmp_path / "rules"
    configmap.mkdir()
    _swap(configmap, 1, RULE.format(rid="alpha-rule", name="alpha-tool"))
    port = _port()
    agent = subprocess.Popen([sys.executable, "-m", "agent", "run", "--rules", str(configmap),
                              "--listen", f"127.0.0.1:{port}", "--format", "json",
                              "--interval", "0.3"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    findings: queue.Queue[dict] = queue.Queue()
    errors: list[str] = []

    def read_out() -> None:
        assert agent.stdout is not None
        for line in agent.stdout:
            findings.put(json.loads(line))

    def read_err() -> None:
        assert agent.stderr is not None
        errors.extend(agent.stderr)

    threading.Thread(target=read_out, daemon=True).start()
    threading.Thread(target=read_err, daemon=True).start()
    procs: list[subprocess.Popen] = []

    def run_tool(name: str) -> int:
        exe = tmp_path / name
        shutil.copy("/bin/sleep", exe)
        procs.append(subprocess.Popen([str(exe), "30"]))
        return procs[-1].pid

    def finding_for(pid: int, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            f = findings.get(timeout=max(0.01, deadline - time.monotonic()))
            if f["process"]["pid"] == pid:
                return f

    def wait_log(text: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in errors):
            assert time.monotonic() < deadline, "".join(errors)
            time.sleep(0.05)

    try:
        deadline = time.monotonic() + 60
        while _get(f"http://127.0.0.1:{port}/readyz")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
        assert _get(f"http://127.0.0.1:{port}/nope")[0] == 404
        metrics = _get(f"http://127.0.0.1:{port}/metrics")[1]
        first_hash = next(line for line in metrics.splitlines()
                          if line.startswith("nodewarden_ruleset_info{"))

        # a broken update is refused; the old rules keep judging
        _swap(configmap, 2, "rules:\n  - id: alpha-rule\n    match: {proc.exe_nmae: alpha-tool}\n")
        wait_log("rule reload after a change of the rule files refused")
        assert any("unknown field 'proc.exe_nmae'" in line for line in errors)
        assert finding_for(run_tool("alpha-tool"))["rule"] == "alpha-rule"
        metrics = _get(f"http://127.0.0.1:{port}/metrics")[1]
        assert 'nodewarden_reload_failures_total{what="rules"} 1.0' in metrics
        assert first_hash in metrics

        # a good update through the same symlink swap is applied
        _swap(configmap, 3, RULE.format(rid="beta-rule", name="beta-tool"))
        wait_log("rules reloaded after a change of the rule files: 1 rules")
        assert finding_for(run_tool("beta-tool"))["rule"] == "beta-rule"
        assert first_hash not in _get(f"http://127.0.0.1:{port}/metrics")[1]

        # SIGHUP reloads on demand
        agent.send_signal(signal.SIGHUP)
        wait_log("rules reloaded after SIGHUP")
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
        for p in procs:
            p.kill()
            p.wait()
    assert agent.returncode == 0
    assert "Traceback" not in "".join(errors)
