#!/usr/bin/env python3
"""Benchmark: `nodewarden replay` end to end, and its parts, against bare `json.loads`.

A realistic recorded file is built first (the exec mix and the connect mix of
bench/rules.py, interleaved, written through the codec's own encoder `event_line`, as
`--record` writes them). Then, in one run, alternating so drift hits all alike:

  json.loads          bare `json.loads` of every line of the file (the reference)
  decode              agent.codec.read_events over the file (events built, nothing judged)
  judge               Judge.judge over the decoded events (a fresh offline Judge per round)
  replay              `python -m agent replay FILE --format json > /dev/null` in a subprocess:
                      wall time and the child's CPU time (user + system)
  replay(base)        the same with --base-python/--base-dir (the commit before the change),
                      when given

Each is an events/s median over --rounds; ratios are to json.loads of the same file. The
in-process parts are timed in CPU time of this process (time.process_time): on a shared
machine wall time mostly measures the neighbours.

Targets (issue 10, target 6): replay >= 150,000 events/s end to end and >= 0.75x json.loads;
Judge.judge >= 300,000 exec events/s with the shipped rules (stretch).

    .venv/bin/python bench/replay.py [--events 200000] [--rounds 5] [--json]
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # bench/common.py

import rules as rule_bench  # bench/rules.py: the event mixes
from agent.codec import event_line, read_events
from agent.decide import Protection
from agent.engine import loader
from agent.model import Event
from agent.pipeline import Judge

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

REPLAY_TARGET = 150_000
RATIO_TARGET = 0.75
JUDGE_TARGET = 300_000


def build_file(path: str, n: int, seed: int = 7) -> tuple[int, int]:
    """`n` events, 70% exec and 30% connect, shuffled, one recorded line each."""
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


def time_judge(events: list[Event]) -> Callable[[], float]:
    """A timer of Judge.judge over `events` (the shipped rules, a fresh judge per round)."""
    ruleset = loader.load([loader.bundled_rules_dir()])

    def run() -> float:
        judge = Judge(ruleset, "audit", Protection.of(set(), []), can_act=False)
        t0 = time.process_time()
        for ev in events:
            judge.judge(ev)
        return time.process_time() - t0
    return run


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


def measure(args: argparse.Namespace, path: str, n: int,
            exec_events: list[Event]) -> dict[str, list[float]]:
    """events/s samples of every measurement, alternated round by round."""
    judge = time_judge(exec_events)
    tasks: dict[str, Callable[[], float]] = {
        "json.loads": lambda: n / time_json_loads(path),
        "decode": lambda: n / time_decode(path),
        "judge (exec)": lambda: len(exec_events) / judge(),
    }
    samples: dict[str, list[float]] = {k: [] for k in tasks}
    replays = [("replay", sys.executable, ROOT)]
    if args.base_python:
        replays.append(("replay(base)", args.base_python, args.base_dir))
    for label, _, _ in replays:
        samples[f"{label} wall"] = []
        samples[f"{label} cpu"] = []
    for _ in range(args.rounds):
        for label, fn in tasks.items():
            gc.collect()
            samples[label].append(fn())
        for label, python, cwd in replays:
            wall, cpu = time_replay(python, cwd, path)
            samples[f"{label} wall"].append(n / wall)
            samples[f"{label} cpu"].append(n / cpu)
    return samples


def summarize(samples: dict[str, list[float]]) -> dict[str, Any]:
    """Median, min and max events/s of each, and the median's ratio to json.loads."""
    ref = statistics.median(samples["json.loads"])
    return {k: {"median": statistics.median(v), "min": min(v), "max": max(v),
                "vs_json_loads": statistics.median(v) / ref} for k, v in samples.items()}


def table(res: dict[str, Any]) -> str:
    """The summary as a fixed-width table."""
    lines = [f"{'':22} {'median/s':>10} {'min/s':>10} {'max/s':>10} {'x json.loads':>13}"]
    for k, r in res.items():
        lines.append(f"{k:22} {r['median']:>10,.0f} {r['min']:>10,.0f} {r['max']:>10,.0f} "
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
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "events.jsonl")
        n_exec, n_conn = build_file(path, args.events)
        exec_events = [ev for ev in read_events(path) if ev.kind == "exec"]
        samples = measure(args, path, args.events, exec_events)
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
