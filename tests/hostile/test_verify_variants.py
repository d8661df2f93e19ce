"""Red-team verification of issue 13's fixes: close variants of the issue's own repros
(non-UTF-8 bytes in comm and in the workspace marker, a long miner-prefixed name under the
in-kernel rules, `exec -a` to a protected name, reparenting without eBPF, a SIGHUP storm
with a /metrics flood: before, a handler re-entering Event.set hung or crashed the agent)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest


@pytest.mark.ebpf
def test_long_name_with_a_miner_prefix_lives_in_enforce_mode(ebpf, tenant, start_agent):
    agent = start_agent("mode: enforce\n")
    exe = tenant.binary("cpuminer-avx512-benchmark-report")
    p = tenant.spawn([str(exe), "30"])
    time.sleep(1.5)
    assert p.poll() is None, [f for f in agent.all_findings if f["process"]["pid"] == p.pid]
    # the real miner is still killed
    miner = tenant.binary("cpuminer")
    q = tenant.spawn([str(miner), "30"])
    assert q.wait(timeout=10) == -signal.SIGKILL


@pytest.mark.ebpf
def test_bytes_that_are_not_utf8_in_comm_and_marker(ebpf, tenant, start_agent, tmp_path):
    ff = tmp_path / "f.jsonl"
    agent = start_agent(f"findings_file: {ff}\nscan_interval: 0.5\n")
    # comm (the basename) and the workspace marker hold bytes that are not UTF-8
    exe = tenant.binary("x\udcff\udcfe")
    p = tenant.spawn([exe, "60"], env={"WORKSPACE_ID": "ws-\udcff\udcfe"})
    agent.finding(lambda f: f["process"]["pid"] == p.pid and f["rule"] == "exec-from-tmp")
    time.sleep(2)
    assert agent.bad_lines == []
    for line in ff.read_bytes().splitlines():
        json.loads(line.decode("utf-8"))
    status, body = agent.get("/metrics")
    assert status == 200
    body.decode("utf-8")


@pytest.mark.ebpf
def test_exec_a_to_a_protected_name_in_a_workspace_is_killed(ebpf, tenant, start_agent):
    agent = start_agent("mode: enforce\n")
    miner = tenant.binary("kworker", "/bin/dash")
    p = tenant.spawn(["/bin/bash", "-c",
                      f"exec -a sshd {miner} -c 'sleep 30; :' -o stratum+tcp://127.0.0.1:3333"])
    f = agent.finding(lambda f: f["process"]["pid"] == p.pid and f["outcome"] == "killed")
    assert p.wait(timeout=10) == -signal.SIGKILL, f


DOUBLE_FORK_SH = '( "$0" 60 & sleep 1 ) & sleep 0.1'


@pytest.mark.parametrize("bpf", ["off"])
def test_a_reparented_process_without_bpf_is_reported_once(tenant, start_agent, bpf):
    agent = start_agent(f"bpf: '{bpf}'\nscan_interval: 0.3\n")
    exe = tenant.binary("kw")
    tenant.spawn(["/bin/sh", "-c", DOUBLE_FORK_SH, str(exe)]).wait(timeout=10)
    f = agent.finding(lambda f: f["process"]["exe"] == str(exe))
    pid = f["process"]["pid"]
    deadline = time.monotonic() + 10
    while f["process"]["ppid"] == int(
            Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]):
        assert time.monotonic() < deadline, "not reparented"
        time.sleep(0.05)
    time.sleep(1.5)  # several scans after the reparenting
    mine = [g for g in agent.all_findings if g["process"]["pid"] == pid]
    assert len(mine) == 1, mine


def test_a_sighup_storm_and_a_metrics_flood_leave_the_agent_up(start_agent):
    agent = start_agent("bpf: 'off'\nscan_interval: 0.3\n", wait_ready=False)
    stop = threading.Event()

    def storm() -> None:
        # from the moment the handler is installed (before that, the interpreter's own
        # start-up: documented as left open)
        while agent.alive():
            try:
                caught = Path(f"/proc/{agent.proc.pid}/status").read_text()
            except FileNotFoundError:
                return
            mask = int(caught.split("SigCgt:")[1].split()[0], 16)
            if mask & (1 << (signal.SIGHUP - 1)):
                break
        while not stop.is_set() and agent.alive():
            try:
                os.kill(agent.proc.pid, signal.SIGHUP)
            except ProcessLookupError:
                return
            time.sleep(0.0005)

    t = threading.Thread(target=storm)
    t.start()
    try:
        assert agent.ready.wait(60), "".join(agent.stderr)
        end = time.monotonic() + 4
        n = 0
        while time.monotonic() < end:
            assert agent.get("/metrics")[0] == 200
            n += 1
        assert agent.get("/healthz")[0] == 200
    finally:
        stop.set()
        t.join()
    assert agent.alive(), "".join(agent.stderr[-20:])


BIND_OVER_GREP = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
uid, gid = os.getuid(), os.getgid()
assert libc.unshare(0x10000000 | 0x00020000) == 0, ctypes.get_errno()  # NEWUSER | NEWNS
open('/proc/self/setgroups', 'w').write('deny')
open('/proc/self/uid_map', 'w').write(f'0 {uid} 1')
open('/proc/self/gid_map', 'w').write(f'0 {gid} 1')
assert libc.mount(sys.argv[1].encode(), b'/usr/bin/grep', None, 4096, None) == 0  # MS_BIND
os.execv('/usr/bin/grep', ['grep', '-c', 'sleep 30; :', '-o', 'stratum+tcp://127.0.0.1:3333'])
"""


@pytest.mark.ebpf
@pytest.mark.xfail(strict=True, reason="open: the text-tool excuse trusts proc.exe, which a "
                   "tenant's own user+mount namespace can bind-mount a miner over")
def test_a_miner_bind_mounted_over_grep_in_a_user_namespace_is_killed(ebpf, tenant, start_agent):
    """No exec of `unshare` (which the shipped workspace rule kills): the tenant's program
    makes the namespaces itself, bind-mounts its miner over /usr/bin/grep and execs it."""
    if Path("/proc/sys/user/max_user_namespaces").read_text().strip() == "0":
        pytest.skip("user namespaces are disabled")
    agent = start_agent("mode: enforce\n")
    miner = tenant.binary("kworker", "/bin/dash")
    p = tenant.spawn(["python3", "-c", BIND_OVER_GREP, str(miner)])
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.1)
    assert p.poll() == -signal.SIGKILL, [f for f in agent.all_findings
                                         if f["process"]["pid"] == p.pid]
