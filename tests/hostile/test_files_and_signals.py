"""The tenant aims the agent's own files and signals (issue 13, defects 3 and 12).

The agent runs as root and appends findings (findings_file) and recorded events (--record)
to a path the admin chose, possibly in a directory the tenant can write. There the tenant
plants a symlink (root would create or append to any file), a FIFO (root would block before
ready), a file of its own (it could truncate and forge findings) or a hard link to a root
file. The agent must refuse each with exit 2 and a message naming the file, and touch
nothing. Then: signals that arrive while the agent is still starting, and a second agent on
the same node.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.hostile.conftest import Tenant

CONFIG = "bpf: 'off'\nkubernetes: 'off'\nscan_interval: 3600\n"


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    """A directory like /tmp: root's, writable by everyone, sticky."""
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o1777)
    return d


def _refused(start_agent, config: str, *args: str, **kw) -> str:
    """Start an agent that must refuse to start: exit 2 quickly, never ready; its stderr."""
    agent = start_agent(config, *args, wait_ready=False, **kw)
    agent.expect_rc = 2
    try:
        rc = agent.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError("the agent did not refuse (it blocked or started):\n"
                             + "".join(agent.stderr)) from None
    assert rc == 2, "".join(agent.stderr)
    agent.stop()
    assert not agent.ready.is_set()
    return "".join(agent.stderr)


def _as_tenant(tenant: Tenant, path: Path) -> None:
    os.lchown(path, tenant.uid, tenant.gid)


@pytest.mark.parametrize("how", ["findings_file", "--record"])
def test_a_tenant_symlink_is_not_followed(tenant: Tenant, shared_dir: Path, tmp_path: Path,
                                          start_agent, how: str) -> None:
    victim = tmp_path / "root-owned" / "profile.sh"  # a file root would source
    victim.parent.mkdir()
    victim.write_text("echo hello\n")
    missing = tmp_path / "root-owned" / "new-file"
    for target, name in ((victim, "findings.jsonl"), (missing, "other.jsonl")):
        link = shared_dir / name
        link.symlink_to(target)
        _as_tenant(tenant, link)
        if how == "findings_file":
            err = _refused(start_agent, CONFIG + f"findings_file: {link}\n")
        else:
            err = _refused(start_agent, CONFIG, "--record", str(link))
        assert f"{how} {link}" in err and "symbolic link" in err, err
    assert victim.read_text() == "echo hello\n"
    assert not missing.exists()


def test_a_tenant_fifo_is_refused_at_once(tenant: Tenant, shared_dir: Path, start_agent) -> None:
    fifo = shared_dir / "findings.jsonl"
    os.mkfifo(fifo)
    _as_tenant(tenant, fifo)
    started = time.monotonic()
    err = _refused(start_agent, CONFIG + f"findings_file: {fifo}\n")
    assert time.monotonic() - started < 20
    assert f"findings_file {fifo}" in err and "FIFO" in err, err


def test_a_tenant_owned_file_is_refused(tenant: Tenant, shared_dir: Path, start_agent) -> None:
    forged = shared_dir / "findings.jsonl"
    forged.write_text('{"forged": true}\n')
    forged.chmod(0o644)
    _as_tenant(tenant, forged)
    err = _refused(start_agent, CONFIG + f"findings_file: {forged}\n")
    assert f"findings_file {forged}" in err and f"uid {tenant.uid}" in err, err
    assert forged.read_text() == '{"forged": true}\n'


def test_a_hard_link_to_a_root_file_is_refused(tenant: Tenant, shared_dir: Path,
                                               tmp_path: Path, start_agent) -> None:
    # made by root here: fs.protected_hardlinks=1 keeps a tenant from doing it, =0 does not
    victim = tmp_path / "root-owned-file"
    victim.write_text("root's data\n")
    victim.chmod(0o600)
    os.link(victim, shared_dir / "findings.jsonl")
    err = _refused(start_agent, CONFIG + f"findings_file: {shared_dir / 'findings.jsonl'}\n")
    assert "hard links" in err, err
    assert victim.read_text() == "root's data\n"


def test_a_directory_others_can_write_without_the_sticky_bit_is_refused(
        tenant: Tenant, tmp_path: Path, start_agent) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)  # anyone could rename the agent's file away and put theirs there
    err = _refused(start_agent, CONFIG + f"findings_file: {open_dir / 'findings.jsonl'}\n")
    assert f"{open_dir}" in err and "sticky" in err, err
    assert not (open_dir / "findings.jsonl").exists()


def test_a_findings_file_in_a_missing_directory_is_exit_2(tmp_path: Path, start_agent) -> None:
    path = tmp_path / "no-such-dir" / "findings.jsonl"
    err = _refused(start_agent, CONFIG + f"findings_file: {path}\n")
    assert f"the directory {path.parent} does not exist" in err, err


def test_a_safe_path_gets_a_0600_file_of_findings(tenant: Tenant, shared_dir: Path,
                                                  start_agent) -> None:
    path = shared_dir / "findings.jsonl"
    record = shared_dir / "events.jsonl"
    agent = start_agent(CONFIG + f"findings_file: {path}\n", "--record", str(record))
    assert agent.alive()
    for p in (path, record):
        st = p.lstat()
        assert stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid(), p
        assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert record.read_text().count("\n") > 0  # the start-up scan's events


# -- signals while the agent starts ------------------------------------------------------

def _importing_the_cli(pid: int) -> bool:
    """Whether `pid` has begun the CLI's imports (its C extensions are mapped): on today's
    main this came a good part of a second before any handler was in place."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
    return "xxhash" in maps or "_yaml" in maps


def _signal_while_starting(start_agent, sig: int, delay: float):
    """Start the agent and send `sig` `delay` seconds after it began importing the CLI."""
    agent = start_agent(CONFIG, wait_ready=False)
    deadline = time.monotonic() + 20
    while not _importing_the_cli(agent.proc.pid):
        assert time.monotonic() < deadline and agent.alive(), "".join(agent.stderr)
        time.sleep(0.001)
    time.sleep(delay)
    agent.proc.send_signal(sig)
    return agent


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.1, 0.2])
def test_a_sighup_while_starting_does_not_kill_the_agent(start_agent, delay: float) -> None:
    """A config reloader (or a script run as root) sends SIGHUP just as the agent starts."""
    agent = _signal_while_starting(start_agent, signal.SIGHUP, delay)
    deadline = time.monotonic() + 60
    while not agent.ready.wait(0.1):
        assert agent.alive(), f"killed by the SIGHUP ({agent.proc.returncode})"
        assert time.monotonic() < deadline, "".join(agent.stderr)
    assert agent.alive()


def test_a_sighup_held_by_the_launcher_is_a_reload_once_up(start_agent) -> None:
    """A launcher that starts the agent with SIGHUP blocked (so none is lost) and one
    pending: the agent takes it once its handler is in place, as a reload."""

    def block_and_raise() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        os.kill(os.getpid(), signal.SIGHUP)

    agent = start_agent(CONFIG, preexec=block_and_raise)
    deadline = time.monotonic() + 10
    while not any("reloaded after SIGHUP" in line for line in agent.stderr):
        assert time.monotonic() < deadline, "".join(agent.stderr)
        time.sleep(0.05)
    assert agent.alive()


@pytest.mark.parametrize("delay", [0.0, 0.1])
def test_a_sigterm_while_starting_is_a_clean_stop(start_agent, delay: float) -> None:
    agent = _signal_while_starting(start_agent, signal.SIGTERM, delay)
    assert agent.proc.wait(timeout=60) == 0, "".join(agent.stderr)
    agent.stop()
    assert "stopping" in "".join(agent.stderr)


# -- one agent per node -----------------------------------------------------------------

def test_a_second_agent_on_the_node_refuses_to_start(tmp_path: Path, start_agent) -> None:
    lock = tmp_path / "lockdir" / "agent.lock"
    env = {"NODEWARDEN_LOCK_FILE": str(lock)}
    first = start_agent(CONFIG, env=env)
    err = _refused(start_agent, CONFIG, env=env)
    assert (f"another nodewarden (pid {first.proc.pid}) is running on this node: "
            f"{lock} is locked") in err, err
    assert first.alive()
    assert stat.S_IMODE(lock.parent.stat().st_mode) == 0o700
    first.stop()
    # the lock goes with its holder: the next agent starts
    start_agent(CONFIG, env=env)

