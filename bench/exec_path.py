#!/usr/bin/env python3
"""Benchmark: the userspace part of an exec record's path, alone, checkouts side by side:
kevents.decode -> Observer.handle -> Agent.handle (shipped rules, audit), pinned to one CPU,
for the records of processes that are alive when read (200 `sleep` processes, each record
read again: the base reads /proc for each) and of processes already gone (the common case
of a short-lived command), each exec followed by its exit record.

    .venv/bin/python bench/exec_path.py --tree base=$BASE --tree new=. --rounds 3

Each tree's own agent code runs in its own child process (`--child`); the records are made
in the layout of that tree (struct nw_event before, struct nw_exec_event after), with the
task's facts (start time, parent, effective uid, netns) where that tree's records carry
them, as the kernel sends them when it has BTF.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

LIVE = 200


def child(n: int) -> dict[str, float]:
    """Per-record CPU (us) of the exec and exit paths, in this checkout (cwd)."""
    sys.path.insert(0, os.getcwd())
    from agent.decide import Protection
    from agent.engine import loader
    from agent.metrics import Metrics
    from agent.observer import Observer
    from agent.pipeline import Agent, Judge
    from agent.sources import kevents
    from agent.sources.netstate import NetState
    from agent.sources.procfs import ProcFS
    from agent.sources.proctree import ProcessTree

    try:
        import inspect

        from agent.enrich.workspace import DEFAULT_MARKERS
        from agent.sources.execrecord import exec_record
        # records that carry the task's facts (start time, parent, euid, netns), as the
        # kernel sends them with BTF (this tree: `task`), as read from procfs here
        with_task = "task" in inspect.signature(exec_record).parameters
        tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")

        def make(pid: int, comm: bytes, path: bytes, argv: list[bytes]) -> bytes:
            extra: dict[str, Any] = {}
            if with_task:
                try:
                    p = ProcFS().read(pid)
                    extra["task"] = (p.starttime * tick_ns, p.ppid, max(p.uid, 0), p.netns)
                except Exception:   # gone (the pids beyond pid_max): what the kernel read
                    extra["task"] = (time.monotonic_ns(), 1, 0, 4026531840)
            return exec_record(pid, comm=comm, filename=path, argv=argv, ts=time.monotonic_ns(),
                               markers=DEFAULT_MARKERS, **extra)
    except ImportError:
        def make(pid: int, comm: bytes, path: bytes, argv: list[bytes]) -> bytes:
            return kevents.NW_EVENT_FORMAT.pack(time.monotonic_ns(), kevents.EXEC, pid, 0, 0, 0,
                                                0, 0, 0, 0, b"", b"", comm, path) + bytes(4)

    def proc_record(kind: int, pid: int) -> bytes:
        if hasattr(kevents, "PROC_FORMAT"):   # compact fork/exit records (issue 10)
            return kevents.PROC_FORMAT.pack(time.monotonic_ns(), kind, pid, 0, 0, b"sleep")
        return kevents.NW_EVENT_FORMAT.pack(time.monotonic_ns(), kind, pid, 0, 0, 0, 0, 0, 0, 0,
                                            b"", b"", b"sleep", b"") + bytes(4)

    os.sched_setaffinity(0, {0})
    sleepers = [subprocess.Popen(["sleep", "600", str(i)]) for i in range(LIVE)]
    try:
        time.sleep(0.5)
        tree = ProcessTree(ProcFS())
        tree.scan()
        metrics = Metrics()
        judge = Judge(loader.load([loader.bundled_rules_dir()]), "audit", Protection.of([]),
                      metrics, 65536, can_act=False)
        agent = Agent(tree, judge, lambda d: None, metrics, 3600.0)
        obs = Observer(tree, NetState())

        def path(records: list[bytes]) -> float:
            gc.collect()   # each path starts with the same heap: fewer collections by chance
            _instrument(True)
            t0 = time.process_time()
            for r in records:
                ev = obs.handle(kevents.decode(r))
                if ev is not None:
                    agent.handle(ev)
            took = (time.process_time() - t0) * 1e6 / len(records)
            _instrument(False)
            return took

        live = [make(p.pid, b"sleep", b"/usr/bin/sleep", [b"sleep", b"600", str(i).encode()])
                for i, p in enumerate(sleepers)] * (n // LIVE)
        gone = []
        for i in range(n):
            pid = 4_000_000 + i   # beyond pid_max: never a process
            gone += [proc_record(kevents.FORK, pid), make(pid, b"true", b"/usr/bin/true",
                                                          [b"/bin/true", b"-x"]),
                     proc_record(kevents.EXIT, pid)]
        path(live[:LIVE])  # warm
        return {"live_exec_us": path(live), "gone_fork_exec_exit_us": path(gone) * 3}
    finally:
        for p in sleepers:
            p.kill()
            p.wait()


def _instrument(on: bool) -> None:
    """Under `valgrind --tool=callgrind --instr-atstart=no` (`--callgrind`): count the
    instructions of the measured paths only (not the set-up: imports, rules, the scan),
    each path in a dump of its own."""
    if os.environ.get("NW_CALLGRIND"):
        pid = str(os.getpid())
        for args in ([["-i", "on"]] if on else [["-d"], ["-i", "off"]]):
            subprocess.run(["callgrind_control", *args, pid], check=True, capture_output=True,
                           timeout=120)


def _callgrind(cmd: list[str], tree: str, n: int) -> dict[str, float]:
    """The child under callgrind: instructions per live exec record and per gone process
    (fork + exec + exit), from the dumps of its measured paths (warm-up, live, gone)."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                        f"--callgrind-out-file={out}", *cmd], cwd=tree, check=True,
                       capture_output=True, timeout=3600,
                       env={**os.environ, "NW_CALLGRIND": "1"})
        counts = []
        for i in (1, 2, 3):
            with open(f"{out}.{i}") as f:
                counts.append(next(int(line.split()[1]) for line in f
                                   if line.startswith("summary:")))
    return {"live_exec_us": counts[1] / (n // LIVE * LIVE), "gone_fork_exec_exit_us":
            counts[2] / n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", metavar="NAME=DIR", default=[])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--records", type=int, default=4000)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--callgrind", action="store_true",
                    help="instructions of the measured paths (valgrind's callgrind) instead "
                         "of CPU time: load-independent, slow; use --records 400")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.records)))
        return 0
    trees = [t.split("=", 1) for t in args.tree]
    here = os.path.abspath(__file__)
    out: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    for rnd in range(args.rounds):
        for name, tree in (trees if rnd % 2 == 0 else trees[::-1]):
            cmd = [f"{tree}/.venv/bin/python", here, "--child", "--records", str(args.records)]
            if args.callgrind:
                r = _callgrind(cmd, tree, args.records)
            else:
                res = subprocess.run(cmd, cwd=tree, capture_output=True, text=True,
                                     check=True, timeout=600)
                r = json.loads(res.stdout.strip().splitlines()[-1])
            out[name].append(r)
            print(f"round {rnd + 1} {name}: {r}", file=sys.stderr, flush=True)
    unit = "instructions" if args.callgrind else "us"
    print(f"| checkout | exec of a live process ({unit}/record, each round) | median | "
          f"fork + exec + exit of a gone process ({unit}, each round) | median |")
    print("|---|---|---:|---|---:|")
    for name, rs in out.items():
        a = [r["live_exec_us"] for r in rs]
        b = [r["gone_fork_exec_exit_us"] for r in rs]
        print(f"| {name} | {' / '.join(f'{v:,.1f}' for v in a)} | "
              f"{statistics.median(a):,.1f} | {' / '.join(f'{v:,.1f}' for v in b)} | "
              f"{statistics.median(b):,.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
