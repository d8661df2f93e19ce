"""The agent image run under runc as the chart's DaemonSet says (both security modes),
against real tenant containers in kubelet-shaped cgroups (issue 12).

Each test starts the pod once and checks several things on it: starting the agent (BCC
compiles its programs) is what costs here.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.container.conftest import WORKSPACE

pytestmark = pytest.mark.ebpf
MODES = ["privileged", "leastPrivilege"]


def _is(rule: str, pid: int):
    return lambda f: f["rule"] == rule and f["process"]["pid"] == pid


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a killed child of ours is a zombie until reaped: that is gone too (and reaped
        # between the two looks, it has no stat left)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return True
        if stat.split(") ")[1].startswith("Z"):
            return True
        time.sleep(0.05)
    return False


def _all_pids(tenant) -> list[int]:
    """The container's processes by its v1 pids cgroup (runc ps reads the same)."""
    path = Path("/sys/fs/cgroup/pids") / tenant.ctr.cgroups_path.lstrip("/")
    return [int(p) for p in (path / "cgroup.procs").read_text().split()]


def _pid_of(tenant, name: str, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in tenant.ctr.pids():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                    return pid
            except OSError:
                continue
        time.sleep(0.05)
    raise AssertionError(f"no {name} in the container")


@pytest.mark.parametrize("mode", MODES)
def test_audit_pod_attributes_miners_answers_probes_and_passes_the_helm_test(
        mode, agent_pod, tenants, host_miner, image):
    before = tenants("cgroupfs", ["/work/xmrig", "600"])       # running before the agent
    later = tenants("systemd", ["sleep", "600"])
    agent = agent_pod({"securityContext": {"mode": mode}}, [before.pod(), later.pod()])
    if mode == "leastPrivilege":
        # exactly the chart's capabilities, less what this host's runtime lacks itself
        caps = agent.translation.config["process"]["capabilities"]["effective"]
        assert sorted(caps + [f"CAP_{c}" for c in agent.translation.withheld_caps]) == sorted(
            f"CAP_{c}" for c in ("BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE",
                                 "DAC_READ_SEARCH", "KILL", "SYS_RESOURCE", "SYS_NICE"))
    stamp = time.time()

    # the start-up scan: the host's miner (no container) and the one in a container, with
    # its id and its pod (resolved by the pod uid in the kernel's cgroup path: the API
    # server lists no container of it)
    f = agent.finding(_is("crypto-miner-exec", host_miner.pid))
    assert f["container"] is None and f["outcome"] == "would_kill"
    f = agent.finding(_is("crypto-miner-exec", before.ctr.pid))
    assert f["container"] == {"id": before.cid}
    assert f["pod"]["uid"] == before.pod_uid and f["workspace"] == {"id": WORKSPACE}

    # an exec in a container of the systemd cgroup form (seen by eBPF; by the next scan
    # when the kernel dropped the record, as under the load of a shared machine)
    later.exec_detached(["/work/xmrig", "300"])
    pid = _pid_of(later, "xmrig")
    f = agent.finding(_is("crypto-miner-exec", pid))
    assert f["outcome"] == "would_kill"
    assert f["container"] == {"id": later.cid} and f["pod"]["uid"] == later.pod_uid
    assert not _gone(pid, 0.5) and host_miner.poll() is None   # audit: nothing touched

    # the kubelet's probes, from inside the container, and the chart's helm test hook
    assert agent.get("/healthz")[0] == 200 and agent.get("/readyz")[0] == 200
    status, body = agent.get("/metrics")
    assert status == 200 and "nodewarden_build_info" in body
    hook = agent.helm_test()
    assert hook.returncode == 0 and "ok: /readyz 200" in hook.stdout, hook.stderr

    # the read-only root: refused to anyone, and the agent wrote nothing in it
    res = agent.ctr.exec(["touch", "/probe"])
    assert res.returncode != 0 and "Read-only file system" in res.stderr
    rootfs = image[0]
    newer = subprocess.run(["find", str(rootfs), "-xdev", "-newermt", f"@{stamp}"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert newer == []


@pytest.mark.parametrize("mode", MODES)
def test_enforce_pod_kills_by_kill_in_kernel_and_kill_container(
        mode, agent_pod, tenants, host_miner):
    before = tenants("cgroupfs", ["/work/xmrig", "600"])
    bystander = tenants("systemd", ["sleep", "600"])
    # two processes each, the first execs the forbidden tool once told to (/work/go)
    script = ("sleep 601 & while [ ! -e /work/go ]; do sleep 0.2; done; "
              "exec /work/nw-evil 600")
    whole = tenants("cgroupfs", ["sh", "-c", script])
    v1_only = tenants("systemd", ["sh", "-c", script])
    # v1_only's processes leave its cgroup of the unified hierarchy for its pod's: the
    # agent must find the container by its v1 cgroups instead
    unified = Path("/sys/fs/cgroup/unified") / v1_only.ctr.cgroups_path.lstrip("/")
    while pids := (unified / "cgroup.procs").read_text().split():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):   # a `sleep 0.2` that ended
                (unified.parent / "cgroup.procs").write_text(pid)
    rule = """rules:
  - id: tenant-tool
    description: a tool no tenant may run; its whole container goes
    severity: high
    action: kill-container
    match: {proc.name: {in: [nw-evil]}}
    message: "nw-evil in container {container.id}"
"""
    agent = agent_pod({"securityContext": {"mode": mode}, "mode": "enforce",
                       "customRules": {"tenant.yaml": rule}},
                      [t.pod() for t in (before, bystander, whole, v1_only)])

    # kill: what the start-up scan found, on the host and in a container
    for pid in (host_miner.pid, before.ctr.pid):
        f = agent.finding(_is("crypto-miner-exec", pid))
        assert f["outcome"] == "killed" and _gone(pid)

    # the in-kernel exec rule: SIGKILL before the miner runs, the container lives on
    bystander.exec_detached(["/work/xmrig", "300"])
    f = agent.finding(lambda f: f["rule"] == "crypto-miner-exec"
                      and "in-kernel" in f.get("reason", "")
                      and f["process"]["exe"] == "/work/xmrig")
    assert f["outcome"] == "killed" and f["source"] == "exec"
    assert bystander.running()

    # kill-container: cgroup.kill of the unified hierarchy, then the v1 fallback
    for t, how in ((whole, "(cgroup.kill)"), (v1_only, f"container {v1_only.cid[:12]}")):
        pids = _all_pids(t)
        assert len(pids) >= 2
        (t.work / "go").touch()
        f = agent.finding(lambda f, t=t: f["rule"] == "tenant-tool"
                          and f["container"] == {"id": t.cid})
        assert f["outcome"] == "killed" and how in f.get("reason", ""), f
        left = [p for p in pids if not _gone(p)]
        assert not left, (how, f)
        assert t.ctr.wait(10) is not None          # runc saw its container end
    assert bystander.running() and len(bystander.ctr.pids()) == 1
    assert host_miner.poll() is not None


def test_in_kernel_kill_names_the_container_and_pod(agent_pod, tenants):
    # the miner is gone before the agent could read its /proc/PID/cgroup: its exec record's
    # cgroup id names the container's cgroup directory (agent/sources/procfs/cgroupids.py)
    tenant = tenants("systemd", ["sleep", "600"])
    agent = agent_pod({"mode": "enforce"}, [tenant.pod()])
    tenant.exec_detached(["/work/xmrig", "300"])
    f = agent.finding(lambda f: "in-kernel" in f.get("reason", "")
                      and f["process"]["exe"] == "/work/xmrig")
    assert f["container"] == {"id": tenant.cid}
    assert f["pod"]["uid"] == tenant.pod_uid
