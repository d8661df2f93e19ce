"""The real /proc of this host: a renamed sleep in a workspace is found and left running,
and `run` scans, prints, records, serves metrics and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

NODEWARDEN = [sys.executable, "-m", "agent"]
SECRET = "s3cr3t-value-that-must-never-leak"


@pytest.fixture
def workspace_miner(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """A copy of /bin/sleep named xmrig, started with WORKSPACE_ID=ws-1 and a secret."""
    exe = tmp_path / "xmrig"
    shutil.copy("/bin/sleep", exe)
    env = {"PATH": "/usr/bin:/bin", "WORKSPACE_ID": "ws-1", "API_TOKEN": SECRET}
    proc = subprocess.Popen([str(exe), "300"], env=env)
    # wait until the exec happened (comm switches from python to xmrig)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{proc.pid}/comm").read_text().strip() == "xmrig":
                break
        except OSError:
            pass
        time.sleep(0.01)
    yield proc
    proc.kill()
    proc.wait()


def _findings(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_scan_reports_workspace_miner_and_leaves_it_running(workspace_miner):
    res = subprocess.run([*NODEWARDEN, "scan", "--format", "json"], check=False,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    mine = [f for f in _findings(res.stdout) if f["process"]["pid"] == workspace_miner.pid]
    assert mine, res.stdout
    f = mine[0]
    assert f["rule"].startswith("crypto-miner")
    assert f["workspace"] == {"id": "ws-1"}
    assert f["process"]["comm"] == "xmrig"
    assert f["process"]["exe"].endswith("/xmrig")
    assert f["outcome"] == "would_kill" and f["mode"] == "audit"
    assert f["process"]["ancestors"] and f["process"]["ancestors"][0]["pid"] == os.getpid()
    # scan never kills, and never exports an environ value other than the workspace id
    assert workspace_miner.poll() is None
    assert SECRET not in res.stdout + res.stderr


def test_scan_table_is_default(workspace_miner):
    res = subprocess.run([*NODEWARDEN, "scan"], check=False, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 1
    assert res.stdout.splitlines()[0].startswith("SEVERITY")
    assert any(str(workspace_miner.pid) in line and "ws-1" in line
               for line in res.stdout.splitlines())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_prints_records_serves_metrics_and_stops_on_sigterm(workspace_miner, tmp_path):
    record = tmp_path / "events.jsonl"
    port = _free_port()
    findings_file = tmp_path / "findings.jsonl"
    agent = subprocess.Popen([*NODEWARDEN, "run", "--dry-run", "--format", "json", "--interval",
                              "0.5", "--record", str(record), "--listen", f"127.0.0.1:{port}",
                              "--findings-file", str(findings_file)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        metrics = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    metrics = r.read().decode()
                if ("nodewarden_processes " in metrics
                        and 'nodewarden_rule_matches_total{' in metrics):
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert 'nodewarden_build_info{version="' in metrics
        assert "nodewarden_ruleset_info{hash=" in metrics
        assert 'nodewarden_sensor_up{sensor="procfs"} 1.0' in metrics
        assert "nodewarden_rule_matches_total{mode=\"audit\",rule=\"crypto-miner" in metrics
        agent.send_signal(signal.SIGTERM)
        out, err = agent.communicate(timeout=15)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert agent.returncode == 0, err
    assert "Traceback" not in err
    mine = [f for f in _findings(out) if f["process"]["pid"] == workspace_miner.pid]
    assert len(mine) == 1, "a process must be judged once, not once per scan"
    assert _findings(findings_file.read_text()) == _findings(out)  # the file gets the same
    assert mine[0]["workspace"] == {"id": "ws-1"}
    assert workspace_miner.poll() is None
    assert SECRET not in out + err + record.read_text()
    # the recording replays to the same finding
    res = subprocess.run([*NODEWARDEN, "replay", str(record), "--format", "json"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    replayed = [f for f in _findings(res.stdout) if f["process"]["pid"] == workspace_miner.pid]
    assert [f["rule"] for f in replayed] == [f["rule"] for f in mine]


def test_scan_survives_processes_exiting_mid_scan():
    # a churn of short-lived processes while scans run: no crash, every scan exits 0 or 1
    churn = subprocess.Popen(["/bin/sh", "-c", "for i in $(seq 400); do /bin/true & done; wait"])
    try:
        for _ in range(5):
            res = subprocess.run([*NODEWARDEN, "scan", "--format", "json"], check=False,
                                 capture_output=True, text=True, timeout=120)
            assert res.returncode in (0, 1), res.stderr
            assert "Traceback" not in res.stderr
    finally:
        churn.wait(timeout=60)


def _as_nobody() -> list[str]:
    """The command prefix that runs a command as nobody; skips where that is impossible."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root (to drop to nobody) and setpriv")
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if subprocess.run([*drop, sys.executable, "-c", "import agent"], check=False,
                      capture_output=True, timeout=60).returncode != 0:
        pytest.skip("this checkout is not readable by nobody")
    return drop


def test_scan_as_unprivileged_user_degrades_without_crashing(workspace_miner):
    drop = _as_nobody()
    res = subprocess.run([*drop, *NODEWARDEN, "scan", "--format", "json"],
                         check=False, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert res.returncode in (0, 1), res.stderr
    assert "Traceback" not in res.stderr
    assert "not running as root" in res.stderr
    # the miner's comm is still visible to anyone; its root-owned environ is not
    mine = [f for f in _findings(res.stdout) if f["process"]["pid"] == workspace_miner.pid]
    assert mine and mine[0]["workspace"] is None
    assert SECRET not in res.stdout + res.stderr


def test_run_without_root_says_once_why_there_is_no_ebpf_and_scans(tmp_path):
    drop = _as_nobody()
    agent = subprocess.Popen([*drop, *NODEWARDEN, "run", "--listen", "off", "--format", "json",
                              "--interval", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    time.sleep(3)
    agent.send_signal(signal.SIGTERM)
    _, err = agent.communicate(timeout=20)
    assert agent.returncode == 0, err
    assert err.count("eBPF sensors unavailable: not running as root") == 1, err
    assert "fix: run as root" in err
    # the proc connector needs no privilege on some kernels (this one): either fallback is fine
    assert ("ready: procfs scans every 0.5s" in err
            or "ready: netlink proc connector (exec, fork, exit) and procfs scans" in err), err
    assert "Traceback" not in err


def test_without_ebpf_the_proc_connector_reports_execs_as_they_happen(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the proc connector needs root")
    exe = tmp_path / "xmrig"
    shutil.copy("/bin/sleep", exe)
    agent = subprocess.Popen([*NODEWARDEN, "run", "--no-bpf", "--listen", "off", "--format", "json",
                              "--interval", "3600"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    miner = None
    try:
        assert agent.stderr is not None and agent.stdout is not None
        err = []
        for line in agent.stderr:
            err.append(line)
            if "ready:" in line:
                break
        assert "Using the netlink proc connector" in "".join(err), err
        assert "ready: netlink proc connector" in err[-1]
        # the periodic scan is an hour away: only the connector can report this exec
        miner = subprocess.Popen([str(exe), "30"])
        f = {}
        for line in agent.stdout:  # findings of the start-up scan come first
            f = json.loads(line)
            if f["process"]["pid"] == miner.pid:
                break
        assert f["process"]["pid"] == miner.pid and f["source"] == "exec"
        assert f["rule"] == "crypto-miner-exec"
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=20)
        if miner is not None:
            miner.kill()
            miner.wait()
    assert agent.returncode == 0


def test_a_scan_reads_the_network_namespace_of_processes_whose_uids_differ(tmp_path):
    """Processes that are not dumpable (real and effective uids differ: after setresuid, or
    a setuid program) keep their /proc/PID/ns/net readable to root with CAP_SYS_PTRACE:
    a scan names their namespace, not 0 (SECURITY.md: where it cannot)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (to change uids)")
    from agent.sources.procfs import ProcFS
    from agent.sources.proctree import ProcessTree

    setuid_sleep = tmp_path / "nw-setuid-sleep"
    shutil.copy("/bin/sleep", setuid_sleep)
    os.chown(setuid_sleep, 65534, 65534)
    setuid_sleep.chmod(0o4755)
    tmp_path.chmod(0o755)
    children = [
        subprocess.Popen([sys.executable, "-c",
                          "import os, time; os.setresuid(0, 65534, 0); time.sleep(30)"]),
        subprocess.Popen([str(setuid_sleep), "30"]),
    ]
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # both have changed their uids
            if all(_uids(c.pid)[:2] == (0, 65534) for c in children):
                break
            time.sleep(0.05)
        else:
            pytest.skip("the setuid program did not change its uid (a nosuid /tmp?)")
        tree = ProcessTree(ProcFS())
        tree.scan()
        own = os.stat("/proc/self/ns/net").st_ino
        assert [(tree.procs[c.pid].uid, tree.procs[c.pid].netns) for c in children] == \
            [(65534, own), (65534, own)]
    finally:
        for c in children:
            c.kill()
            c.wait()


def _uids(pid: int) -> tuple[int, ...]:
    with open(f"/proc/{pid}/status") as f:
        line = next(x for x in f if x.startswith("Uid:"))
    return tuple(int(x) for x in line.split()[1:])
