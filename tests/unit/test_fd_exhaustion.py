"""Out of file descriptors (issue 13, defect 2): EMFILE/ENFILE anywhere is counted and
survived, never fatal, and never read as "this process has no command line"."""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import pipeline
from agent.actions import kill as kill_mod
from agent.actions.kill import Enforcer
from agent.config import Config
from agent.decide import Decision, Protection
from agent.engine import loader
from agent.engine.ruleset import Match
from agent.errors import FdExhausted
from agent.metrics import Metrics
from agent.model import Event
from agent.pipeline import Agent, Judge
from agent.reload import Reloader
from agent.sources.procfs import ProcFS
from agent.sources.proctree import ProcessTree

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "proc"
REPO = Path(__file__).resolve().parents[2]
EMFILE = OSError(errno.EMFILE, os.strerror(errno.EMFILE))


def _sample(m: Metrics, name: str, where: str) -> float:
    return m.registry.get_sample_value(name, {"where": where}) or 0.0


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    dst = tmp_path / "proc"
    shutil.copytree(FIXTURE, dst, symlinks=True)
    return dst


@pytest.fixture
def no_files_named(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """Names whose os.open fails with EMFILE, as when the agent's descriptors are gone."""
    names: set[str] = set()
    real = os.open

    def fake(path, flags, mode=0o777, *, dir_fd=None):
        if os.path.basename(os.fsdecode(path)) in names:  # procfs opens by bytes names
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", fake)
    yield names


# -- procfs: a read that ran out of descriptors is not an empty process -------------------

def test_a_cmdline_that_cannot_be_opened_is_not_an_empty_cmdline(proc, no_files_named) -> None:
    no_files_named.add("cmdline")
    with pytest.raises(FdExhausted):
        ProcFS(str(proc)).read(1400)  # xmrig: judged on an empty argv, it would be missed


def test_an_environ_that_cannot_be_opened_is_not_a_missing_marker(proc, no_files_named) -> None:
    no_files_named.add("environ")
    with pytest.raises(FdExhausted):
        ProcFS(str(proc)).environ_marker(1302, ["WORKSPACE_ID"])


def test_a_pid_directory_that_cannot_be_opened_raises_fd_exhausted(proc, no_files_named) -> None:
    no_files_named.add("1400")
    with pytest.raises(FdExhausted):
        ProcFS(str(proc)).read(1400)


def test_a_scan_out_of_descriptors_keeps_the_tree_it_had(proc, no_files_named) -> None:
    tree = ProcessTree(ProcFS(str(proc)))
    tree.scan()
    before = dict(tree.procs)
    no_files_named.add("cmdline")
    with pytest.raises(FdExhausted):
        tree.scan()
    assert tree.procs == before and tree.workspace_of(1400) == "ws-fixture"


# -- the agent's loop: a scan that fails is counted and tried again ------------------------

def test_the_loop_survives_scans_out_of_descriptors_and_retries(
        proc, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(pipeline, "RETRY_GAP", 0.05)
    metrics = Metrics()
    tree = ProcessTree(ProcFS(str(proc)))
    failures = [EMFILE, EMFILE, OSError(errno.EIO, "I/O error")]
    real_steps = tree.scan_steps

    def scan_steps(chunk=0):
        # the startup pass runs in one go, the later ones in steps: both fail alike
        if failures:
            error = failures.pop(0)

            def failing():
                raise error
                yield

            return failing()
        return real_steps(chunk)

    monkeypatch.setattr(tree, "scan_steps", scan_steps)
    reported: list = []
    judge = Judge(loader.load([loader.bundled_rules_dir()]), metrics=metrics)
    agent = Agent(tree, judge, reported.extend, metrics, scan_interval=60.0)
    stop = threading.Event()
    caplog.set_level(logging.INFO, logger="nodewarden")
    runner = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    runner.start()
    deadline = time.monotonic() + 5
    while not reported and runner.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    runner.join(5)
    assert any(d.match.event.process.pid == 1400 for d in reported), "no scan after the errors"
    assert _sample(metrics, "nodewarden_fd_exhausted_total", "scan") == 2
    assert _sample(metrics, "nodewarden_errors_total", "scan") == 1
    assert agent.ready
    logged = [r.getMessage() for r in caplog.records if r.name == "nodewarden"]
    # one line for the burst of three failures, one when scans work again
    assert sum("scan" in m and "retrying" in m for m in logged) == 1, logged
    assert any("scan works again after 3" in m for m in logged), logged


# -- reloads -------------------------------------------------------------------------------

RULE = "rules:\n  - id: {rid}\n    severity: high\n    match: {{proc.exe_name: {rid}}}\n"


@pytest.fixture
def reloader(tmp_path: Path) -> tuple[Reloader, list, Metrics, Path]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.yaml").write_text(RULE.format(rid="first"))
    applied: list = []
    metrics = Metrics()
    r = Reloader(None, Config(), [str(rules)], apply_rules=applied.append,
                 apply_config=lambda cfg: None, metrics=metrics, every=0.0)
    return r, applied, metrics, rules


def _edit(rules: Path, rid: str) -> None:
    f = rules / "a.yaml"
    f.write_text(RULE.format(rid=rid))
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _compiled(r: Reloader) -> None:
    """Waits for a rule compile the reloader started in its thread, if any."""
    if r._compiling is not None:
        r._compiling[0].join(10)


def _tick_until_applied(r: Reloader, applied: list, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not applied and time.monotonic() < deadline:
        r.tick()
        _compiled(r)
    r.tick()


def test_a_rule_directory_that_cannot_be_listed_is_retried(
        reloader, monkeypatch: pytest.MonkeyPatch) -> None:
    r, applied, metrics, rules = reloader
    _edit(rules, "second")

    def no_fds(self):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    with monkeypatch.context() as m:
        m.setattr(pathlib.Path, "iterdir", no_fds)
        r.tick()  # must not raise
        r.tick()
    assert applied == []
    assert _sample(metrics, "nodewarden_fd_exhausted_total", "reload") == 2
    _tick_until_applied(r, applied)
    assert [rs.rules[0].id for rs in applied] == ["second"]


def test_a_rule_file_that_cannot_be_opened_is_not_a_refused_reload(
        reloader, monkeypatch: pytest.MonkeyPatch) -> None:
    r, applied, metrics, rules = reloader
    _edit(rules, "second")

    def no_fds(self, *a, **kw):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    with monkeypatch.context() as m:
        m.setattr(pathlib.Path, "open", no_fds)
        r.tick()
        _compiled(r)  # the compile runs in a thread: it must meet the starved read
        r.tick()
    assert applied == []
    assert _sample(metrics, "nodewarden_fd_exhausted_total", "reload") == 1
    assert metrics.registry.get_sample_value("nodewarden_reload_failures_total",
                                             {"what": "rules"}) is None
    # the files did not change since: the load is tried again all the same
    _tick_until_applied(r, applied)
    assert [rs.rules[0].id for rs in applied] == ["second"]


# -- kills ---------------------------------------------------------------------------------

@pytest.fixture
def workspace() -> Iterator[list[subprocess.Popen]]:
    """Three processes of workspace ws-fd (each a root of it: its own environ says so)."""
    env = {"WORKSPACE_ID": "ws-fd", "PATH": "/bin:/usr/bin"}
    procs = [subprocess.Popen(["sleep", "30"], env=env) for _ in range(3)]
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def test_a_workspace_kill_out_of_descriptors_kills_what_it_stopped(
        workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    signals: dict[int, list[int]] = {}

    def send(fd: int, sig: int) -> None:  # records, signals nothing
        signals.setdefault(fd, []).append(sig)

    opened = []
    real = os.pidfd_open

    def pidfd_open(pid: int, flags: int = 0) -> int:
        if len(opened) == 2:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        opened.append(pid)
        return real(pid, flags)

    monkeypatch.setattr(kill_mod.os, "pidfd_open", pidfd_open)
    metrics = Metrics()
    procfs = ProcFS()
    enforcer = Enforcer(procfs, ProcessTree(procfs), Protection(), send=send, metrics=metrics)
    res = enforcer.kill_workspace("ws-fd")
    assert res.outcome == "failed"
    assert "out of file descriptors" in res.detail and "2 processes" in res.detail
    # the two it stopped are killed, not left stopped
    assert sorted(signals.values()) == [[signal.SIGSTOP, signal.SIGKILL]] * 2
    assert _sample(metrics, "nodewarden_fd_exhausted_total", "kill") == 1


def test_a_kill_out_of_descriptors_fails_with_that_reason(
        workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    def pidfd_open(pid: int, flags: int = 0) -> int:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(kill_mod.os, "pidfd_open", pidfd_open)
    metrics = Metrics()
    procfs = ProcFS()
    enforcer = Enforcer(procfs, ProcessTree(procfs), Protection(), send=lambda fd, sig: None,
                        metrics=metrics)
    p = procfs.read(workspace[0].pid)
    rule = next(r for r in loader.load([loader.bundled_rules_dir()]).rules
                if r.id == "crypto-miner-exec")
    d = Decision(Match(rule, Event("exec", 0.0, p), "m"), "enforce", "kill", "")
    done = enforcer.carry_out(d)
    assert done.outcome == "failed" and "out of file descriptors" in done.reason
    assert _sample(metrics, "nodewarden_fd_exhausted_total", "kill") == 1


# -- RLIMIT_NOFILE -------------------------------------------------------------------------

def test_the_agent_raises_its_soft_nofile_limit_to_the_hard_one(tmp_path: Path) -> None:
    def low_soft() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 4096))

    res = subprocess.run([sys.executable, "-m", "agent", "-v", "run", "--once", "--no-bpf",
                          "--listen", "off", "--format", "json"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False,
                         preexec_fn=low_soft,
                         env={**os.environ, "KUBERNETES_SERVICE_HOST": ""})
    assert res.returncode == 0, res.stderr
    assert "RLIMIT_NOFILE: soft 4096, hard 4096" in res.stderr
