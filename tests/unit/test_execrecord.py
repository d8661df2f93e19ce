"""The exec record (bpf/events.h struct nw_exec_event) without a kernel: its decoder, the
marker table the kernel scans environments with, and what the observer makes of a record
whose argv and workspace marker the kernel took: a process gone before userspace looks
keeps both, a live one is not read for them, and what the kernel could not take whole is
read from procfs as before."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from agent import text
from agent.enrich.workspace import DEFAULT_MARKERS, find_marker
from agent.observer import Observer
from agent.sources import execrecord, kevents
from agent.sources.execrecord import exec_record, marker_table
from agent.sources.netstate import NetState
from agent.sources.procfs import ProcFS
from agent.sources.proctree import ProcessTree

MARKERS = DEFAULT_MARKERS  # NODEWARDEN_WORKSPACE_ID, WORKSPACE_ID, GITPOD_WORKSPACE_ID
CONTAINER = "a" * 64


def dec(**kw: object) -> kevents.RawEvent:
    return kevents.decode(exec_record(4242, comm=b"tool", filename=b"/usr/bin/tool", **kw))


# -- the decoder ------------------------------------------------------------------------------

def test_argv_keeps_odd_bytes_empty_arguments_and_spaces_as_procfs_does():
    argv = [b"/usr/bin/tool", b"a b", b"", b"k\xffw", "😀".encode(), b"", b""]
    r = dec(argv=argv)
    # what /proc/PID/cmdline parsing gives for the same bytes: trailing empties are padding
    assert r.argv == ("/usr/bin/tool", "a b", "", text.decode(b"k\xffw"), "😀")
    assert text.encode(r.argv[3]) == b"k\xffw" and r.argv_cut == 0


def test_a_cut_argv_is_marked_and_an_unreadable_one_is_not_taken():
    r = dec(argv=[b"/usr/bin/tool", b"x" * 100], cut=300_000)
    assert r.argv_cut == 300_000 and r.argv[1] == "x" * 100
    assert dec(argv=[b"/usr/bin/tool"], fault=True).argv_cut == -1
    assert dec().argv == () and dec().argv_cut == -1   # no argv: the observer reads procfs


@pytest.mark.parametrize(("marker", "more", "want", "scanned"), [
    (None, False, None, MARKERS),                                  # none set
    ((1, b"ws-7"), False, ("WORKSPACE_ID", "ws-7"), MARKERS),
    ((0, b"bad\x1bvalue"), False, None, MARKERS),                  # unprintable, nothing else
    ((0, b"bad\x1bvalue"), True, None, ()),                        # another may be set: procfs
    ((0, b"\xff" * 300), False, ("NODEWARDEN_WORKSPACE_ID", "\ufffd" * 253), MARKERS),
])
def test_the_marker_is_what_find_marker_says_of_the_environment(marker, more, want, scanned):
    r = dec(argv=[b"x"], markers=MARKERS, marker=marker, more=more)
    assert (r.marker, r.markers_scanned) == (want, scanned)


def test_the_marker_answer_agrees_with_find_marker_on_the_same_environment():
    env = b"PATH=/bin\0TOKEN=secret\0WORKSPACE_ID=ws-b\0NODEWARDEN_WORKSPACE_ID=ws-a\0"
    name, value = find_marker(env, MARKERS) or ("", "")
    r = dec(argv=[b"x"], markers=MARKERS, marker=(MARKERS.index(name), value.encode()),
            more=True)
    assert r.marker == ("NODEWARDEN_WORKSPACE_ID", "ws-a")


def test_a_record_scanned_for_names_never_loaded_is_not_trusted():
    data = bytearray(exec_record(1, argv=[b"x"], markers=MARKERS, marker=(0, b"ws")))
    struct.pack_into("<I", data, 28, 12345)   # marker_set: an id no table had
    r = kevents.decode(bytes(data))
    assert (r.marker, r.markers_scanned) == (None, ())


def test_a_short_record_is_an_error_not_an_event():
    with pytest.raises(struct.error):
        kevents.decode(exec_record(1)[:100])


# -- the marker table --------------------------------------------------------------------------

def test_the_marker_table_holds_names_masks_and_lengths_in_order():
    t = marker_table(["AB", "WORKSPACE_ID"])
    count, set_id = struct.unpack_from("<II", t)
    assert (count, set_id) == (2, execrecord.marker_set_id(["AB", "WORKSPACE_ID"]))
    assert len(t) == 8 + execrecord.MARKERS_MAX * (64 + 64 + 8)
    first = t[8:8 + 136]
    assert first[:64] == b"AB".ljust(64, b"\0") and first[64:128] == b"\xff\xff".ljust(64, b"\0")
    assert struct.unpack_from("<I", first, 128)[0] == 2


@pytest.mark.parametrize("names", [
    ["A", "B", "C", "D", "E"],                       # more than the kernel compares
    ["X" * (execrecord.MARKER_NAME_MAX + 1)],        # longer than it compares
])
def test_names_the_kernel_cannot_compare_turn_its_scan_off(names):
    assert struct.unpack_from("<II", marker_table(names)) == (0, 0)


# -- the observer --------------------------------------------------------------------------------

def _proc(root: Path, pid: int, *, comm: str = "tool", ppid: int = 1, state: str = "S",
          starttime: int = 5000, cmdline: bytes = b"/usr/bin/tool\0from-procfs\0",
          environ: bytes = b"", cgroup: str = f"0::/system.slice/docker-{CONTAINER}.scope\n",
          exe: str = "/bin/true") -> Path:
    d = root / str(pid)
    (d / "ns").mkdir(parents=True)
    fields = [str(pid), f"({comm})", state, str(ppid)] + ["0"] * 17 + [str(starttime)]
    (d / "stat").write_text(" ".join(fields + ["0"] * 30) + "\n")
    (d / "cmdline").write_bytes(cmdline)
    (d / "environ").write_bytes(environ)
    (d / "cgroup").write_text(cgroup)
    (d / "status").write_text("Name:\ttool\nUid:\t0\t0\t0\t0\n")
    os.symlink(exe, d / "exe")
    os.symlink("net:[4026531999]", d / "ns" / "net")
    return d


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    root.mkdir()
    _proc(root, 1, comm="init", cmdline=b"/sbin/init\0")
    return root


def _observer(root: Path, markers: tuple[str, ...] = MARKERS) -> Observer:
    """An observer after its start-up scan (of pid 1 only): environ_reads start at 0."""
    tree = ProcessTree(ProcFS(str(root)), markers)
    tree.scan()
    tree.environ_reads = 0
    return Observer(tree, NetState(str(root)), wall=lambda: 1000.0, mono=lambda: 10.0)


def _exec(obs: Observer, pid: int, **kw: object) -> kevents.RawEvent:
    kw.setdefault("argv", [b"/usr/bin/tool", b"--from-kernel"])
    kw.setdefault("markers", MARKERS)
    kw.setdefault("ts", 10**15)
    data = exec_record(pid, comm=b"tool", filename=b"/usr/bin/tool", uid=0, **kw)
    ev = obs.handle(kevents.decode(data))
    assert ev is not None
    return ev


def test_a_process_gone_before_userspace_looks_keeps_its_argv_and_workspace(proc):
    obs = _observer(proc)
    obs.handle(kevents.process_record(kevents.RecordKind.FORK, 1, 777, 1))
    ev = _exec(obs, 777, argv=[b"/usr/bin/tool", b"-o", b"stratum+tcp://pool:3333"],
               marker=(0, b"ws-gone"))
    p = ev.process
    assert p.cmdline == ("/usr/bin/tool", "-o", "stratum+tcp://pool:3333")
    assert (p.exe, p.comm, p.ppid, p.cmdline_cut) == ("/usr/bin/tool", "tool", 1, 0)
    assert ev.workspace == "ws-gone" and obs.tree.environ_reads == 0


def test_a_gone_process_with_a_cut_argv_says_so(proc):
    obs = _observer(proc)
    ev = _exec(obs, 778, argv=[b"/usr/bin/tool", b"x" * 4000], cut=123_456)
    assert ev.process.cmdline_truncated and ev.process.cmdline_cut == 123_456


def test_a_live_process_is_not_read_for_its_argv_or_environment(proc):
    # procfs holds another argv and another marker: the kernel's, taken at the exec, count
    obs = _observer(proc)
    d = _proc(proc, 900, comm="a) (b", environ=b"WORKSPACE_ID=from-environ\0")
    ev = _exec(obs, 900, marker=(1, b"ws-kernel"))
    p = ev.process
    assert p.cmdline == ("/usr/bin/tool", "--from-kernel")
    assert p.comm == "a) (b"   # from stat, parsed around the last parenthesis
    assert (p.exe, p.starttime, p.netns, p.container_id) == (
        "/bin/true", 5000, 4026531999, CONTAINER)
    st = os.stat("/bin/true")
    assert (p.exe_dev, p.exe_ino) == (st.st_dev, st.st_ino)
    assert ev.workspace == "ws-kernel" and obs.tree.environ_reads == 0
    # identity as a scan computes it
    assert p.id == ProcFS(str(proc)).read(900).id and d.is_dir()


def test_a_live_process_whose_argv_was_cut_is_read_for_head_and_tail(proc):
    obs = _observer(proc)
    _proc(proc, 901, cmdline=b"/usr/bin/tool\0" + b"y" * 10 + b"\0-o\0tail\0")
    ev = _exec(obs, 901, argv=[b"/usr/bin/tool", b"y" * 10], cut=5)
    assert ev.process.cmdline == ("/usr/bin/tool", "y" * 10, "-o", "tail")


def test_markers_scanned_for_other_names_send_the_tree_to_environ(proc):
    obs = _observer(proc, ("MY_WS",))
    _proc(proc, 902, environ=b"MY_WS=from-environ\0")
    ev = _exec(obs, 902, marker=(1, b"ws-kernel"))   # scanned for the default names
    assert ev.workspace == "from-environ" and obs.tree.environ_reads == 1


def test_a_process_killed_in_the_kernel_has_its_stat_and_the_kernels_argv(proc):
    obs = _observer(proc)
    _proc(proc, 903, state="Z", starttime=777, ppid=1)
    os.unlink(proc / "903" / "exe")
    ev = _exec(obs, 903, verdict=kevents.VERDICT_KILLED, slot=2, marker=(2, b"ws-k"),
               ts=10**18)
    p = ev.process
    assert (p.starttime, p.ppid, p.exe) == (777, 1, "/usr/bin/tool")
    assert p.cmdline == ("/usr/bin/tool", "--from-kernel") and ev.workspace == "ws-k"
    assert ev.kernel_verdict == (2, True)


def test_the_cgroup_is_read_once_per_cgroup_v2_id(proc, monkeypatch):
    obs = _observer(proc)
    _proc(proc, 910)
    _proc(proc, 911)
    reads = _counting_cgroup_reads(monkeypatch)
    a = _exec(obs, 910, cgroup_id=55)
    b = _exec(obs, 911, cgroup_id=55)
    assert a.process.container_id == b.process.container_id == CONTAINER
    assert reads.count("cgroup") == 1
    assert len(obs.caches()["observer_cgroups"]()) == 1


def test_a_cgroup_v1_host_reads_the_cgroup_every_time(proc, monkeypatch):
    # v1 paths name the container; the v2 id (the root here) does not
    hybrid = f"4:memory:/docker/{CONTAINER}\n0::/\n"
    obs = _observer(proc)
    _proc(proc, 920, cgroup=hybrid)
    _proc(proc, 921, cgroup="4:memory:/other\n0::/\n")
    a = _exec(obs, 920, cgroup_id=1)
    b = _exec(obs, 921, cgroup_id=1)
    assert (a.process.container_id, b.process.container_id) == (CONTAINER, "")


def _counting_cgroup_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    may = ProcFS._may

    def counting(self: ProcFS, pid: int, dfd: int, name: str, limit: int) -> bytes:
        reads.append(name)
        return may(self, pid, dfd, name, limit)

    monkeypatch.setattr(ProcFS, "_may", counting)
    return reads


POD = "0b8b0c6e-4d2f-4c1b-9a3e-2f7d6c5b4a39"
OTHER_POD = "11111111-2222-3333-4444-555555555555"


def test_a_mixed_host_whose_v2_path_names_the_container_reads_its_cgroup_once(
        proc, monkeypatch):
    # systemd driver on a hybrid host: the unified path names the container and the pod
    scope = f"/kubepods.slice/kubepods-pod{POD.replace('-', '_')}.slice/crio-{CONTAINER}.scope"
    mixed = f"4:memory:{scope}\n1:name=systemd:{scope}\n0::{scope}\n"
    obs = _observer(proc)
    _proc(proc, 940, cgroup=mixed)
    _proc(proc, 941, cgroup=mixed, exe="/bin/false")
    reads = _counting_cgroup_reads(monkeypatch)
    a = _exec(obs, 940, cgroup_id=77, task=(1, 1, 0, 1))
    b = _exec(obs, 941, cgroup_id=77, task=(1, 1, 0, 1))
    assert [(e.process.container_id, e.process.pod_uid) for e in (a, b)] == [(CONTAINER, POD)] * 2
    assert b.process.exe == "/bin/false" and reads.count("cgroup") == 1


@pytest.mark.parametrize("first", [
    # the v2 path names no container: the v1 paths tell the processes of one v2 cgroup apart
    f"4:memory:/docker/{CONTAINER}\n1:name=systemd:/docker/{CONTAINER}\n0::/init.scope\n",
    # the v2 path names the container, a v1 path another pod than the v2 path: the file's
    # pod uid (the first line's) is not the v2 path's
    f"4:memory:/kubepods/pod{OTHER_POD}/{CONTAINER}\n0::/kubepods/pod{POD}/{CONTAINER}\n",
])
def test_a_mixed_host_whose_v2_path_does_not_decide_reads_the_cgroup_every_time(
        proc, monkeypatch, first):
    obs = _observer(proc)
    _proc(proc, 950, cgroup=first)
    _proc(proc, 951, cgroup="4:memory:/user.slice\n0::/init.scope\n")
    reads = _counting_cgroup_reads(monkeypatch)
    a = _exec(obs, 950, cgroup_id=88, task=(1, 1, 0, 1))
    b = _exec(obs, 951, cgroup_id=88, task=(1, 1, 0, 1))
    assert a.process.container_id == CONTAINER
    assert (b.process.container_id, b.process.pod_uid) == ("", "")
    assert reads.count("cgroup") == 2 and len(obs.caches()["observer_cgroups"]()) == 0


# -- records that carry the task's facts (start time, parent, effective uid, netns) ----------

TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def test_the_task_facts_decode_to_a_start_time_in_clock_ticks():
    r = dec(argv=[b"/usr/bin/tool"], task=(1234 * TICK_NS + 5, 77, 1000, 4026532001))
    assert (r.ppid, r.task) == (77, (1234, 1000, 4026532001))
    assert dec(argv=[b"/usr/bin/tool"]).task is None   # not read: procfs says


def test_a_live_process_with_task_facts_is_read_for_its_executable_only(proc, monkeypatch):
    # stat, status and ns/net say otherwise: what the kernel read at the exec counts, and
    # they are not read at all
    obs = _observer(proc)
    d = _proc(proc, 930, ppid=1, starttime=5000, cgroup="0::/\n")
    for name in ("stat", "status"):
        (d / name).unlink()
    (d / "ns" / "net").unlink()
    ev = _exec(obs, 930, task=(6000 * TICK_NS, 1, 1000, 4026532002))
    p = ev.process
    assert (p.ppid, p.starttime, p.uid, p.netns, p.exe) == (1, 6000, 1000, 4026532002,
                                                            "/bin/true")
    st = os.stat("/bin/true")
    assert (p.exe_dev, p.exe_ino) == (st.st_dev, st.st_ino)
    assert p.cmdline == ("/usr/bin/tool", "--from-kernel") and p.comm == "tool"


def test_a_gone_process_with_task_facts_keeps_them_its_argv_and_workspace(proc):
    obs = _observer(proc)
    ev = _exec(obs, 931, argv=[b"/usr/bin/tool", b"-o", b"stratum+tcp://pool:3333"],
               marker=(0, b"ws-gone"), task=(7000 * TICK_NS, 1, 1000, 4026532003))
    p = ev.process
    assert p.cmdline == ("/usr/bin/tool", "-o", "stratum+tcp://pool:3333")
    assert (p.exe, p.ppid, p.starttime, p.uid, p.netns) == (
        "/usr/bin/tool", 1, 7000, 1000, 4026532003)
    assert ev.workspace == "ws-gone" and obs.tree.environ_reads == 0


def test_a_process_killed_in_the_kernel_with_task_facts_is_not_read(proc, monkeypatch):
    obs = _observer(proc)
    _proc(proc, 932, exe="/bin/false")   # a later process on the pid: not what was killed
    monkeypatch.setattr(ProcFS, "read_image", lambda *a, **k: pytest.fail("read /proc"))
    ev = _exec(obs, 932, verdict=kevents.VERDICT_KILLED, slot=1, marker=(2, b"ws-k"),
               task=(8000 * TICK_NS, 1, 0, 4026532004))
    p = ev.process
    assert (p.exe, p.starttime, p.ppid, p.netns) == ("/usr/bin/tool", 8000, 1, 4026532004)
    assert p.cmdline == ("/usr/bin/tool", "--from-kernel") and ev.workspace == "ws-k"
    assert ev.kernel_verdict == (1, True)


def test_a_second_exec_in_a_known_cgroup_reads_the_executable_by_path_alone(proc,
                                                                            monkeypatch):
    obs = _observer(proc)
    _proc(proc, 933)
    _proc(proc, 934, exe="/bin/false")
    _exec(obs, 933, cgroup_id=55, task=(1, 1, 0, 1))
    monkeypatch.setattr(ProcFS, "_open", lambda *a: pytest.fail("opened the directory"))
    ev = _exec(obs, 934, cgroup_id=55, task=(1, 1, 0, 1))
    assert ev.process.exe == "/bin/false" and ev.process.container_id == CONTAINER


def test_decoded_records_are_whole_raw_events_as_the_constructor_makes_them():
    # the decoders build RawEvents without the NamedTuple's __new__: every field is there,
    # in its place, with the defaults the constructor would give
    fork = kevents.decode(kevents.PROC_FORMAT.pack(5, kevents.FORK, 1234, 1, 7, b"bash"))
    assert fork == kevents.RawEvent(5, kevents.FORK, 1234, 1, 7, 0, 0, 0, 0, 0, "", "",
                                    "bash", "")
    assert type(fork) is kevents.RawEvent and len(fork) == len(kevents.RawEvent._fields)
    ex = kevents.decode(exec_record(42, comm=b"tool", filename=b"/usr/bin/tool", ts=9, uid=3,
                                    argv=[b"tool", b"-x"], cgroup_id=77,
                                    task=(6000 * TICK_NS, 1, 1000, 4026532002)))
    assert ex == kevents.RawEvent(9, kevents.EXEC, 42, 1, 3, 0, 0, 0, 0, 0, "", "", "tool",
                                  "/usr/bin/tool", ("tool", "-x"), None, 0, (), 77,
                                  task=(6000, 1000, 4026532002))
    assert type(ex) is kevents.RawEvent and ex.detail is None
    bare = kevents.decode(exec_record(43, comm=b"tool", filename=b"/usr/bin/tool"))
    assert (bare.ppid, bare.task, bare.argv_cut, bare.argv) == (0, None, -1, ())
