"""A rescan reads only /proc/PID/stat of the processes it already knows (issue 10, target 7),
yet sees every exec, rename, reparenting and pid reuse: over the fake host in
tests/fixtures/proc and over live processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_proctree import ALL_PIDS, copy_fixture

from agent.model import Process
from agent.sources.procfs import Known, ProcFS, parse_stat_program
from agent.sources.proctree import ProcessTree

ZOMBIE = 1250      # a zombie leader in the fixture: read in full on every scan, as before
KTHREAD = 2


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return copy_fixture(tmp_path / "proc")


class CountingProcFS(ProcFS):
    """Records which pids are read in full."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.full: list[int] = []

    def read_known(self, pid: int) -> Known:
        self.full.append(pid)
        return super().read_known(pid)


def scanned(root: Path) -> tuple[ProcessTree, CountingProcFS]:
    fs = CountingProcFS(str(root))
    tree = ProcessTree(fs)
    tree.scan()
    assert sorted(fs.full) == ALL_PIDS
    fs.full.clear()
    return tree, fs


def edit_stat(root: Path, pid: int, field: int, value: str) -> None:
    """Set field `field` (1-based, as proc(5) numbers them, >= 3) of /proc/PID/stat."""
    path = root / str(pid) / "stat"
    data = path.read_text()
    rpar = data.rindex(")")
    rest = data[rpar + 2 :].split(" ")
    rest[field - 3] = value
    path.write_text(data[: rpar + 2] + " ".join(rest))


def test_a_rescan_reads_in_full_only_the_zombie_leader(root: Path) -> None:
    tree, fs = scanned(root)
    before = {pid: p for pid, p in tree.procs.items()}
    environ_reads = tree.environ_reads
    (root / "1401" / "cmdline").write_bytes(b"changed\0without\0an\0exec\0")
    tree.scan()
    assert fs.full == [ZOMBIE]
    assert tree.environ_reads == environ_reads
    assert tree.procs[1401] is before[1401]
    assert tree.procs[1401].cmdline == before[1401].cmdline  # no exec: not read again
    assert tree.workspace_of(1401) == "ws-fixture"


def test_counters_and_state_do_not_make_a_rescan_read(root: Path) -> None:
    tree, fs = scanned(root)
    edit_stat(root, 1401, 3, "R")       # state
    edit_stat(root, 1401, 14, "999")    # utime
    edit_stat(root, 1401, 23, "1")      # vsize
    edit_stat(root, 1401, 24, "77")     # rss
    tree.scan()
    assert fs.full == [ZOMBIE]


@pytest.mark.parametrize(("field", "what"), [
    (26, "start of code (a PIE exec)"),
    (28, "start of stack (every randomised exec)"),
    (48, "start of argv"),
    (51, "end of the environment"),
    (22, "start time (the pid reused)"),
    (4, "parent (reparented)"),
])
def test_an_exec_or_a_new_process_under_the_pid_is_read_again(
        root: Path, field: int, what: str) -> None:
    tree, fs = scanned(root)
    (root / "1401" / "cmdline").write_bytes(b"./xmrig\0--url\0pool\0")
    edit_stat(root, 1401, field, "424242")
    tree.scan()
    assert sorted(fs.full) == [ZOMBIE, 1401], what
    assert tree.procs[1401].cmdline == ("./xmrig", "--url", "pool")


def test_a_process_that_renames_itself_is_read_again(root: Path) -> None:
    tree, fs = scanned(root)
    path = root / "1401" / "stat"
    path.write_bytes(path.read_bytes().replace(b"(sh)", b"(kworker/0:1)"))
    tree.scan()
    assert sorted(fs.full) == [ZOMBIE, 1401]
    assert tree.procs[1401].comm == "kworker/0:1"


def test_an_exec_that_keeps_every_address_is_seen_by_its_executable(root: Path) -> None:
    """Without address randomisation (setarch -R) another binary of the same layout keeps
    the stat fields: the executable's inode tells."""
    tree, fs = scanned(root)
    other = root.parent / "xmrig"
    other.write_bytes(b"\x7fELF")
    (root / "1401" / "exe").unlink()
    (root / "1401" / "exe").symlink_to(other)
    tree.scan()
    assert sorted(fs.full) == [ZOMBIE, 1401]
    assert tree.procs[1401].exe == str(other)
    assert tree.procs[1401].exe_ino == other.stat().st_ino


def test_a_process_gone_before_its_rescan_leaves_the_tree(root: Path) -> None:
    tree, fs = scanned(root)
    shutil.rmtree(root / "1401")
    tree.scan()
    assert 1401 not in tree.procs
    assert 1400 in tree.procs


def test_an_exec_event_makes_the_next_scan_read_the_process_in_full(root: Path) -> None:
    tree, fs = scanned(root)
    old = tree.procs[1401]
    tree.add(Process(pid=1401, ppid=1400, starttime=old.starttime, comm="sh", exe="/x",
                     cmdline=("/x",)))
    tree.scan()
    assert sorted(fs.full) == [ZOMBIE, 1401]
    assert tree.procs[1401].exe == old.exe  # what procfs says now, not a stale copy


def test_the_kernel_thread_is_not_read_again(root: Path) -> None:
    tree, fs = scanned(root)
    tree.scan()
    assert KTHREAD not in fs.full
    assert tree.procs[KTHREAD].kthread


def test_parse_stat_program_keeps_what_an_exec_changes() -> None:
    line = (b"7 (a) (b) S 1 7 7 0 -1 4194560 5 0 0 0 1 2 0 0 20 0 1 0 300 9 8 1 "
            b"100 200 300 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 400 500 600 700 800 900 1000 0")
    state, program = parse_stat_program(line)
    assert state == b"S"
    assert program == (b"a) (b", (b"1", b"300", b"100", b"200", b"300",
                                  b"400", b"500", b"600", b"700", b"800", b"900", b"1000"))
    with pytest.raises(ValueError):
        parse_stat_program(b"7 a S 1")


# -- live processes ---------------------------------------------------------------------------

EXEC_LATER = ("import os, sys, time; time.sleep(float(sys.argv[1])); "
              "os.execv(sys.argv[2], sys.argv[2:])")


def wait_for(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


@pytest.mark.parametrize("prefix", [[], ["setarch", "-R"]], ids=["aslr", "no-aslr"])
def test_a_live_exec_is_seen_by_a_rescan(tmp_path: Path, prefix: list[str]) -> None:
    if prefix and shutil.which(prefix[0]) is None:
        pytest.skip("no setarch")
    sleep = shutil.which("sleep") or "/bin/sleep"
    child = subprocess.Popen([*prefix, sys.executable, "-c", EXEC_LATER, "0.6", sleep, "30"])
    try:
        fs = CountingProcFS("/proc")
        tree = ProcessTree(fs)
        wait_for(lambda: fs.read(child.pid).exe == os.path.realpath(sys.executable))
        tree.scan()
        first = tree.procs[child.pid]
        assert first.exe == os.path.realpath(sys.executable)
        fs.full.clear()
        tree.scan()
        assert child.pid not in fs.full  # the same program: stat only
        wait_for(lambda: fs.read(child.pid).exe == os.path.realpath(sleep))
        tree.scan()
        now = tree.procs[child.pid]
        assert (now.pid, now.starttime) == (first.pid, first.starttime)
        assert now.exe == os.path.realpath(sleep)
        assert now.cmdline == (sleep, "30")
        assert now.instance_key != first.instance_key
    finally:
        child.kill()
        child.wait()
