"""A process gone before its /proc/PID/cgroup is read (a miner killed in the kernel at its
exec) is still put in its container and pod: the exec record's cgroup v2 id is the inode of
the cgroup's directory, found under the cgroup2 mount (issue 12: on this hybrid host the
in-kernel kill's finding named no container)."""

from __future__ import annotations

from pathlib import Path

from test_execrecord import MARKERS

from agent.observer import Observer
from agent.sources import kevents
from agent.sources.execrecord import exec_record
from agent.sources.netstate import NetState
from agent.sources.procfs import ProcFS
from agent.sources.procfs.cgroupids import CgroupPaths, cgroup2_mount
from agent.sources.proctree import ProcessTree

CID = "ab" * 32
POD = "1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b"
CONTAINER_DIR = f"kubepods/burstable/pod{POD}/cri-containerd-{CID}.scope"


def test_the_cgroup2_mount_is_read_from_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "25 30 0:22 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
        "26 30 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
    assert cgroup2_mount(str(info)) == "/sys/fs/cgroup/unified"
    info.write_text("25 30 0:22 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    assert cgroup2_mount(str(info)) == ""
    assert cgroup2_mount(str(tmp_path / "missing")) == ""


def _hierarchy(root: Path, n_other: int = 0) -> int:
    """A kubelet-shaped unified hierarchy; the container cgroup's id (its inode)."""
    (root / CONTAINER_DIR).mkdir(parents=True)
    for i in range(n_other):
        (root / "system.slice" / f"unit-{i}.service").mkdir(parents=True)
    return (root / CONTAINER_DIR).stat().st_ino


def test_an_id_is_found_by_its_directory_and_one_walk_serves_them_all(tmp_path: Path) -> None:
    cid = _hierarchy(tmp_path, 20)
    paths = CgroupPaths(str(tmp_path))
    assert paths.path_of(cid) == "/" + CONTAINER_DIR
    other = (tmp_path / "system.slice" / "unit-7.service").stat().st_ino
    assert paths.path_of(other) == "/system.slice/unit-7.service"
    assert paths.walks == 1
    # an id no directory has is remembered as such: no walk per exec of a tenant that
    # makes its processes exit at once
    assert paths.path_of(123456789) == "" and paths.path_of(123456789) == ""
    assert paths.walks == 2
    assert paths.path_of(0) == "" and CgroupPaths("").path_of(cid) == ""


def test_what_is_remembered_is_bounded(tmp_path: Path) -> None:
    cid = _hierarchy(tmp_path, 200)
    paths = CgroupPaths(str(tmp_path), maxsize=50)
    assert paths.path_of(cid) == "/" + CONTAINER_DIR
    assert len(paths) <= paths.maxsize == 50


def _proc_root(tmp_path: Path) -> Path:
    """A procfs with pid 1 only: the exec'd process is gone when the agent looks."""
    root = tmp_path / "proc"
    d = root / "1"
    (d / "ns").mkdir(parents=True)
    (d / "stat").write_text("1 (init) S 0 " + " ".join(["0"] * 17) + " 9 " +
                            " ".join(["0"] * 30) + "\n")
    (d / "cmdline").write_bytes(b"/sbin/init\0")
    (d / "environ").write_bytes(b"")
    (d / "cgroup").write_text("0::/init.scope\n")
    (d / "status").write_text("Name:\tinit\nUid:\t0\t0\t0\t0\n")
    (d / "exe").symlink_to("/sbin/init")
    (d / "ns" / "net").symlink_to("net:[4026531999]")
    return root


def test_a_process_killed_at_its_exec_is_in_its_container_and_pod(tmp_path: Path) -> None:
    cid = _hierarchy(tmp_path / "cgroup")
    tree = ProcessTree(ProcFS(str(_proc_root(tmp_path))), MARKERS)
    tree.scan()
    obs = Observer(tree, NetState(str(tmp_path / "proc")), wall=lambda: 1000.0,
                   mono=lambda: 10.0, cgroup_paths=CgroupPaths(str(tmp_path / "cgroup")))
    rec = exec_record(4242, comm=b"xmrig", filename=b"/tmp/xmrig", ts=10**15,
                      argv=[b"/tmp/xmrig", b"-o", b"pool:3333"], markers=MARKERS,
                      verdict=kevents.VERDICT_KILLED, cgroup_id=cid)
    ev = obs.handle(kevents.decode(rec))
    assert ev is not None
    p = ev.process
    assert (p.pid, p.exe, p.container_id, p.pod_uid) == (4242, "/tmp/xmrig", CID, POD)
    # a cgroup that names no container (a host service) adds nothing
    host = (tmp_path / "cgroup" / "kubepods").stat().st_ino
    rec = exec_record(4243, comm=b"xmrig", filename=b"/tmp/xmrig", ts=10**15,
                      argv=[b"/tmp/xmrig"], markers=MARKERS, cgroup_id=host)
    ev = obs.handle(kevents.decode(rec))
    assert ev is not None and (ev.process.container_id, ev.process.pod_uid) == ("", "")
