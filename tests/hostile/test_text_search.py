"""Text search is not mining: in enforce mode with the shipped rules, a tenant's
`timeout 5 grep -r stratum+tcp:// DIR` and a real `git grep` / `git log -S` for a pool URL
live on, while a renamed miner given `-o STRATUM+TCP://...` is killed (issue 13, defects 8
and 10).

Each searcher is kept alive ~1.5 s by holding its stdin open (`grep ... -`, `git grep -f -`,
`git log --stdin`), far longer than a userspace kill takes, so a kill rule that fired would
have killed it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ebpf]

POOL = "stratum+tcp://pool.example:3333"
HOLD = 1.5


def _run_holding_stdin(tenant, argv: list[str], env: dict | None = None,
                       feed: bytes = b"") -> tuple[int, bytes]:
    """Run `argv` as the tenant with its stdin held open for HOLD seconds, then `feed`."""
    p = tenant.spawn(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT)
    time.sleep(HOLD)  # the process is alive all along: a kill would land in this window
    out, _ = p.communicate(feed, timeout=20)
    return p.returncode, out


def _git(tenant, repo: Path, *args: str) -> None:
    p = tenant.spawn(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@x",
                      *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err


def test_text_search_lives_and_a_renamed_miner_is_killed(ebpf, tenant, start_agent):
    agent = start_agent("mode: enforce\n")
    logs = tenant.home / "logs"
    logs.mkdir()
    (logs / "miner.log").write_text(f"connecting to {POOL}\n")
    os.chown(logs, tenant.uid, tenant.gid)

    # timeout wraps grep; both carry the pool scheme in argv
    rc, out = _run_holding_stdin(tenant, ["timeout", "5", "grep", "-r", "stratum+tcp://",
                                          str(logs), "-"])
    assert (rc, POOL.encode() in out) == (0, True), out

    if shutil.which("git"):  # the CI image has git; elsewhere the git searches are skipped
        repo = tenant.home / "repo"
        repo.mkdir()
        os.chown(repo, tenant.uid, tenant.gid)
        _git(tenant, repo, "init", "-q")
        (repo / "pool.conf").write_text(f"url = {POOL}\n")
        os.chown(repo / "pool.conf", tenant.uid, tenant.gid)
        _git(tenant, repo, "add", "pool.conf")
        _git(tenant, repo, "commit", "-qm", "pool")
        git = ["git", "--no-pager", "-C", str(repo)]
        rc, out = _run_holding_stdin(tenant, [*git, "grep", "-n", "-e", POOL, "-f", "-"],
                                     feed=b"no-such-pattern\n")
        assert (rc, b"pool.conf:1:" in out) == (0, True), out
        rc, out = _run_holding_stdin(tenant, [*git, "log", "--oneline", "-S", POOL, "--stdin"],
                                     feed=b"HEAD\n")
        assert (rc, b"pool" in out) == (0, True), out

    # a renamed copy of a program (dash) that runs on whatever its arguments say: a miner
    miner = tenant.binary("kworker", "/bin/dash")
    p = tenant.spawn([str(miner), "-c", "sleep 30; :", "-o", "STRATUM+TCP://127.0.0.1:3333"])
    f = agent.finding(lambda f: f["process"]["pid"] == p.pid and f["outcome"] == "killed")
    assert f["rule"] == "crypto-miner-args"
    assert p.wait(timeout=10) == -signal.SIGKILL

    # the miner's finding came after every search's exec: none of them was acted on (the
    # miner's forked child, a kworker too, may be; what other users run on this machine
    # meanwhile is not the tenant's)
    acted = [(f["rule"], f["process"]["exe"], f["outcome"]) for f in agent.all_findings
             if f["outcome"] in ("killed", "would_kill", "failed", "gone")
             and f["process"]["uid"] == tenant.uid
             and not f["process"]["exe"].startswith(str(miner))]
    assert acted == []
