"""Hypothesis: the procfs parsers, the container-id and workspace-marker extractors, and the
ProcFS reader never crash on what a hostile or racing process can put in front of them.

parse_stat may raise only ValueError (its documented "not a stat line"); the other pure
functions raise nothing; ProcFS.read raises only ProcessGone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.enrich.workspace import DEFAULT_MARKERS, MAX_WORKSPACE_ID, find_marker
from agent.errors import ProcessGone
from agent.model import Process
from agent.sources.procfs import (
    ProcFS,
    container_id_from_cgroup,
    parse_cmdline,
    parse_netns,
    parse_stat,
    parse_status_uid,
)
from agent.sources.proctree import MAX_ANCESTORS, ProcessTree

# Pure functions: cheap, many examples. Filesystem properties: modest, no deadline.
pure = settings(max_examples=500, deadline=None)
# The filesystem properties take the session-scoped tmp_path_factory and make a fresh
# directory per example, so no function-scoped fixture is shared between examples and the
# function_scoped_fixture health check has nothing to warn about.
fs = settings(max_examples=200, deadline=None)

STATES = "RSDZTtXIPWK"
comms = st.binary(max_size=64)  # any bytes: ')', '(', spaces, newlines, NUL, invalid UTF-8
uints = st.integers(min_value=0, max_value=2**64 - 1)


def stat_line(pid: int, comm: bytes, state: str, ppid: int, flags: int, starttime: int) -> bytes:
    fields = [b"%d" % pid, b"(" + comm + b")", state.encode(), b"%d" % ppid, b"1", b"1", b"0",
              b"-1", b"%d" % flags] + [b"0"] * 12 + [b"%d" % starttime] + [b"7"] * 30
    return b" ".join(fields) + b"\n"


stat_lines = st.builds(stat_line, st.integers(1, 4194304), comms, st.sampled_from(STATES),
                       st.integers(0, 4194304), st.integers(0, 2**32 - 1), uints)
# stat-shaped noise: a valid prefix, then garbage, so parsing gets past the comm
stat_noise = st.builds(lambda pid, comm, tail: b"%d (" % pid + comm + b") " + tail,
                       st.integers(0, 99999), comms, st.binary(max_size=300))


# -- pure functions never crash -----------------------------------------------------------

@pure
@given(st.one_of(st.binary(max_size=600), stat_noise, stat_lines))
def test_parse_stat_raises_only_value_error(data):
    with contextlib.suppress(ValueError):
        parse_stat(data)


@pure
@given(st.integers(1, 4194304), comms, st.sampled_from(STATES), st.integers(0, 4194304),
       st.integers(0, 2**32 - 1), uints)
def test_parse_stat_round_trips_any_comm(pid, comm, state, ppid, flags, starttime):
    st_ = parse_stat(stat_line(pid, comm, state, ppid, flags, starttime))
    assert st_.comm.encode("utf-8", "surrogateescape") == comm
    assert (st_.pid, st_.state, st_.ppid, st_.flags, st_.starttime) == (pid, state, ppid, flags,
                                                                        starttime)


@pure
@given(st.binary(max_size=2000))
def test_parse_cmdline_never_raises(data):
    args = parse_cmdline(data)
    assert isinstance(args, tuple)
    assert all(isinstance(a, str) and "\0" not in a for a in args)


@pure
@given(st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\0")),
                min_size=1, max_size=8), st.booleans())
def test_parse_cmdline_round_trips_argv(argv, trailing_nul):
    # The kernel terminates every argument with NUL; trailing empty arguments are
    # indistinguishable from the NUL padding some programs leave after rewriting argv,
    # so they are dropped; every argument up to the last non-empty one round-trips.
    data = b"\0".join(a.encode() for a in argv) + (b"\0" if trailing_nul else b"")
    expected = list(argv)
    while expected and expected[-1] == "":
        expected.pop()
    assert parse_cmdline(data) == tuple(expected)


@pure
@given(st.text(max_size=200))
def test_parse_netns_never_raises(link):
    assert isinstance(parse_netns(link), int)


@pure
@given(st.sampled_from(["net", "mnt", "pid", "user", "uts", "ipc", "cgroup", "time"]),
       st.integers(0, 2**32 - 1))
def test_parse_netns_round_trips(kind, inode):
    assert parse_netns(f"{kind}:[{inode}]") == inode


@pure
@given(st.one_of(st.binary(max_size=600),
                 st.builds(lambda a, b: a + b"\nUid:" + b, st.binary(max_size=100),
                           st.binary(max_size=100))))
def test_parse_status_uid_raises_only_value_error(data):
    with contextlib.suppress(ValueError):
        parse_status_uid(data)


@pure
@given(st.lists(st.integers(0, 2**32 - 1), min_size=4, max_size=4), st.binary(max_size=200))
def test_parse_status_uid_round_trips(uids, other):
    other = other.replace(b"\nUid:", b"\nXid:")
    uid_line = b"\t".join(b"%d" % u for u in uids)
    data = b"Name:\tx\n" + other + b"\nUid:\t" + uid_line + b"\nGid:\t0\n"
    assert parse_status_uid(data) == uids[1]


@pure
@given(st.text(max_size=600))
def test_container_id_never_raises_and_is_an_id_from_the_text(text):
    got = container_id_from_cgroup(text)
    assert got == "" or (re.fullmatch(r"[0-9a-f]{64}", got) and got in text)


hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
CGROUP_TEMPLATES = [
    "0::/system.slice/docker-{id}.scope\n",
    "0::/docker/{id}\n",
    "12:memory:/docker/{id}\n11:cpu,cpuacct:/docker/{id}\n0::/\n",
    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod}.slice/cri-containerd-{id}.scope\n",
    "0::/kubepods/burstable/pod{pod}/{id}\n",
    "0::/kubepods.slice/kubepods-pod{pod}.slice/crio-{id}.scope\n",
    "0::/machine.slice/libpod-{id}.scope/container\n",
    "0::/docker/{outer}/docker/{id}\n",
]


@pure
@given(st.sampled_from(CGROUP_TEMPLATES), hex64, hex64, st.uuids())
def test_container_id_round_trips_every_runtime_shape(template, cid, outer, pod):
    text = template.format(id=cid, outer=outer, pod=str(pod).replace("-", "_"))
    assert container_id_from_cgroup(text) == cid


marker_names = st.one_of(st.sampled_from(DEFAULT_MARKERS), st.text(max_size=30))


@pure
@given(st.binary(max_size=2000), st.lists(marker_names, max_size=4))
def test_find_marker_never_raises(environ, markers):
    got = find_marker(environ, markers)
    if got is not None:
        name, value = got
        assert name in markers
        assert value and value.isprintable()


env_names = st.from_regex(r"[A-Z][A-Z0-9_]{0,20}", fullmatch=True).filter(
    lambda n: n not in DEFAULT_MARKERS)
env_values = st.binary(max_size=100).map(lambda b: b.replace(b"\0", b""))
ws_ids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=400)


@pure
@given(st.lists(st.tuples(env_names, env_values), max_size=20), st.integers(0, 20), ws_ids,
       st.booleans())
def test_find_marker_returns_the_marker_value_and_nothing_else(entries, at, ws, terminated):
    """Wherever the marker sits among other variables, the answer is its (bounded) value."""
    items = [n.encode() + b"=" + v for n, v in entries]
    items.insert(min(at, len(items)), b"WORKSPACE_ID=" + ws.encode())
    environ = b"\0".join(items) + (b"\0" if terminated else b"")
    assert find_marker(environ, DEFAULT_MARKERS) == ("WORKSPACE_ID", ws[:MAX_WORKSPACE_ID])


# -- ProcFS.read over generated pid directories -------------------------------------------

link_targets = st.text(st.characters(codec="utf-8", exclude_characters="\0"),
                       min_size=1, max_size=300)


@fs
@given(stat=st.one_of(st.binary(max_size=600), stat_noise, stat_lines),
       cmdline=st.binary(max_size=2000), cgroup=st.binary(max_size=2000),
       environ=st.binary(max_size=2000), status=st.one_of(st.none(), st.binary(max_size=600)),
       exe=st.one_of(st.none(), link_targets), netns=st.one_of(st.none(), link_targets))
def test_procfs_read_raises_only_process_gone(tmp_path_factory, stat, cmdline, cgroup, environ,
                                              status, exe, netns):
    root = tmp_path_factory.mktemp("fuzzproc")
    d = root / "4242"
    d.mkdir()
    (d / "stat").write_bytes(stat)
    (d / "cmdline").write_bytes(cmdline)
    (d / "cgroup").write_bytes(cgroup)
    (d / "environ").write_bytes(environ)
    if status is not None:
        (d / "status").write_bytes(status)
    if exe is not None:
        os.symlink(exe, d / "exe")
    if netns is not None:
        (d / "ns").mkdir()
        os.symlink(netns, d / "ns" / "net")
    procfs = ProcFS(str(root))
    try:
        p = procfs.read(4242)
    except ProcessGone as e:
        assert e.pid == 4242
        with pytest.raises(ProcessGone):
            procfs.stat(4242)
    else:
        assert isinstance(p, Process)
        assert p.comm == procfs.stat(4242).comm
        assert all(isinstance(a, str) for a in p.cmdline)
        assert p.container_id == "" or p.container_id in cgroup.decode("utf-8", "replace")
    marker = procfs.environ_marker(4242, DEFAULT_MARKERS)
    assert marker is None or marker[0] in DEFAULT_MARKERS
    shutil.rmtree(root)


# -- ProcessTree over generated ppid graphs -----------------------------------------------

def _tree_dir(root: Path, parents: dict[int, int], marked: set[int]) -> Path:
    for pid, ppid in parents.items():
        d = root / str(pid)
        d.mkdir()
        (d / "stat").write_bytes(stat_line(pid, b"p", "S", ppid, 0, 100 + pid))
        if pid in marked:
            (d / "environ").write_bytes(b"PATH=/bin\0WORKSPACE_ID=ws-%d\0" % pid)
    return root


graphs = st.dictionaries(st.integers(1, 60), st.integers(0, 60), min_size=1, max_size=40)


@fs
@given(graphs, st.sets(st.integers(1, 60), max_size=10))
def test_tree_over_any_ppid_graph_terminates_with_sane_ancestry(tmp_path_factory, parents, marked):
    root = _tree_dir(tmp_path_factory.mktemp("fuzztree"), parents, marked)
    tree = ProcessTree(ProcFS(str(root)))
    tree.scan()
    assert sorted(tree.procs) == sorted(parents)
    for pid in parents:
        anc = [p.pid for p in tree.ancestors(pid)]
        assert len(anc) == len(set(anc)) <= MAX_ANCESTORS
        assert pid not in anc
        if anc:
            assert anc[0] == parents[pid]
        assert tree.workspace_of(pid) in {""} | {f"ws-{m}" for m in marked}
    shutil.rmtree(root)


@fs
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=40), st.sets(st.integers(1, 40)))
def test_tree_workspace_is_inherited_down_a_forest(tmp_path_factory, draws, marked):
    """Acyclic trees: a process is in its parent's workspace if the parent is in one, else
    in the one its own environ marks, else in none."""
    parents = {pid: (draws[pid - 1] % pid) for pid in range(1, len(draws) + 1)}  # ppid < pid
    root = _tree_dir(tmp_path_factory.mktemp("fuzzforest"), parents, marked)
    tree = ProcessTree(ProcFS(str(root)))
    tree.scan()
    reads = tree.environ_reads
    for pid in sorted(parents):
        inherited = tree.workspace_of(parents[pid])
        own = f"ws-{pid}" if pid in marked else ""
        assert tree.workspace_of(pid) == (inherited or own)
    tree.scan()
    assert tree.environ_reads == reads  # second scan: no environ read at all
    shutil.rmtree(root)
