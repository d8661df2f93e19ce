#!/usr/bin/env python3
"""Benchmark: `nodewarden replay` end to end, and its parts, against bare `json.loads`.

A realistic recorded file is built first (the exec mix and the connect mix of
bench/rules.py, interleaved, written through the codec's own encoder `event_line`, as
`--record` writes them). Then, in one run, alternating so drift hits all alike:

  json.loads          bare `json.loads` of every line of the file (the reference)
  decode              agent.codec.read_events over the file (events built, nothing judged)
  judge (exec)        Judge.judge over the decoded exec events (a fresh offline Judge), in a
                      child process of the checkout's own Python and code (CPU time)
  replay              `python -m agent replay FILE --format json > /dev/null` in a subprocess:
                      wall time and the child's CPU time (user + system)
  ... (base)          judge and replay of the checkout --base-dir with --base-python (the
                      commit before the change), when given; the two checkouts alternate
                      (which goes first flips each round)

Each is an events/s median over --rounds; ratios are to json.loads of the same file. The
in-process parts are timed in CPU time of their process (time.process_time): on a shared
machine wall time mostly measures the neighbours. Pin the run (`taskset -c 1`): children
inherit it.

Targets (issue 10, target 6): replay >= 150,000 events/s end to end and >= 0.75x json.loads;
Judge.judge >= 300,000 exec events/s with the shipped rules (stretch).

    taskset -c 1 .venv/bin/python bench/replay.py [--events 200000] [--rounds 5] [--json]
        [--base-python /work/wt/base/.venv/bin/python --base-dir /work/wt/base]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

# the checkout whose `agent` is measured: this one, or (judge child) the one named
sys.path.insert(0, os.environ.get("NODEWARDEN_BENCH_TREE")
                or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # bench/common.py

from agent.codec import event_line, read_events
from agent.decide import Protection
from agent.engine import loader
from agent.pipeline import Judge

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

REPLAY_TARGET = 150_000
RATIO_TARGET = 0.75
JUDGE_TARGET = 300_000


def build_file(path: str, n: int, seed: int = 7) -> tuple[int, int]:
    """`n` events, 70% exec and 30% connect, shuffled, one recorded line each."""
    # bench/rules.py (its event mixes) puts this checkout first on sys.path: imported here,
    # after `agent` was, so a judge child keeps the checkout it measures
    import rules as rule_bench

    n_conn = n * 3 // 10
    events = rule_bench.exec_events(n - n_conn) + rule_bench.connect_events(n_conn)
    random.Random(seed).shuffle(events)
    with open(path, "w", encoding="utf-8") as f:
        for ev in events:
            f.write(event_line(ev) + "\n")
    return n - n_conn, n_conn


def time_json_loads(path: str) -> float:
    """CPU seconds for json.loads of every line (the file read as replay reads it)."""
    t0 = time.process_time()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            json.loads(line)
    return time.process_time() - t0


def time_decode(path: str) -> float:
    """CPU seconds for the codec to make every event of the file."""
    t0 = time.process_time()
    for _ in read_events(path):
        pass
    return time.process_time() - t0


def judge_rate(path: str, repeat: int = 2) -> float:
    """Exec events/s of Judge.judge over the exec events of `path` (the shipped rules of
    the checkout measured, a fresh judge each time; the best of `repeat`)."""
    events = [ev for ev in read_events(path) if ev.kind == "exec"]
    ruleset = loader.load([loader.bundled_rules_dir()])
    best = 0.0
    for _ in range(repeat):
        judge = Judge(ruleset, "audit", Protection.of(set(), []), can_act=False)
        gc.collect()
        t0 = time.process_time()
        for ev in events:
            judge.judge(ev)
        best = max(best, len(events) / (time.process_time() - t0))
    return best


def time_judge_child(python: str, tree: str, path: str) -> float:
    """judge_rate of checkout `tree`, in a child process of its own Python."""
    env = dict(os.environ, NODEWARDEN_BENCH_TREE=tree)
    out = subprocess.run([python, os.path.abspath(__file__), "--judge-child", path],
                         cwd=tree, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"judge child failed in {tree}: {out.stderr.strip()[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def time_replay(python: str, cwd: str, path: str) -> tuple[float, float]:
    """(wall, CPU) seconds of `python -m agent replay FILE --format json > /dev/null`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(os.devnull, "w") as null:
        rc = subprocess.run([python, "-m", "agent", "replay", path, "--format", "json"],
                            cwd=cwd, stdout=null, stderr=subprocess.PIPE, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc.returncode not in (0, 1):
        raise SystemExit(f"replay failed ({rc.returncode}): {rc.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def measure(args: argparse.Namespace, path: str, n: int) -> dict[str, list[float]]:
    """events/s samples of every measurement, alternated round by round."""
    tasks: dict[str, Callable[[], float]] = {
        "json.loads": lambda: n / time_json_loads(path),
        "decode": lambda: n / time_decode(path),
    }
    samples: dict[str, list[float]] = {k: [] for k in tasks}
    trees = [("", sys.executable, ROOT)]
    if args.base_python:
        trees.append((" (base)", args.base_python, args.base_dir))
    for label, _, _ in trees:
        for what in ("judge (exec)", "replay wall", "replay cpu"):
            samples[what + label] = []
    for r in range(args.rounds):
        for label, fn in tasks.items():
            gc.collect()
            samples[label].append(fn())
        for label, python, tree in (trees if r % 2 == 0 else trees[::-1]):
            samples["judge (exec)" + label].append(time_judge_child(python, tree, path))
            wall, cpu = time_replay(python, tree, path)
            samples["replay wall" + label].append(n / wall)
            samples["replay cpu" + label].append(n / cpu)
    return samples


def summarize(samples: dict[str, list[float]]) -> dict[str, Any]:
    """Median, min and max events/s of each, and the median's ratio to json.loads."""
    ref = statistics.median(samples["json.loads"])
    return {k: {"median": statistics.median(v), "min": min(v), "max": max(v),
                "vs_json_loads": statistics.median(v) / ref} for k, v in samples.items()}


def table(res: dict[str, Any]) -> str:
    """The summary as a fixed-width table."""
    lines = [f"{'':24} {'median/s':>10} {'min/s':>10} {'max/s':>10} {'x json.loads':>13}"]
    for k, r in res.items():
        lines.append(f"{k:24} {r['median']:>10,.0f} {r['min']:>10,.0f} {r['max']:>10,.0f} "
                     f"{r['vs_json_loads']:>13.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Build the file, measure, print the table (or JSON); exit 1 when a target is missed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--base-python", default="")
    ap.add_argument("--base-dir", default="")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--judge-child", metavar="FILE", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.judge_child:
        print(judge_rate(args.judge_child))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "events.jsonl")
        n_exec, n_conn = build_file(path, args.events)
        samples = measure(args, path, args.events)
        size = os.path.getsize(path)
    res = summarize(samples)
    replay = res["replay wall"]
    met = {"replay >= 150k/s": replay["median"] >= REPLAY_TARGET,
           "replay >= 0.75x json.loads": replay["vs_json_loads"] >= RATIO_TARGET,
           "judge >= 300k exec/s": res["judge (exec)"]["median"] >= JUDGE_TARGET}
    out = {"machine": common.machine(), "events": args.events, "exec": n_exec,
           "connect": n_conn, "file_bytes": size, "rounds": args.rounds, "results": res,
           "targets": met}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{args.events:,} events ({n_exec:,} exec, {n_conn:,} connect), "
              f"{size / 1e6:.1f} MB, {args.rounds} rounds, {out['machine']}")
        print(table(res))
        for k, ok in met.items():
            print(f"  {'ok  ' if ok else 'MISS'} {k}")
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
