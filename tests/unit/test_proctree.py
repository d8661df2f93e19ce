"""ProcessTree over the fake host in tests/fixtures/proc: workspaces, ancestry, events.

See tests/fixtures/README.md for what each fixture pid is for.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from agent.codec import event_to_json
from agent.errors import AccessDenied
from agent.sources.procfs import ProcFS
from agent.sources.proctree import MAX_ANCESTORS, ProcessTree

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "proc"
SECRET = "hunter2"
BIG_ENV_PID = 700
ALL_PIDS = [1, 2, 57, 123, 124, 410, 700, 800, 1201, 1250, 1302, 1400, 1401, 1990, 2001, 2090,
            2101, 2201]
WORKSPACES = {1302: "ws-fixture", 1400: "ws-fixture", 1401: "ws-fixture", 700: "ws-big"}
# Processes whose own environ must be read: not inside a workspace already, not a kernel
# thread, not a zombie.
ENVIRON_READ = {1, 123, 124, 410, 700, 800, 1201, 1302, 1990, 2001, 2090, 2101, 2201}
# Environ content that must never leave the agent (the marker values are the only exception).
CANARIES = [SECRET, "AWS_SECRET_ACCESS_KEY", "ws-inner", "xterm-256color",
            "KUBERNETES_SERVICE_HOST", "NGINX_VERSION", "FILLER_00001"]


def copy_fixture(dst: Path) -> Path:
    """The committed tree plus pid 700's 1 MiB environ (secret and marker at the end)."""
    shutil.copytree(FIXTURE, dst, symlinks=True)
    filler = b"".join(b"FILLER_%05d=%s\0" % (i, b"x" * 250) for i in range(4000))
    tail = f"AWS_SECRET_ACCESS_KEY={SECRET}\0WORKSPACE_ID=ws-big\0".encode()
    pad = (1 << 20) - len(filler) - len(tail) - len(b"PAD=\0")
    (dst / str(BIG_ENV_PID) / "environ").write_bytes(filler + b"PAD=" + b"y" * pad + b"\0" + tail)
    return dst


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return copy_fixture(tmp_path / "proc")


class SpyProcFS(ProcFS):
    """Records whose environ is read."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.environ_pids: list[int] = []

    def environ_marker(self, pid, markers):
        self.environ_pids.append(pid)
        return super().environ_marker(pid, markers)


def stat_line(pid: int, comm: str, ppid: int, starttime: int = 100) -> bytes:
    fields = [str(pid), f"({comm})", "S", str(ppid), str(pid), str(pid), "0", "-1", "4194560"]
    fields += ["0"] * 12 + [str(starttime)] + ["1"] * 30
    return (" ".join(fields) + "\n").encode()


def synthetic(root: Path, procs: dict[int, int], environ: dict[int, bytes] | None = None) -> Path:
    """A procfs with only `stat` (and optionally `environ`) files: pid -> ppid."""
    root.mkdir()
    for pid, ppid in procs.items():
        (root / str(pid)).mkdir()
        (root / str(pid) / "stat").write_bytes(stat_line(pid, f"p{pid}", ppid))
    for pid, data in (environ or {}).items():
        (root / str(pid) / "environ").write_bytes(data)
    return root


def scan_with_timeout(tree: ProcessTree, seconds: float = 20.0) -> None:
    done = threading.Event()

    def run() -> None:
        tree.scan()
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert done.is_set(), "scan did not finish (ppid cycle?)"


# -- scan and workspaces ------------------------------------------------------------------

def test_scan_reads_every_process(root):
    tree = ProcessTree(ProcFS(str(root)))
    procs = tree.scan()
    assert sorted(p.pid for p in procs) == ALL_PIDS
    assert sorted(tree.procs) == ALL_PIDS


@pytest.mark.parametrize("pid", ALL_PIDS)
def test_workspace_membership(root, pid):
    tree = ProcessTree(ProcFS(str(root)))
    tree.scan()
    assert tree.workspace_of(pid) == WORKSPACES.get(pid, "")


def test_descendants_belong_to_the_outermost_marked_ancestor(root):
    """The xmrig child's own environ says ws-inner; the grandchild's says nothing: both are
    in the workspace of the first marked process walking down from init."""
    tree = ProcessTree(ProcFS(str(root)))
    tree.scan()
    assert tree.workspace_of(1400) == "ws-fixture"
    assert tree.workspace_of(1401) == "ws-fixture"


def test_unknown_pid_is_in_no_workspace(root):
    tree = ProcessTree(ProcFS(str(root)))
    assert tree.workspace_of(1302) == ""  # before any scan
    tree.scan()
    assert tree.workspace_of(99999) == ""


def test_markers_are_the_configured_ones(root):
    tree = ProcessTree(ProcFS(str(root)), markers=("GITPOD_WORKSPACE_ID",))
    tree.scan()
    assert all(tree.workspace_of(pid) == "" for pid in ALL_PIDS)


def test_environ_is_read_only_where_it_decides_something(root):
    procfs = SpyProcFS(str(root))
    tree = ProcessTree(procfs)
    tree.scan()
    assert sorted(procfs.environ_pids) == sorted(ENVIRON_READ)
    # never for workspace descendants, kernel threads or zombies
    assert not {1400, 1401, 2, 57, 1250} & set(procfs.environ_pids)
    assert tree.environ_reads == len(ENVIRON_READ)


def test_environ_is_read_once_per_identity_across_scans(root):
    procfs = SpyProcFS(str(root))
    tree = ProcessTree(procfs)
    tree.scan()
    first = tree.environ_reads
    tree.scan()
    tree.scan()
    assert tree.environ_reads == first
    assert len(procfs.environ_pids) == first
    assert tree.workspace_of(1401) == "ws-fixture"
    assert tree.workspace_of(700) == "ws-big"


def test_reused_pid_is_a_new_identity_and_read_again(root):
    """bash (1201) exits, the kernel reparents its children to init, and the pid is reused
    by a process started with a marker. Only the new 1201 has its environ read: the
    reparented children keep the workspace answer of their (pid, starttime)."""
    procfs = SpyProcFS(str(root))
    tree = ProcessTree(procfs)
    tree.scan()
    before = tree.environ_reads
    for child, comm, starttime in [(1302, "node", 60100), (700, "bigenv", 61000)]:
        (root / str(child) / "stat").write_bytes(stat_line(child, comm, 1, starttime))
    shutil.rmtree(root / "1250")  # the zombie is reaped by init
    (root / "1201" / "stat").write_bytes(stat_line(1201, "bash", 410, starttime=99999))
    (root / "1201" / "environ").write_bytes(b"PATH=/bin\0WORKSPACE_ID=ws-new\0")
    procfs.environ_pids.clear()
    tree.scan()
    assert sorted(procfs.environ_pids) == [1201]
    assert tree.environ_reads == before + 1
    assert tree.workspace_of(1201) == "ws-new"
    assert tree.workspace_of(1302) == "ws-fixture"
    assert tree.workspace_of(1401) == "ws-fixture"
    assert tree.workspace_of(700) == "ws-big"


def test_exited_process_disappears_on_next_scan(root):
    tree = ProcessTree(ProcFS(str(root)))
    tree.scan()
    shutil.rmtree(root / "123")
    tree.scan()
    assert 123 not in tree.procs
    assert tree.workspace_of(123) == ""


def test_process_vanishing_between_pids_and_read_is_skipped(root):
    class Racy(ProcFS):
        def read_known(self, pid):
            if pid == 123:
                shutil.rmtree(f"{self.root}/{pid}")
            return super().read_known(pid)

    procfs = Racy(str(root))
    assert 123 in procfs.pids()
    tree = ProcessTree(procfs)
    procs = tree.scan()
    assert sorted(p.pid for p in procs) == [p for p in ALL_PIDS if p != 123]
    assert tree.workspace_of(1401) == "ws-fixture"


def test_workspace_root_vanishing_mid_scan_does_not_break_the_scan(root):
    class Racy(ProcFS):
        def read_known(self, pid):
            if pid == 1302:
                shutil.rmtree(f"{self.root}/{pid}")
            return super().read_known(pid)

    tree = ProcessTree(Racy(str(root)))
    procs = tree.scan()
    assert 1302 not in tree.procs
    assert len(procs) == len(ALL_PIDS) - 1


def test_access_denied_mid_scan_is_skipped(root):
    class Denied(ProcFS):
        def read_known(self, pid):
            if pid == 410:
                raise AccessDenied(pid, "stat")
            return super().read_known(pid)

    tree = ProcessTree(Denied(str(root)))
    tree.scan()
    assert 410 not in tree.procs
    assert 1201 in tree.procs
    assert tree.workspace_of(1401) == "ws-fixture"


# -- ancestry -----------------------------------------------------------------------------

@pytest.mark.parametrize(("pid", "want"), [
    (1401, [1400, 1302, 1201, 410, 1]),
    (1302, [1201, 410, 1]),
    (2001, [1990, 1]),
    (57, [2]),
    (1, []),
    (2, []),
    (99999, []),
])
def test_ancestors_parent_first(root, pid, want):
    tree = ProcessTree(ProcFS(str(root)))
    tree.scan()
    assert [p.pid for p in tree.ancestors(pid)] == want


def test_ancestors_are_bounded(tmp_path):
    depth = MAX_ANCESTORS + 40
    chain = {1: 0} | {pid: pid - 1 for pid in range(2, depth + 1)}
    tree = ProcessTree(ProcFS(str(synthetic(tmp_path / "proc", chain))))
    scan_with_timeout(tree)
    got = [p.pid for p in tree.ancestors(depth)]
    assert got == list(range(depth - 1, depth - 1 - MAX_ANCESTORS, -1))


def test_ancestry_is_walked_once_and_follows_every_change_of_the_tree(tmp_path):
    """Ancestry is cached per process, and an exec (add), an exit (remove) or a reparenting
    seen by a scan is never answered from the tree as it was."""
    from dataclasses import replace

    root = synthetic(tmp_path / "proc", {1: 0, 10: 1, 20: 10, 30: 20})
    tree = ProcessTree(ProcFS(str(root)))
    tree.scan()
    first = tree.ancestors(30)
    assert [p.pid for p in first] == [20, 10, 1]
    assert tree.ancestors(30) is first   # the same chain, not walked again
    # an exec in the middle of the chain: the new program shows in its descendants' ancestry
    tree.add(replace(tree.procs[20], comm="execed"))
    assert [p.comm for p in tree.ancestors(30)] == ["execed", "p10", "p1"]
    # an exit in the chain: the walk stops where the tree no longer knows a parent
    tree.remove(10)
    assert [p.pid for p in tree.ancestors(30)] == [20]
    # a reparenting (the parent exited; init adopted the child) seen by a scan
    (root / "20" / "stat").write_bytes(stat_line(20, "p20", 1))
    tree.scan()
    assert [p.pid for p in tree.ancestors(30)] == [20, 1]
    # and a process replaced by an exec of its own is the start of a fresh walk
    tree.add(replace(tree.procs[30], ppid=1))
    assert [p.pid for p in tree.ancestors(30)] == [1]
    assert tree.ancestors(99999) == ()


def test_deep_chain_inherits_the_workspace(tmp_path):
    depth = 500
    chain = {1: 0} | {pid: pid - 1 for pid in range(2, depth + 1)}
    tree = ProcessTree(ProcFS(str(synthetic(tmp_path / "proc", chain,
                                            {2: b"WORKSPACE_ID=deep\0"}))))
    scan_with_timeout(tree)
    assert tree.workspace_of(depth) == "deep"
    assert tree.workspace_of(1) == ""
    assert tree.environ_reads == 2  # pid 1 and pid 2, nobody below


def test_ppid_cycles_do_not_hang(tmp_path):
    procs = {
        1: 0,
        10: 11, 11: 10,          # two-cycle
        12: 12,                  # its own parent
        20: 22, 21: 20, 22: 21,  # three-cycle
        30: 10,                  # child hanging off a cycle
    }
    tree = ProcessTree(ProcFS(str(synthetic(tmp_path / "proc", procs,
                                            {10: b"WORKSPACE_ID=cyc\0"}))))
    scan_with_timeout(tree)
    assert sorted(tree.procs) == sorted(procs)
    for pid in procs:
        anc = [p.pid for p in tree.ancestors(pid)]
        assert len(anc) == len(set(anc)) <= MAX_ANCESTORS
        assert pid not in anc
    assert [p.pid for p in tree.ancestors(21)] == [20, 22]
    assert tree.ancestors(12) == ()
    assert tree.workspace_of(30) == "cyc"
    # a second scan over the same cycles terminates too
    scan_with_timeout(tree)


# -- events -------------------------------------------------------------------------------

def test_event_carries_workspace_and_ancestors(root):
    tree = ProcessTree(ProcFS(str(root)))
    tree.scan()
    p = tree.procs[1401]
    ev = tree.event("exec", p, 12.5)
    assert (ev.kind, ev.time, ev.process) == ("exec", 12.5, p)
    assert ev.workspace == "ws-fixture"
    assert [a.pid for a in ev.ancestors] == [1400, 1302, 1201, 410, 1]
    js = event_to_json(ev)
    assert js["workspace"] == {"id": "ws-fixture"}
    assert [a["pid"] for a in js["process"]["ancestors"]] == [1400, 1302, 1201, 410, 1]
    assert js["process"]["ancestors"][0]["exe"] == "/tmp/xmrig"


def test_event_outside_a_workspace(root):
    tree = ProcessTree(ProcFS(str(root)))
    tree.scan()
    ev = tree.event("scan", tree.procs[2001], 1.0)
    assert ev.workspace == ""
    js = event_to_json(ev)
    assert js["workspace"] is None
    docker_id = "59de2a815200d473ab0a078bdcee0b8bc80aca90c1df285f4ecfdbca5566c2cd"
    assert js["container"] == {"id": docker_id}


def test_no_environ_value_but_the_workspace_id_reaches_event_output(root):
    tree = ProcessTree(ProcFS(str(root)))
    tree.scan()
    tree.scan()  # the cached path too
    out = json.dumps([event_to_json(tree.event(kind, p, 1.0))
                      for p in tree.procs.values() for kind in ("scan", "exec", "exit")])
    for canary in CANARIES:
        assert canary not in out, canary
    assert "ws-fixture" in out and "ws-big" in out


def test_workspace_membership_survives_reparenting(tmp_path):
    """A child that double-forks (reparented to init) with a cleared environment stays in
    the workspace it was seen in."""
    import shutil

    from agent.sources.procfs import ProcFS
    from agent.sources.proctree import ProcessTree

    root = tmp_path / "proc"

    def proc(pid: int, ppid: int, comm: str, environ: bytes) -> None:
        d = root / str(pid)
        d.mkdir(parents=True)
        fields = ([str(pid), f"({comm})", "S", str(ppid)] + ["0"] * 17 + [str(1000 + pid)]
                  + ["0"] * 30)
        (d / "stat").write_text(" ".join(fields) + "\n")
        (d / "cmdline").write_bytes(comm.encode() + b"\0")
        (d / "environ").write_bytes(environ)

    proc(1, 0, "init", b"")
    proc(10, 1, "shell", b"WORKSPACE_ID=ws-7\0")
    proc(11, 10, "daemon", b"")
    tree = ProcessTree(ProcFS(str(root)))
    tree.scan()
    assert tree.workspace_of(11) == "ws-7"
    # the shell exits; the daemon is reparented to init
    shutil.rmtree(root / "10")
    stat = (root / "11" / "stat").read_text().split(" ")
    stat[3] = "1"
    (root / "11" / "stat").write_text(" ".join(stat))
    tree.scan()
    assert tree.workspace_of(11) == "ws-7"


def _launcher_root(tmp_path: Path) -> tuple[Path, ProcFS]:
    """init, and a session shell (pid 20) started without the marker, running /bin/sh."""
    root = synthetic(tmp_path / "proc", {1: 0, 20: 1}, {1: b"", 20: b"HOME=/home/t\0"})
    (root / "20" / "exe").symlink_to("/bin/sh")
    (root / "20" / "cmdline").write_bytes(b"sh\0")
    return root, ProcFS(str(root))


def _exec(root: Path, pid: int, exe: str, cmdline: bytes, environ: bytes) -> None:
    """What an exec changes in /proc/PID: the program, its argv and its environment."""
    (root / str(pid) / "exe").unlink()
    (root / str(pid) / "exe").symlink_to(exe)
    (root / str(pid) / "cmdline").write_bytes(cmdline)
    (root / str(pid) / "environ").write_bytes(environ)


def test_a_process_that_execs_with_the_marker_enters_the_workspace(tmp_path):
    """Issue 13 defect 4: `exec env WORKSPACE_ID=ws-red ./sshd ...` from a shell started
    without the marker: the exec event and every later scan put it in ws-red."""
    root, fs = _launcher_root(tmp_path)
    tree = ProcessTree(fs)
    tree.scan()
    assert tree.workspace_of(20) == ""
    _exec(root, 20, "/bin/true", b"sshd\0-o\0stratum+tcp://pool:3333\0",
          b"WORKSPACE_ID=ws-red\0")
    tree.add(fs.read(20))  # the exec event
    assert tree.workspace_of(20) == "ws-red"
    tree.scan()
    assert tree.workspace_of(20) == "ws-red"


def test_a_scan_that_finds_another_program_reads_the_marker_again(tmp_path):
    """The exec event was lost or not handled yet: the scan sees another program where an
    empty answer was cached, and does not reuse it."""
    root, fs = _launcher_root(tmp_path)
    tree = ProcessTree(fs)
    tree.scan()
    _exec(root, 20, "/bin/true", b"sshd\0", b"WORKSPACE_ID=ws-red\0")
    tree.scan()
    assert tree.workspace_of(20) == "ws-red"


def test_the_same_program_outside_a_workspace_is_read_once(tmp_path):
    root, _ = _launcher_root(tmp_path)
    fs = SpyProcFS(str(root))
    tree = ProcessTree(fs)
    for _ in range(3):
        tree.scan()
    assert fs.environ_pids.count(20) == 1


def test_an_exec_with_a_cleared_environment_does_not_leave_the_workspace(tmp_path):
    root, fs = _launcher_root(tmp_path)
    (root / "20" / "environ").write_bytes(b"WORKSPACE_ID=ws-red\0")
    tree = ProcessTree(fs)
    tree.scan()
    assert tree.workspace_of(20) == "ws-red"
    _exec(root, 20, "/bin/true", b"xmrig\0", b"")   # `exec env -i ./xmrig`
    tree.add(fs.read(20))
    tree.scan()
    assert tree.workspace_of(20) == "ws-red"
