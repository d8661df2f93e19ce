"""The file sensor with real eBPF: a real `nodewarden run` whose rules watch files under a
temporary directory. A child Python process reads, writes and removes files there without
exec'ing any tool; watched ones give findings with the file's path and op, relative paths
are resolved against the caller's cwd, unwatched ones never reach userspace (the agent's
events_total{source="file"} does not move), and a reload changes what the kernel watches.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.agentproc import RunningAgent

pytestmark = [pytest.mark.ebpf, pytest.mark.integration]

FILE_EVENTS = 'nodewarden_events_total{source="file"}'


def _rules(root: Path, secret: str = "secret") -> str:
    return f"""rules:
  - id: t-secret-read
    severity: high
    match:
      file.path: {{in: [{root}/{secret}]}}
      file.op: read
  - id: t-cron-write
    severity: high
    match:
      any:
        - file.path: {{prefix: {root}/cron.d/}}
        - file.dest: {{prefix: {root}/cron.d/}}
      file.op: {{in: [write, create, truncate, rename]}}
  - id: t-log-unlink
    match:
      file.name: {{in: [app.log]}}
      file.op: unlink
"""


def _tree(tmp: Path) -> Path:
    root = tmp / "etc"
    (root / "cron.d").mkdir(parents=True)
    (root / "log").mkdir()
    for name in ("secret", "other", "log/app.log", "log/keep.log", "cron.d/existing"):
        (root / name).write_text("x\n")
    return root


def _run(code: str, cwd: Path | None = None) -> int:
    """Run `code` in a child Python; returns the child's pid."""
    p = subprocess.Popen([sys.executable, "-c", code], cwd=cwd)
    assert p.wait(timeout=30) == 0
    return p.pid


def _settled(agent: RunningAgent, quiet: float = 1.0, limit: float = 20) -> float:
    deadline = time.monotonic() + limit
    value, since = agent.metric(FILE_EVENTS), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "file events never settled"
        time.sleep(0.1)
        now = agent.metric(FILE_EVENTS)
        if now != value:
            value, since = now, time.monotonic()
    return value


def _agent(tmp: Path, rules: Path) -> RunningAgent:
    agent = RunningAgent(tmp, "", ["--interval", "3600", "--rules", str(rules)])
    agent.expect_sensors("file")
    return agent


def _stop(agent: RunningAgent) -> None:
    assert agent.stop() == 0, "".join(agent.stderr)
    assert "Traceback" not in "".join(agent.stderr)


def test_watched_files_give_findings_and_unwatched_ones_never_reach_userspace(ebpf, tmp_path):
    root = _tree(tmp_path)
    rules = tmp_path / "rules.yaml"
    rules.write_text(_rules(root))
    agent = _agent(tmp_path, rules)
    try:
        # a read without exec: Python opens the file itself
        pid = _run(f"open({str(root / 'secret')!r}).read()")
        f = agent.finding(lambda f: f["rule"] == "t-secret-read")
        assert f["file"]["path"] == str(root / "secret")
        assert f["file"]["op"] == "read"
        assert f["process"]["pid"] == pid

        # a new cron-like file under the watched prefix
        pid = _run(f"open({str(root / 'cron.d' / 'job')!r}, 'w').write('* * * * * x\\n')")
        f = agent.finding(lambda f: f["rule"] == "t-cron-write")
        assert (f["file"]["path"], f["file"]["op"]) == (str(root / "cron.d" / "job"), "create")
        assert f["process"]["pid"] == pid

        # moved into the watched directory from outside it
        (root / "staged").write_text("x\n")
        _run(f"import os; os.rename({str(root / 'staged')!r}, "
             f"{str(root / 'cron.d' / 'moved')!r})")
        f = agent.finding(lambda f: f["rule"] == "t-cron-write" and f["file"]["op"] == "rename")
        assert f["file"]["dest"] == str(root / "cron.d" / "moved")

        # a watched name removed
        pid = _run(f"import os; os.unlink({str(root / 'log' / 'app.log')!r})")
        f = agent.finding(lambda f: f["rule"] == "t-log-unlink")
        assert f["file"]["path"] == str(root / "log" / "app.log")
        assert f["process"]["pid"] == pid

        # relative paths: after chdir to the directory above, and inside the watched one
        _run("open('secret').read()", cwd=root)
        f = agent.finding(lambda f: f["rule"] == "t-secret-read")
        assert f["file"]["path"] == str(root / "secret")
        _run("import os; os.chdir('cron.d'); open('relative-job', 'w').write('x')", cwd=root)
        f = agent.finding(lambda f: f["rule"] == "t-cron-write"
                          and f["file"]["path"].endswith("relative-job"))
        assert f["file"]["path"] == str(root / "cron.d" / "relative-job")

        # another spelling of a watched path
        _run(f"open({str(root) + '/.//secret'!r}).read()")
        f = agent.finding(lambda f: f["rule"] == "t-secret-read")
        assert f["file"]["path"] == str(root / "secret")

        # unwatched: other files (one with a watched file's name), and ops no rule wants of
        # watched ones (cron.d read)
        (root / "log" / "secret").write_text("x\n")
        before = _settled(agent)
        _run(f"""
import os
for _ in range(200):
    open({str(root / 'other')!r}).read()
    open({str(root / 'cron.d' / 'existing')!r}).read()
    open({str(root / 'secret')!r}, 'a').close()
    open({str(root / 'log' / 'secret')!r}).read()
open({str(root / 'log' / 'keep.log')!r}, 'w').close()
os.unlink({str(root / 'log' / 'keep.log')!r})
""")
        # a listing (O_DIRECTORY) of a directory spelled like a watched file, relative to
        # the caller's cwd: `secret` is a relative form of the watched {root}/secret, but a
        # listing reads no file
        (tmp_path / "elsewhere" / "secret").mkdir(parents=True)
        _run("import os\nfor _ in range(50): os.listdir('secret')", cwd=tmp_path / "elsewhere")
        assert _settled(agent) == before
    finally:
        _stop(agent)


def test_a_reload_changes_what_the_kernel_watches(ebpf, tmp_path):
    root = _tree(tmp_path)
    rules = tmp_path / "rules.yaml"
    rules.write_text(_rules(root))
    agent = _agent(tmp_path, rules)
    try:
        _run(f"open({str(root / 'secret')!r}).read()")
        agent.finding(lambda f: f["rule"] == "t-secret-read")
        rules.write_text(_rules(root, secret="other"))
        agent.proc.send_signal(signal.SIGHUP)
        agent.wait_log("rules reloaded")
        before = _settled(agent)
        _run(f"open({str(root / 'secret')!r}).read()")
        assert _settled(agent) == before, "the old watch is still in the kernel"
        _run(f"open({str(root / 'other')!r}).read()")
        f = agent.finding(lambda f: f["rule"] == "t-secret-read")
        assert f["file"]["path"] == str(root / "other")
    finally:
        _stop(agent)
        assert os.path.exists(root / "secret")
