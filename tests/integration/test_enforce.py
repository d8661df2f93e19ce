"""Kills with real processes: through a pidfd after a start-time check, never the wrong
process, never a protected one; workspaces stopped before they are killed; audit mode
touches nothing and enforce mode kills."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.actions.kill import Enforcer
from agent.decide import Protection
from agent.sources.procfs import ProcFS
from agent.sources.proctree import ProcessTree

pytestmark = pytest.mark.integration


def _alive(proc: subprocess.Popen) -> bool:
    return proc.poll() is None


def _wait_dead(proc: subprocess.Popen, timeout: float = 5) -> bool:
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture
def enforcer() -> Enforcer:
    fs = ProcFS()
    return Enforcer(fs, ProcessTree(fs), Protection.of([ProcFS().read(os.getpid())]))


def test_kill_checks_start_time_then_signals_through_a_pidfd(enforcer):
    victim = subprocess.Popen(["sleep", "60"])
    try:
        start = ProcFS().stat(victim.pid).starttime
        # a start time that is not this process's: the pid "was reused"; nothing is hit
        assert enforcer.kill(victim.pid, start + 1).outcome == "gone"
        time.sleep(0.1)
        assert _alive(victim)
        assert enforcer.kill(victim.pid, start).outcome == "killed"
        assert _wait_dead(victim) and victim.returncode == -signal.SIGKILL
    finally:
        victim.kill()
        victim.wait()


def test_kill_of_a_process_that_already_exited_is_gone(enforcer):
    victim = subprocess.Popen(["true"])
    start = ProcFS().stat(victim.pid).starttime if _alive(victim) else 0
    victim.wait()
    assert enforcer.kill(victim.pid, start).outcome == "gone"


def test_signals_go_through_the_injected_sender(tmp_path):
    sent: list[tuple[int, int]] = []
    fs = ProcFS()
    e = Enforcer(fs, ProcessTree(fs), Protection(), send=lambda fd, sig: sent.append((fd, sig)))
    victim = subprocess.Popen(["sleep", "60"])
    try:
        assert e.kill(victim.pid, fs.stat(victim.pid).starttime).outcome == "killed"
        assert [sig for _, sig in sent] == [signal.SIGKILL]
        assert _alive(victim)  # the fake sender signalled nothing
    finally:
        victim.kill()
        victim.wait()


def test_kill_workspace_stops_a_forking_subtree_and_leaves_the_rest(enforcer):
    env = dict(os.environ, WORKSPACE_ID="ws-kill-me")
    # a workspace that keeps forking: children must not escape during the kill
    root = subprocess.Popen(["sh", "-c", "while :; do sleep 60 & sleep 0.005; done"], env=env,
                            start_new_session=True)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        time.sleep(0.3)
        res = enforcer.kill_workspace("ws-kill-me")
        assert res.outcome == "killed", res
        assert _wait_dead(root)
        time.sleep(0.2)
        tree = ProcessTree(ProcFS())
        tree.scan()
        survivors = [p.pid for p in tree.procs.values() if tree.workspace_of(p.pid) == "ws-kill-me"]
        # zombies awaiting their reaper are dead already; anything else escaped
        alive = [pid for pid in survivors if ProcFS().stat(pid).state != "Z"]
        assert alive == []
        assert _alive(bystander)
    finally:
        os.killpg(root.pid, signal.SIGKILL) if _alive(root) else None
        root.wait()
        bystander.kill()
        bystander.wait()


NODEWARDEN = [sys.executable, "-m", "agent"]


def _run_agent(tmp_path: Path, config: str, victim_name: str = "xmrig",
               ) -> tuple[subprocess.Popen, dict, str]:
    """Start `nodewarden run` with `config`, exec a miner-named sleep, return it, its finding
    and the agent's stderr."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config)
    exe = tmp_path / victim_name
    shutil.copy("/bin/sleep", exe)
    agent = subprocess.Popen([*NODEWARDEN, "run", "--config", str(cfg), "--listen", "off",
                              "--format", "json", "--interval", "0.2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen([str(exe), "30"])
    finding: dict = {}
    try:
        assert agent.stdout is not None
        deadline = time.monotonic() + 30
        for line in agent.stdout:
            f = json.loads(line)
            if f["process"]["pid"] == victim.pid:
                finding = f
                break
            assert time.monotonic() < deadline
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30)
    assert agent.returncode == 0, err
    return victim, finding, err


def test_audit_mode_reports_would_kill_and_the_miner_survives(tmp_path):
    victim, f, _ = _run_agent(tmp_path, "mode: audit\n")
    try:
        assert f["outcome"] == "would_kill" and f["mode"] == "audit"
        time.sleep(0.2)
        assert _alive(victim)
    finally:
        victim.kill()
        victim.wait()


def test_enforce_mode_kills_the_same_miner(tmp_path):
    victim, f, _ = _run_agent(tmp_path, "mode: enforce\n")
    try:
        assert f["outcome"] == "killed" and f["mode"] == "enforce", f
        assert _wait_dead(victim) and victim.returncode == -signal.SIGKILL
    finally:
        victim.kill()
        victim.wait()


def test_per_rule_audit_mode_wins_over_global_enforce(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    for f in Path(__file__).resolve().parents[2].joinpath("rules").glob("*.yaml"):
        shutil.copy(f, rules)
    (rules / "zz-local.yaml").write_text("overrides:\n  - {id: crypto-miner-exec, mode: audit}\n")
    victim, f, _ = _run_agent(tmp_path, f"mode: enforce\nrules: [{rules}]\n")
    try:
        assert f["outcome"] == "would_kill" and f["mode"] == "audit"
        assert _alive(victim)
    finally:
        victim.kill()
        victim.wait()


def test_protected_name_is_never_killed_and_said_loudly(tmp_path):
    victim, f, err = _run_agent(tmp_path, "mode: enforce\nprotected: [xmrig]\n")
    try:
        assert f["outcome"] == "protected"
        assert "PROTECTED: rule crypto-miner-exec wanted to kill pid" in err
        time.sleep(0.2)
        assert _alive(victim)
    finally:
        victim.kill()
        victim.wait()


def _cgroup_dir(base: str, cid: str) -> Path:
    root = Path(base)
    if os.geteuid() != 0 or not (root / "cgroup.procs").exists():
        pytest.skip(f"needs root and a cgroup hierarchy at {base}")
    d = root / f"nodewarden-test-{os.getpid()}" / f"docker-{cid}.scope"
    d.mkdir(parents=True)
    return d


def _in_cgroup(d: Path, n: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(n)]
    for p in procs:
        (d / "cgroup.procs").write_text(str(p.pid))
    return procs


def _cleanup(d: Path, procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
        p.wait()
    for _ in range(50):
        try:
            d.rmdir()
            d.parent.rmdir()
            return
        except OSError:
            time.sleep(0.05)


@pytest.mark.parametrize("base,how", [("/sys/fs/cgroup/unified", "cgroup.kill"),
                                      ("/sys/fs/cgroup/pids", "processes of")])
def test_kill_container_kills_every_process_of_its_cgroup(enforcer, base, how):
    from agent.model import Event

    cid = f"{os.getpid():08x}" * 8
    d = _cgroup_dir(base, cid)
    procs = _in_cgroup(d, 3)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        p = ProcFS().read(procs[0].pid)
        assert p.container_id == cid
        res = enforcer.kill_container(Event("exec", 0.0, p))
        assert res.outcome == "killed" and how in res.detail, res
        assert all(_wait_dead(x) for x in procs)
        assert _alive(bystander)
    finally:
        bystander.kill()
        bystander.wait()
        _cleanup(d, procs)
