"""The agent's output files (issue 13, defect 3): what is accepted, appended to, and refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.sinks.outfile import open_output


def test_a_new_file_is_0600_and_an_existing_one_of_ours_is_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "findings.jsonl"
    with open_output(str(path), "findings_file") as f:
        f.write("one\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)  # as an older agent made it: readable, writable only by us
    with open_output(str(path), "findings_file") as f:
        f.write("two\n")
    assert path.read_text() == "one\ntwo\n"


def test_a_group_writable_directory_is_the_admins_choice(tmp_path: Path) -> None:
    d = tmp_path / "log"
    d.mkdir()
    d.chmod(0o775)  # like Ubuntu's /var/log (root:syslog)
    open_output(str(d / "findings.jsonl"), "findings_file").close()


@pytest.mark.parametrize("mode,ok", [(0o777, False), (0o1777, True)])
def test_a_directory_everyone_can_write_must_be_sticky(tmp_path: Path, mode: int,
                                                        ok: bool) -> None:
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(mode)
    if ok:
        open_output(str(d / "f.jsonl"), "findings_file").close()
    else:
        with pytest.raises(ConfigError, match="without the sticky bit"):
            open_output(str(d / "f.jsonl"), "findings_file")


@pytest.mark.parametrize("mode", [0o620, 0o602])
def test_a_file_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "f.jsonl"
    path.write_text("")
    path.chmod(mode)
    with pytest.raises(ConfigError, match=f"chmod 600 {path}"):
        open_output(str(path), "--record")


def test_a_symlinked_parent_made_by_someone_else_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a symlink of another uid needs root")
    (tmp_path / "real").mkdir()
    link = tmp_path / "logs"
    link.symlink_to(tmp_path / "real")
    os.lchown(link, 12345, 12345)
    with pytest.raises(ConfigError, match=f"{link} is a symbolic link owned by uid 12345"):
        open_output(str(link / "f.jsonl"), "findings_file")
    assert not (tmp_path / "real" / "f.jsonl").exists()
