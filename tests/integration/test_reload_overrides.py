"""What a reload must not undo (issue 9's regressions): a name added to `protected` by a
config reload reaches the kernel's exec kill map, and the command line's `--interval`,
`--rules` and `--dry-run` outlive every config reload."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent.decide import DEFAULT_PROTECTED
from tests.agentproc import RunningAgent

pytestmark = pytest.mark.integration

RULE = """rules:
  - id: {rid}
    severity: high
    action: kill
    match: {{proc.exe_name: {name}}}
"""


def _dead_by_sigkill(p: subprocess.Popen, timeout: float = 5) -> bool:
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return p.returncode == -signal.SIGKILL


def _tool(tmp: Path, name: str) -> Path:
    d = tmp / "x"
    d.mkdir(exist_ok=True)
    shutil.copy("/bin/sleep", d / name)
    return d / name


@pytest.mark.ebpf
def test_a_name_protected_by_a_reload_is_not_killed_in_the_kernel(ebpf, tmp_path):
    agent = RunningAgent(tmp_path, "mode: enforce\n")
    procs: list[subprocess.Popen] = []
    try:
        assert "in-kernel exec rules" in "".join(agent.stderr)
        miner = _tool(tmp_path, "xmrig")
        procs.append(subprocess.Popen([str(miner), "30"]))
        f = agent.finding(lambda f: f["process"]["pid"] == procs[0].pid)
        assert f["outcome"] == "killed" and f["mode"] == "enforce", f
        assert _dead_by_sigkill(procs[0])

        protected = ", ".join([*DEFAULT_PROTECTED, "xmrig"])
        (tmp_path / "agent-config.yaml").write_text(f"mode: enforce\nprotected: [{protected}]\n")
        mark = len(agent.stderr)
        agent.proc.send_signal(signal.SIGHUP)
        agent.wait_log("config reloaded", after=mark)

        procs.append(subprocess.Popen([str(miner), "30"]))
        f = agent.finding(lambda f: f["process"]["pid"] == procs[1].pid)
        assert f["outcome"] == "protected", f
        time.sleep(0.3)
        assert procs[1].poll() is None, "the kernel killed a process the config protects"
    finally:
        for p in procs:
            p.kill()
            p.wait()
        assert agent.stop() == 0, "".join(agent.stderr)


def test_command_line_interval_rules_and_dry_run_outlive_a_config_reload(tmp_path):
    cli_rules, cfg_rules = tmp_path / "cli-rules", tmp_path / "cfg-rules"
    cli_rules.mkdir()
    cfg_rules.mkdir()
    (cli_rules / "a.yaml").write_text(RULE.format(rid="alpha-rule", name="alpha-tool"))
    (cfg_rules / "b.yaml").write_text(RULE.format(rid="beta-rule", name="beta-tool"))
    config = f"mode: enforce\nrules: [{cfg_rules}]\nscan_interval: 60\n"
    agent = RunningAgent(tmp_path, config, ["--rules", str(cli_rules), "--interval", "0.3",
                                            "--dry-run"])
    procs: list[subprocess.Popen] = []
    try:
        mark = len(agent.stderr)
        agent.proc.send_signal(signal.SIGHUP)
        agent.wait_log("config reloaded", after=mark)
        agent.wait_log("rules reloaded after SIGHUP", after=mark)

        # --interval: periodic scans go on every 0.3 s, not every 60 s (at most one could
        # fall in this window at 60 s; at 0.3 s a loaded machine still makes several)
        before = agent.metric('nodewarden_scans_total{reason="periodic"}')
        time.sleep(4)
        scans = agent.metric('nodewarden_scans_total{reason="periodic"}') - before
        assert scans >= 3, f"{scans} periodic scans in 4 s after the reload"

        # --rules: the command line's rules judge, not the config's; --dry-run: nothing dies
        for name in ("beta-tool", "alpha-tool"):
            procs.append(subprocess.Popen([str(_tool(tmp_path, name)), "30"]))
        f = agent.finding(lambda f: f["process"]["pid"] in (procs[0].pid, procs[1].pid))
        assert f["rule"] == "alpha-rule", f
        assert f["outcome"] == "would_kill" and f["mode"] == "audit", f
        time.sleep(1)  # three scans: time for a beta-rule finding, were it loaded
        assert all(f["rule"] != "beta-rule" for f in agent.all_findings)
        assert all(p.poll() is None for p in procs)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        assert agent.stop() == 0, "".join(agent.stderr)
