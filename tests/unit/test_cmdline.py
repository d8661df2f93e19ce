"""Command lines, bounded (agent/sources/cmdline.py): head and tail of a long one, the bytes
read, and the budget of what the agent holds, as /metrics shows it."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from agent.metrics import Metrics
from agent.sources import cmdline
from agent.sources.cmdline import (
    HEAD,
    TAIL,
    TIGHT_HEAD,
    CmdlineBudget,
    RawCmdline,
    argv_size,
    held_size,
    read_cmdline,
)
from agent.sources.procfs import ProcFS, parse_cmdline


def _read(path: Path, head: int = HEAD, tail: int = TAIL) -> RawCmdline:
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_cmdline(fd, head, tail)
    finally:
        os.close(fd)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 40), st.integers(1, 40))
def test_head_and_tail_of_any_file(tmp_path_factory, data, head, tail):
    path = tmp_path_factory.mktemp("c") / "cmdline"
    path.write_bytes(data)
    got = _read(path, head, tail)
    if len(data) <= head + tail:
        assert got == RawCmdline(data)
    else:
        assert (got.head, got.tail, got.cut) == (data[:head], data[-tail:], len(data) - head - tail)


def test_a_long_command_line_is_read_without_its_middle(tmp_path, monkeypatch):
    path = tmp_path / "cmdline"
    data = b"miner\0" + b"x" * 6_000_000 + b"\0-o\0stratum+tcp://p:3333\0"
    path.write_bytes(data)
    read = []
    real = os.pread
    monkeypatch.setattr(cmdline.os, "pread", lambda fd, n, off: read.append(n) or real(fd, n, off))
    got = _read(path)
    assert got.tail.endswith(b"\0-o\0stratum+tcp://p:3333\0")
    assert got.cut == len(data) - HEAD - TAIL
    assert sum(read) < HEAD + 2 * TAIL + 100 and len(read) < 60
    assert got.joined().split(b"\0")[0] == b"miner"


def test_on_the_real_procfs_the_tail_is_read_at_its_offset():
    """procfs serves /proc/PID/cmdline at any offset (pread), which the reader relies on."""
    fd = os.open("/proc/self/cmdline", os.O_RDONLY)
    try:
        whole = os.read(fd, 1 << 20)
        assert read_cmdline(fd, 1, 1) == RawCmdline(whole[:1], whole[-1:], len(whole) - 2)
    finally:
        os.close(fd)


@pytest.fixture
def long_proc(tmp_path: Path) -> Path:
    """A fake /proc with pids 1302 and 1303 whose cmdlines are 100 KiB long."""
    for pid in (1302, 1303):
        d = tmp_path / "proc" / str(pid)
        d.mkdir(parents=True)
        (d / "stat").write_bytes(b"%d (kw) S 1 1302 1302 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 "
                                 b"5000 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n" % pid)
        (d / "cmdline").write_bytes(b"kw\0" + b"\xff" * 100 * 1024 + b"\0end\0")
    return tmp_path / "proc"


def test_past_the_budget_new_command_lines_keep_less(long_proc):
    budget = CmdlineBudget(limit=1)
    procfs = ProcFS(str(long_proc), budget)
    first = procfs.read(1302)
    assert len(first.cmdline[1]) == HEAD - 3 and budget.held > 1
    second = procfs.read(1303)
    assert len(second.cmdline[1]) == TIGHT_HEAD - 3 and second.cmdline[-1] == "end"
    again = procfs.read(1302)  # the next scan: the same process is not counted again
    assert budget.cut == {"long": 1, "budget": 1}
    del first, second, again
    gc.collect()
    assert budget.held == 0  # released with the processes


def test_the_budget_is_exported(long_proc):
    metrics = Metrics()
    procfs = ProcFS(str(long_proc))
    metrics.watch_cmdlines(procfs.cmdlines)
    p = procfs.read(1302)
    samples = {f"{s.name}{s.labels or ''}": s.value
               for m in metrics.registry.collect() for s in m.samples}
    assert samples["nodewarden_cmdline_bytes"] == procfs.cmdlines.held >= len(p.cmdline[1])
    assert samples["nodewarden_cmdline_budget_bytes"] == cmdline.BUDGET
    assert samples["nodewarden_cmdlines_cut_total{'reason': 'long'}"] == 1
    assert "nodewarden_cmdlines_cut_total" in generate_latest(metrics.registry).decode()


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.lists(st.text(max_size=20), max_size=8).map(
                     lambda args: "\0".join(args).encode("utf-8", "surrogatepass"))))
def test_the_size_of_an_argv_read_is_what_it_holds(data):
    """argv_size (arithmetic for ASCII bytes) agrees with sys.getsizeof of what is held."""
    argv = parse_cmdline(data)
    assert argv_size(data, argv) == held_size(argv)


@pytest.fixture
def short_proc(tmp_path: Path) -> Path:
    """A fake /proc with pids 1402 (ASCII argv) and 1403 (a non-UTF-8, non-ASCII one)."""
    for pid, argv in ((1402, b"sleep\x00600\x00"), (1403, b"caf\xc3\xa9\0\xff\0")):
        d = tmp_path / "proc" / str(pid)
        d.mkdir(parents=True)
        (d / "stat").write_bytes(b"%d (kw) S 1 1402 1402 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 "
                                 b"5000 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n" % pid)
        (d / "cmdline").write_bytes(argv)
    return tmp_path / "proc"


def test_a_whole_command_line_read_is_held_until_its_process_is_freed(short_proc):
    budget = CmdlineBudget()
    procfs = ProcFS(str(short_proc), budget)
    first, second = procfs.read(1402), procfs.read(1403)
    assert first.cmdline == ("sleep", "600") and second.cmdline[0] == "café"
    assert budget.held == held_size(first.cmdline) + held_size(second.cmdline)
    assert budget.cut == {"long": 0, "budget": 0}
    del first
    gc.collect()
    assert budget.held == held_size(second.cmdline)
    del second
    gc.collect()
    assert budget.held == 0
