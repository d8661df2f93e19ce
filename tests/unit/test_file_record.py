"""The file record (struct nw_file_event) to a FileOp: ops by number, canonical absolute
paths, and relative ones resolved against the caller's cwd or dirfd from a procfs tree."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.details import FileOp
from agent.model import EventKind
from agent.sources import kevents
from agent.sources.filerecord import AT_FDCWD, FILE_FORMAT, PendingFileOp, canonical


def _record(path: bytes, op: int = 0, dest: bytes = b"", dirfd: int = AT_FDCWD,
            dest_dirfd: int = AT_FDCWD, flags: int = 0, mode: int = 0) -> bytes:
    return FILE_FORMAT.pack(123, kevents.FILE, 4242, 1000, op, flags, mode, dirfd, dest_dirfd,
                            b"python3", path, dest)


def test_an_absolute_path_decodes_to_its_file_op():
    raw = kevents.decode(_record(b"/etc/shadow", op=0, flags=0o2000000))
    assert (raw.ts_ns, raw.kind, raw.pid, raw.uid, raw.comm) == (123, 8, 4242, 1000, "python3")
    assert kevents.EVENT_KINDS[kevents.RecordKind(raw.kind)] is EventKind.FILE
    assert raw.detail == FileOp(path="/etc/shadow", op="read", flags=0o2000000)
    assert raw.detail.name == "shadow"


@pytest.mark.parametrize("op,name", [(0, "read"), (1, "write"), (2, "create"),
                                     (3, "truncate"), (4, "unlink"), (5, "rename"),
                                     (6, "chmod"), (99, "")])
def test_ops_by_number(op, name):
    assert kevents.decode(_record(b"/x", op=op)).detail.op == name


def test_a_rename_carries_both_paths_and_a_chmod_its_mode():
    d = kevents.decode(_record(b"/tmp/x", op=5, dest=b"/etc/cron.d/x")).detail
    assert (d.path, d.dest) == ("/tmp/x", "/etc/cron.d/x")
    d = kevents.decode(_record(b"/tmp/x", op=6, mode=0o755)).detail
    assert d.made_executable and d.mode == 0o755


@pytest.mark.parametrize("path,expected", [
    ("/etc//shadow", "/etc/shadow"), ("/etc/./shadow", "/etc/shadow"),
    ("//etc/shadow", "/etc/shadow"), ("/tmp/../etc/shadow", "/etc/shadow"),
    ("/etc/cron.d/", "/etc/cron.d"),
])
def test_absolute_paths_are_made_canonical(path, expected):
    assert canonical(path) == expected
    assert kevents.decode(_record(path.encode())).detail.path == expected


def test_a_path_that_is_not_utf8_keeps_its_bytes_as_surrogates():
    d = kevents.decode(_record(b"/tmp/\xff")).detail
    assert d.path == "/tmp/\udcff"


@pytest.fixture
def procfs(tmp_path: Path) -> SimpleNamespace:
    (tmp_path / "4242" / "fd").mkdir(parents=True)
    (tmp_path / "4242" / "cwd").symlink_to("/etc")
    (tmp_path / "4242" / "fd" / "5").symlink_to("/var/spool/cron")
    (tmp_path / "4242" / "fd" / "6").symlink_to("socket:[123]")
    return SimpleNamespace(root=str(tmp_path))


def test_a_relative_path_is_resolved_against_the_callers_cwd(procfs):
    d = kevents.decode(_record(b"../etc/./shadow")).detail
    assert isinstance(d, PendingFileOp)
    assert d.resolve(4242, procfs) == FileOp(path="/etc/shadow", op="read")


def test_a_relative_path_is_resolved_against_its_dirfd(procfs):
    d = kevents.decode(_record(b"crontabs/root", op=2, dirfd=5)).detail
    assert d.resolve(4242, procfs).path == "/var/spool/cron/crontabs/root"
    d = kevents.decode(_record(b"/tmp/a", op=5, dest=b"evil", dest_dirfd=5)).detail
    resolved = d.resolve(4242, procfs)
    assert (resolved.path, resolved.dest) == ("/tmp/a", "/var/spool/cron/evil")


def test_what_cannot_be_resolved_stays_relative(procfs):
    d = kevents.decode(_record(b"shadow")).detail
    assert d.resolve(999, procfs).path == "shadow"          # the process is gone
    d = kevents.decode(_record(b"shadow", dirfd=6)).detail
    assert d.resolve(4242, procfs).path == "shadow"         # not a directory
