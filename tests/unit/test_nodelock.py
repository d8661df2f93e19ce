"""One agent per node (issue 13, defect 12): the lock, and what the second agent is told."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from agent.cli import main
from agent.errors import ConfigError


def test_the_second_taker_is_told_who_holds_the_lock(tmp_path: Path) -> None:
    from agent.nodelock import NodeLock

    path = tmp_path / "run" / "agent.lock"
    first = NodeLock.take(str(path))
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == f"{os.getpid()}\n"
    with pytest.raises(ConfigError) as e:
        NodeLock.take(str(path))
    assert str(e.value).startswith(f"another nodewarden (pid {os.getpid()}) is running on this "
                                   f"node: {path} is locked")
    first.release()
    NodeLock.take(str(path)).release()


def test_a_symlinked_lock_file_is_refused(tmp_path: Path) -> None:
    from agent.nodelock import NodeLock

    target = tmp_path / "elsewhere"
    (tmp_path / "agent.lock").symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        NodeLock.take(str(tmp_path / "agent.lock"))
    assert not target.exists()


def test_the_environment_names_the_default_and_the_config_wins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.config import Config, load_config

    monkeypatch.setenv("NODEWARDEN_LOCK_FILE", str(tmp_path / "env.lock"))
    assert Config().lock_file == str(tmp_path / "env.lock")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"lock_file: {tmp_path / 'cfg.lock'}\n")
    assert load_config(str(cfg)).lock_file == str(tmp_path / "cfg.lock")
    monkeypatch.delenv("NODEWARDEN_LOCK_FILE")
    assert Config().lock_file == ("/run/nodewarden/agent.lock" if os.geteuid() == 0
                                  else Config().lock_file)


def test_run_refuses_while_another_agent_holds_the_lock(tmp_path: Path) -> None:
    from agent.nodelock import NodeLock

    lock = NodeLock.take(os.environ["NODEWARDEN_LOCK_FILE"])  # set per test by conftest
    try:
        out, err = io.StringIO(), io.StringIO()
        code = main(["run", "--once", "--no-bpf", "--listen", "off"], out, err)
    finally:
        lock.release()
    assert code == 2
    assert f"another nodewarden (pid {os.getpid()}) is running on this node" in err.getvalue()
