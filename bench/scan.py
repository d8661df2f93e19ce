#!/usr/bin/env python3
"""Benchmark: a full procfs scan, in microseconds per process, against psutil and ps.

Measured, interleaved in every repetition so that machine drift hits all of them alike:

  procfs.read      ProcFS.read over every pid (the raw reader: stat, cmdline, exe, cgroup, netns)
  tree first scan  ProcessTree.scan() on a fresh tree: the above plus workspace resolution,
                   which reads environ of every process not already inside a known workspace
  tree rescan      ProcessTree.scan() again on the same tree: /proc/PID/stat and a stat of
                   /proc/PID/exe of every process it knows (ProcFS.refresh), environ cached
  psutil           psutil.process_iter(['pid','ppid','create_time','name','exe','cmdline','uids']),
                   warm (its pid -> Process cache filled) and cold (cache cleared first);
                   psutil reads stat, cmdline, exe and status, but no cgroup, netns or environ
  ps               `ps -eo pid,ppid,lstart,args`, the whole run as a subprocess
  C walk 4 files   bench/procwalk.c (built here with cc -O2): opens every /proc/PID and reads
                   stat, cmdline, environ and the exe link, its own clock around the walk only
                   (the reference of the rescan: issue 10, target 7)
  C walk, same files   the files the first scan reads, by the same rules: stat, cmdline,
                   exe link and stat through it, fstat of the directory, status of root-owned
                   processes, cgroup, ns/net, and environ of the pids the first scan read it of
                   (the reference of the first scan)

at the live process count, then again with --extra idle processes the benchmark starts
itself: half of them in workspaces (a `sleep` root with WORKSPACE_ID in its environ and
uid 1000, with `sleep` children that inherit it), half plain root-owned `sleep`s without a
marker (each one costs the first scan an environ read). Every process started is killed
and reaped on exit, Ctrl-C and SIGTERM included; the children also die with the benchmark
(PR_SET_PDEATHSIG) if it is killed outright.

Reported: the median over --repeat repetitions of each method's time per process (each
method divided by the processes it saw), and the median of the per-repetition ratios
ours/psutil and ours/ps. Target: the tree scan at or below psutil per process.

    .venv/bin/python bench/scan.py [--extra 2000] [--repeat 15] [--json] [--profile]
        [--startup-rounds 30] [--startup-vs OTHER_CHECKOUT] [--startup-only]

Start-up (issue 10, target 7: `scan` on an empty procfs <= 2.5x `python -c pass`): whole
processes in turn, with the agent's bytecode compiled first (as pip installs it), wall and
CPU time; `--startup-vs` times another checkout's `scan` (its own .venv) in the same turns.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import ctypes
import functools
import gc
import json
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # bench/common.py
import psutil

from agent.errors import AccessDenied, ProcessGone
from agent.model import Process
from agent.sources.procfs import ProcFS, parse_cmdline, parse_stat
from agent.sources.procfs.cgroup import CGROUPS
from agent.sources.proctree import ProcessTree

PSUTIL_ATTRS = ["pid", "ppid", "create_time", "name", "exe", "cmdline", "uids"]
PS_ARGV = ["ps", "-eo", "pid,ppid,lstart,args"]
WORKSPACE_UID = 1000
CHILDREN_PER_WORKSPACE = 49  # a workspace root and its children: 50 processes

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


# -- the extra processes ------------------------------------------------------------------

def _pgrp_members(pgid: int, comm: bytes | None = None) -> list[int]:
    """Pids of processes (zombies included) in process group `pgid`, only those whose comm
    is `comm` if given."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and (
                comm is None or data[data.find(b"(") + 1 : data.rfind(b")")] == comm):
            out.append(int(name))
    return out


class Sleepers:
    """`count` idle processes in one process group of their own, started and killed here.

    Half (rounded to whole workspaces) are workspace trees: a `sleep` root carrying
    WORKSPACE_ID=ws-bench-N in its environ, running as uid 1000, with `sleep` children
    that inherit environ and uid. The rest are root-owned `sleep`s without a marker.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.pgid = 0
        self.children: list[int] = []
        self.sleep = shutil.which("sleep") or "/bin/sleep"
        per_ws = CHILDREN_PER_WORKSPACE + 1
        self.workspaces = (count // 2) // per_ws
        self.plain = count - self.workspaces * per_ws
        self.in_workspaces = self.workspaces * per_ws

    def _fork(self, body: Callable[[], None]) -> int:
        """Fork a child that joins our process group and runs `body` (which must exec)."""
        pid = os.fork()
        if pid == 0:
            try:
                os.setpgid(0, self.pgid)
                body()
            finally:
                os._exit(127)
        # also from here: no race with the child; OSError: it already exec'd or set it itself
        with contextlib.suppress(OSError):
            os.setpgid(pid, self.pgid or pid)
        if not self.pgid:
            self.pgid = pid
        self.children.append(pid)
        return pid

    def _exec_sleep(self, env: dict[str, str], parent: int) -> None:
        # after any setuid (a credential change clears the death signal), then exec
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the death signal was armed
            os._exit(1)
        os.execve(self.sleep, [self.sleep, "600"], env)

    def start(self, timeout: float = 60.0) -> None:
        # Orphans of a killed workspace root are reparented to us, so we reap them too.
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        me = os.getpid()
        base_env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
        for _ in range(self.plain):
            self._fork(lambda: self._exec_sleep(base_env, me))
        for n in range(self.workspaces):
            env = dict(base_env, HOME="/home/user", WORKSPACE_ID=f"ws-bench-{n}")
            self._fork(functools.partial(self._workspace_root, env, me))
        want = self.plain + self.in_workspaces
        deadline = time.monotonic() + timeout
        # every member has exec'd `sleep` (not a forked copy of this interpreter any more)
        while len(_pgrp_members(self.pgid, b"sleep")) < want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(_pgrp_members(self.pgid, b'sleep'))} of {want} "
                                   f"extra processes started within {timeout:.0f} s")
            time.sleep(0.05)

    def _workspace_root(self, env: dict[str, str], bench: int) -> None:
        os.setgroups([])
        os.setgid(WORKSPACE_UID)
        os.setuid(WORKSPACE_UID)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != bench:
            os._exit(1)
        root = os.getpid()
        for _ in range(CHILDREN_PER_WORKSPACE):
            if os.fork() == 0:
                try:
                    self._exec_sleep(env, root)
                finally:
                    os._exit(127)
        os.execve(self.sleep, [self.sleep, "600"], env)

    def stop(self) -> None:
        """Kill the group, reap every child and reparented orphan, check nothing is left."""
        if not self.pgid:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
        deadline = time.monotonic() + 10
        left = _pgrp_members(self.pgid)
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = _pgrp_members(self.pgid)
        if left:
            raise RuntimeError(f"{len(left)} benchmark processes survived cleanup: {left[:10]}")
        self.pgid = 0


# -- the measured methods -----------------------------------------------------------------

HERE = os.path.dirname(os.path.abspath(__file__))
WALK4 = ["stat", "cmdline", "environ", "exe"]
WALK_FIRST = ["stat", "cmdline", "exe", "exe.stat", "dir.fstat", "status.root", "cgroup",
              "ns/net", "environ"]


def build_walk(tmp: str) -> str | None:
    """bench/procwalk.c compiled into `tmp`; None without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    out = os.path.join(tmp, "procwalk")
    subprocess.run([cc, "-O2", "-o", out, os.path.join(HERE, "procwalk.c")], check=True)
    return out


def c_walk(binary: str, files: list[str], environ_pids: str | None = None
           ) -> Callable[[], tuple[int, float]]:
    """One walk by the C program: (processes, seconds by its own clock)."""
    argv = [binary, "1"] + (["--environ-pids", environ_pids] if environ_pids else []) + files

    def run() -> tuple[int, float]:
        out = subprocess.run(argv, stdout=subprocess.PIPE, check=True).stdout.split()
        return int(out[0]), int(out[1]) / 1e9
    return run


class EnvironSpy(ProcFS):
    """Records the pids whose environ a scan reads."""

    def __init__(self) -> None:
        super().__init__()
        self.environ_pids: list[int] = []

    def environ_marker(self, pid: int, markers: Any) -> tuple[str, str] | None:
        self.environ_pids.append(pid)
        return super().environ_marker(pid, markers)


def environ_pid_file(tmp: str) -> str:
    """The pids a first scan reads environ of, now, in a file for the C walk."""
    spy = EnvironSpy()
    ProcessTree(spy).scan()
    path = os.path.join(tmp, "environ-pids")
    with open(path, "w") as f:
        f.write("".join(f"{pid}\n" for pid in spy.environ_pids))
    return path

def read_all(fs: ProcFS) -> int:
    n = 0
    for pid in fs.pids():
        try:
            fs.read(pid)
            n += 1
        except (ProcessGone, AccessDenied):
            pass
    return n


def psutil_scan() -> int:
    n = 0
    for _ in psutil.process_iter(PSUTIL_ATTRS):
        n += 1
    return n


def psutil_cold() -> int:
    psutil.process_iter.cache_clear()
    return psutil_scan()


def ps_scan() -> int:
    out = subprocess.run(PS_ARGV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         check=True).stdout
    return out.count(b"\n") - 1  # the header line


def timed(fn: Callable[[], int | tuple[int, float]]) -> tuple[float, int]:
    """(microseconds per process, processes seen) of one call; a call that returns
    (processes, seconds) times itself (the C walk, without its process start)."""
    gc.collect()
    t0 = time.perf_counter()
    got = fn()
    dt = time.perf_counter() - t0
    n = got if isinstance(got, int) else got[0]
    if not isinstance(got, int):
        dt = got[1]
    if n <= 0:
        raise RuntimeError(f"{fn} saw no processes")
    return dt * 1e6 / n, n


METHODS = ("procfs.read", "tree first scan", "tree rescan", "psutil", "psutil cold", "ps",
           "C walk 4 files", "C walk, same files")
OURS = ("procfs.read", "tree first scan", "tree rescan")
REFS = ("psutil", "psutil cold", "ps", "C walk 4 files", "C walk, same files")


def run_phase(repeat: int, walk: str | None, tmp: str) -> dict[str, Any]:
    fs = ProcFS()
    warm_tree = ProcessTree(fs)
    warm_tree.scan()
    psutil_scan()  # fill psutil's process_iter cache
    fresh_reads: list[int] = []

    def fresh() -> int:
        tree = ProcessTree(ProcFS())
        n = len(tree.scan())
        fresh_reads.append(tree.environ_reads)
        return n

    rescan_reads: list[int] = []

    def rescan() -> int:
        before = warm_tree.environ_reads
        n = len(warm_tree.scan())
        rescan_reads.append(warm_tree.environ_reads - before)
        return n

    fns: dict[str, Callable[[], int | tuple[int, float]]] = {
        "procfs.read": lambda: read_all(fs),
        "tree first scan": fresh,
        "tree rescan": rescan,
        "psutil cold": psutil_cold,
        "psutil": psutil_scan,  # after the cold run, so its cache is warm
        "ps": ps_scan,
    }
    if walk is not None:
        fns["C walk 4 files"] = c_walk(walk, WALK4)
        fns["C walk, same files"] = c_walk(walk, WALK_FIRST, environ_pid_file(tmp))
    samples: dict[str, list[float]] = {k: [] for k in fns}
    counts: dict[str, list[int]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            us, n = timed(fn)
            samples[name].append(us)
            counts[name].append(n)
    ratios = {}
    for ours in OURS:
        for ref in (r for r in REFS if r in fns):
            ratios[f"{ours} / {ref}"] = statistics.median(
                a / b for a, b in zip(samples[ours], samples[ref], strict=True))  # one per pass
    return {
        "processes": statistics.median(counts["tree first scan"]),
        "environ_reads_first_scan": statistics.median(fresh_reads),
        "environ_reads_rescan": statistics.median(rescan_reads),
        "us_per_process": {k: statistics.median(v) for k, v in samples.items()},
        "us_per_process_min": {k: min(v) for k, v in samples.items()},
        "us_per_process_max": {k: max(v) for k, v in samples.items()},
        "ratios": ratios,
    }


# -- where the time goes --------------------------------------------------------------------

def breakdown(rounds: int = 5) -> dict[str, float]:
    """Median microseconds per process of each step ProcFS.read and the first scan take,
    measured one step at a time over every pid (directory descriptors opened beforehand)."""
    pids = ProcFS().pids()
    paths: dict[int, str] = {}
    for pid in pids:
        with contextlib.suppress(OSError):  # the process may have exited since
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            paths[os.open(f"/proc/{pid}", flags)] = f"/proc/{pid}"
    dfds = list(paths)

    def read_file(name: str, limit: int) -> Callable[[int], Any]:
        def step(dfd: int) -> Any:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dfd)
            try:
                return os.read(fd, limit)
            finally:
                os.close(fd)
        return step

    def link(name: str) -> Callable[[int], Any]:
        return lambda dfd: os.readlink(name, dir_fd=dfd)

    def open_close(dfd: int) -> None:
        os.close(os.open(paths[dfd], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))

    stat_bytes = []
    cmd_bytes = []
    cg_bytes = []
    for dfd in dfds:
        try:
            stat_bytes.append(read_file("stat", 4096)(dfd))
            cmd_bytes.append(read_file("cmdline", 65536)(dfd))
            cg_bytes.append(read_file("cgroup", 65536)(dfd))
        except OSError:
            pass
    steps: dict[str, Callable[[int], Any]] = {
        "open+close /proc/PID dir": open_close,
        "read stat": read_file("stat", 4096),
        "read cmdline": read_file("cmdline", 65536),
        "readlink exe": link("exe"),
        "stat exe": lambda dfd: os.stat("exe", dir_fd=dfd),
        "fstat dir (uid)": os.fstat,
        "read status (root-owned only)": read_file("status", 8192),
        "read cgroup": read_file("cgroup", 65536),
        "readlink ns/net": link("ns/net"),
        "read environ (first scan)": read_file("environ", 65536),
    }
    out: dict[str, float] = {}
    for name, step in steps.items():
        runs = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for dfd in dfds:
                # timed: suppress() would add ~0.2 us per step to what is measured
                try:  # noqa: SIM105
                    step(dfd)
                except OSError:
                    pass
            runs.append((time.perf_counter() - t0) * 1e6 / len(dfds))
        out[name] = statistics.median(runs)
    py_steps: dict[str, Callable[[], Any]] = {
        "parse_stat": lambda: [parse_stat(b) for b in stat_bytes],
        "parse_cmdline": lambda: [parse_cmdline(b) for b in cmd_bytes],
        "CGROUPS.parse (cached by bytes)": lambda: [CGROUPS.parse(b) for b in cg_bytes],
        "Process() (derived fields, xxhash id)": lambda: [
            Process(pid=i, ppid=1, starttime=i, comm="sleep", exe="/usr/bin/sleep",
                    cmdline=("sleep", "600")) for i in range(len(dfds))],
    }
    for name, fn in py_steps.items():
        runs = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn()
            runs.append((time.perf_counter() - t0) * 1e6 / len(dfds))
        out[name] = statistics.median(runs)
    for dfd in dfds:
        os.close(dfd)
    root_owned = sum(1 for pid in pids if _owner(pid) == 0)
    out["share of processes root-owned"] = root_owned / max(1, len(pids))
    return out


def _owner(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1


def profile(fn: Callable[[], Any], rounds: int = 3, top: int = 14) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(rounds):
        fn()
    prof.disable()
    return common.pstats_top(pstats.Stats(prof), top)


# -- output -----------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    return common.machine(
        psutil=psutil.__version__,
        ps=subprocess.run(["ps", "--version"], check=False, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True).stdout.strip())


def table(label: str, ph: dict[str, Any]) -> str:
    us = ph["us_per_process"]
    lo, hi = ph["us_per_process_min"], ph["us_per_process_max"]
    r = ph["ratios"]
    refs = [ref for ref in REFS if ref in us]
    lines = [(f"### {label}: {ph['processes']:.0f} processes "
              f"(environ reads: first scan {ph['environ_reads_first_scan']:.0f}, "
              f"rescan {ph['environ_reads_rescan']:.0f})"),
             "",
             "| method | us/process (median) | min-max | " + " | ".join(f"/ {x}" for x in refs)
             + " |",
             "|---|---:|---:|" + "---:|" * len(refs)]
    for m in (m for m in METHODS if m in us):
        if m in OURS:
            rel = " | ".join(f"{r[f'{m} / {ref}']:.2f}" for ref in refs)
        else:
            rel = " | ".join("" for _ in refs)
        lines.append(f"| {m} | {us[m]:.1f} | {lo[m]:.1f}-{hi[m]:.1f} | {rel} |")
    return "\n".join(lines)


def verdict(ph: dict[str, Any]) -> dict[str, bool]:
    r = ph["ratios"]
    out = {"first scan <= psutil": r["tree first scan / psutil"] <= 1.0,
           "rescan <= psutil": r["tree rescan / psutil"] <= 1.0}
    if "tree rescan / C walk 4 files" in r:
        out["rescan <= 1.0x C walk of stat+cmdline+environ+exe"] = (
            r["tree rescan / C walk 4 files"] <= 1.0)
        out["first scan <= 1.3x C walk of the same files"] = (
            r["tree first scan / C walk, same files"] <= 1.3)
    return out


def _compiled(tree: str, python: str) -> None:
    """Bytecode for `tree`'s agent package, as pip writes it into an installed agent: this
    machine sets PYTHONDONTWRITEBYTECODE, without which every run would compile the sources
    and time that instead."""
    subprocess.run([python, "-m", "compileall", "-q", os.path.join(tree, "agent")],
                   stdout=subprocess.DEVNULL, check=True)


def startup(rounds: int, tmp: str, vs: str | None = None) -> dict[str, Any]:
    """`nodewarden scan --proc-root EMPTY` against `python -c pass` (and the same scan of the
    checkout `vs`, run from there with its own venv), whole processes run in turn (one
    warm-up each) with bytecode compiled: median wall and CPU (user + system) seconds, and
    the medians of the per-round ratios to `python -c pass`."""
    empty = os.path.join(tmp, "empty-proc")
    os.makedirs(empty, exist_ok=True)
    repo = os.path.dirname(HERE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    runs: dict[str, tuple[list[str], str]] = {
        "scan_empty": ([sys.executable, "-m", "agent", "scan", "--proc-root", empty], repo),
        "python_pass": ([sys.executable, "-c", "pass"], repo)}
    if vs is not None:
        base_python = os.path.join(vs, ".venv", "bin", "python")
        runs["base_scan_empty"] = ([base_python, "-m", "agent", "scan", "--proc-root", empty], vs)
        _compiled(vs, base_python)
    _compiled(repo, sys.executable)

    def once(argv: list[str], cwd: str) -> tuple[float, float]:
        t0 = time.perf_counter()
        child = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        dt = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{argv} exited {os.waitstatus_to_exitcode(status)}")
        return dt, usage.ru_utime + usage.ru_stime

    for argv, cwd in runs.values():
        once(argv, cwd)
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, (argv, cwd) in runs.items():
            w, c = once(argv, cwd)
            wall[name].append(w)
            cpu[name].append(c)
    out: dict[str, Any] = {"rounds": rounds}
    for name in runs:
        out[f"{name}_s"] = statistics.median(wall[name])
        out[f"{name}_min_max"] = [min(wall[name]), max(wall[name])]
        out[f"{name}_cpu_s"] = statistics.median(cpu[name])
    for name in (k for k in runs if k != "python_pass"):
        prefix = "" if name == "scan_empty" else "base_"
        out[f"{prefix}ratio"] = statistics.median(
            x / y for x, y in zip(wall[name], wall["python_pass"], strict=True))
        out[f"{prefix}cpu_ratio"] = statistics.median(
            x / y for x, y in zip(cpu[name], cpu["python_pass"], strict=True))
    return out


def _print_startup(st: dict[str, Any]) -> None:
    print(f"### start-up, {st['rounds']} runs of each in turn, bytecode compiled (median)\n")
    print("| command | wall ms (min-max) | CPU ms | wall / python -c pass | CPU / python -c pass |")
    print("|---|---:|---:|---:|---:|")
    rows = [("`nodewarden scan --proc-root EMPTY`", "scan_empty", "")]
    if "base_scan_empty_s" in st:
        rows.append(("the same, `--startup-vs` checkout", "base_scan_empty", "base_"))
    rows.append(("`python -c pass`", "python_pass", None))
    for label, key, prefix in rows:
        lo, hi = st[f"{key}_min_max"]
        ratios = (" | |" if prefix is None else
                  f" | {st[prefix + 'ratio']:.2f}x | {st[prefix + 'cpu_ratio']:.2f}x |")
        print(f"| {label} | {st[key + '_s'] * 1e3:.1f} ({lo * 1e3:.1f}-{hi * 1e3:.1f}) | "
              f"{st[key + '_cpu_s'] * 1e3:.1f}{ratios}")
    print()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--extra", type=int, default=2000, help="idle processes to add (default 2000)")
    ap.add_argument("--repeat", type=int, default=15, help="repetitions per phase (default 15)")
    ap.add_argument("--cpu", type=int, default=0, help="pin to this CPU (-1: do not pin)")
    ap.add_argument("--startup-rounds", type=int, default=30,
                    help="runs of each command in the start-up comparison (0: skip)")
    ap.add_argument("--startup-vs", metavar="CHECKOUT",
                    help="also time `scan` start-up of this checkout (its .venv), in turn")
    ap.add_argument("--startup-only", action="store_true",
                    help="only the start-up comparison (no scan phases)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    ap.add_argument("--profile", action="store_true",
                    help="always print cProfile excerpts (printed anyway when a target is missed)")
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.extra < 0:
        ap.error("--repeat must be >= 1 and --extra >= 0")
    if os.geteuid() != 0:
        print("warning: not root; processes of other users read partially", file=sys.stderr)
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    tmp = tempfile.mkdtemp(prefix="nodewarden-scan-bench-")
    try:
        if args.startup_only:
            st = startup(args.startup_rounds or 30, tmp, args.startup_vs)
            if args.json:
                print(json.dumps({"machine": machine(), "startup": st}, indent=2))
            else:
                _print_startup(st)
            return 0
        return _run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace, tmp: str) -> int:  # noqa: C901
    walk = build_walk(tmp)
    if walk is None:
        print("warning: no C compiler; the C walk is left out", file=sys.stderr)
    result: dict[str, Any] = {"machine": machine(), "repeat": args.repeat, "phases": {}}
    result["phases"]["live"] = run_phase(args.repeat, walk, tmp)
    sleepers = Sleepers(args.extra)
    extra_label = f"live + {args.extra} idle"
    try:
        if args.extra:
            t0 = time.monotonic()
            sleepers.start()
            result["spawn_seconds"] = round(time.monotonic() - t0, 2)
            result["extra"] = {"plain_root_sleeps": sleepers.plain,
                               "workspaces": sleepers.workspaces,
                               "processes_in_workspaces": sleepers.in_workspaces}
            result["phases"][extra_label] = run_phase(args.repeat, walk, tmp)
        big = result["phases"][extra_label if args.extra else "live"]
        missed = not all(verdict(big).values())
        result["breakdown_us_per_process"] = breakdown()
        if missed or args.profile:
            result["profile_first_scan"] = profile(lambda: ProcessTree(ProcFS()).scan())
            tree = ProcessTree(ProcFS())
            tree.scan()
            result["profile_rescan"] = profile(tree.scan)
            result["profile_psutil"] = profile(psutil_scan)
    finally:
        sleepers.stop()

    result["targets"] = {label: verdict(ph) for label, ph in result["phases"].items()}
    if args.startup_rounds:
        result["startup"] = startup(args.startup_rounds, tmp, args.startup_vs)
        result["targets"]["start-up"] = {"scan on an empty procfs <= 2.5x python -c pass":
                                         result["startup"]["ratio"] <= 2.5}
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    m = result["machine"]
    print(f"## scan benchmark ({m['date']})\n")
    print(f"nproc {m['nproc']}, kernel {m['kernel']}, Python {m['python']}, psutil {m['psutil']}, "
          f"{m['ps']}, pinned to CPUs {m['affinity']}; medians of {args.repeat} interleaved "
          f"repetitions; ratios are medians of per-repetition ratios.\n")
    if args.extra:
        e = result["extra"]
        print(f"Extra processes: {e['plain_root_sleeps']} root `sleep`s without marker + "
              f"{e['workspaces']} workspaces x {CHILDREN_PER_WORKSPACE + 1} uid-{WORKSPACE_UID} "
              f"`sleep`s with WORKSPACE_ID (started in {result['spawn_seconds']} s).\n")
    for label, ph in result["phases"].items():
        print(table(label, ph))
        print()
    if "startup" in result:
        _print_startup(result["startup"])
    print("### targets\n")
    for label, v in result["targets"].items():
        for k, ok in v.items():
            print(f"- {label}: {k}: {'MET' if ok else 'MISSED'}")
    print(f"\n### where the time goes ({'live + extra' if args.extra else 'live'}; us/process, "
          f"one step at a time over every pid, median of 5)\n")
    print("| step | us/process |\n|---|---:|")
    for k, v in result["breakdown_us_per_process"].items():
        print(f"| {k} | {v:.0%} |" if k.startswith("share") else f"| {k} | {v:.2f} |")
    if "profile_rescan" in result:
        for key in ("profile_first_scan", "profile_rescan", "profile_psutil"):
            print(f"\n### cProfile, {key[8:].replace('_', ' ')} (3 runs, by tottime)\n")
            print("```\n" + result[key] + "\n```")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; extra processes killed", file=sys.stderr)
        sys.exit(130)
