#!/usr/bin/env python3
"""Benchmark (issue 10, target 3): the real agent's CPU under a moderate load, 200 execs/s
plus 5,000 connects/s, for one or more checkouts in the same run, alternated.

Each side starts `nodewarden run --dry-run --listen off` from its checkout (its own venv,
the shipped rules, in-kernel rules loaded as by default), waits for "ready:", then runs two
paced bench/loadgen.c generators for --secs seconds: `exec` at --execs/s (fork + execve of
/bin/true + waitpid) and `connect` at --connects/s (connect/accept/close on 127.0.0.1). The
agent's CPU is its user + system time over that window (/proc/PID/stat) divided by the
window: the share of one core. Also its idle share over --idle seconds before the load.

    .venv/bin/python bench/moderate_load.py --tree base=$BASE --tree new=. [--rounds 3]

Prints per side the median share of a core under load (and every round's), and idle.
Target: <= 15% of a core. Needs root, gcc and BCC.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from events import build_loadgen  # noqa: E402 - bench/events.py
from memory import start_agent  # noqa: E402 - bench/memory.py

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` (all its threads) so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def one_round(tree: str, loadgen: str, args: argparse.Namespace) -> tuple[float, float]:
    """(share of a core idle, under the load) of one agent from `tree`."""
    with tempfile.TemporaryDirectory() as tmp:
        agent = start_agent(os.path.abspath(tree), tmp)
        try:
            time.sleep(2)  # past start-up
            c0, t0 = cpu_seconds(agent.pid), time.monotonic()
            time.sleep(args.idle)
            idle = (cpu_seconds(agent.pid) - c0) / (time.monotonic() - t0)
            gens = [subprocess.Popen([loadgen, "exec", str(args.execs), str(args.secs)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                    subprocess.Popen([loadgen, "connect", str(args.connects), str(args.secs)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
            c0, t0 = cpu_seconds(agent.pid), time.monotonic()
            for g in gens:
                g.wait()
            time.sleep(0.5)  # what was queued is taken
            load = (cpu_seconds(agent.pid) - c0) / (time.monotonic() - t0)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
    return idle, load


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", default=[],
                    help="NAME=PATH of a checkout with its .venv (default: this one)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secs", type=float, default=20.0)
    ap.add_argument("--idle", type=float, default=5.0)
    ap.add_argument("--execs", type=float, default=200.0)
    ap.add_argument("--connects", type=float, default=5000.0)
    args = ap.parse_args()
    trees = [t.split("=", 1) for t in args.tree] or [["this", "."]]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in trees}
    with tempfile.TemporaryDirectory() as tmp:
        loadgen = build_loadgen(tmp)
        for r in range(args.rounds):
            for name, path in trees:
                idle, load = one_round(path, loadgen, args)
                results[name].append((idle, load))
                print(f"round {r + 1} {name}: idle {idle:.1%}, load {load:.1%}",
                      file=sys.stderr)
    print(f"{args.execs:g} execs/s + {args.connects:g} connects/s for {args.secs:g} s, "
          f"{args.rounds} rounds\n")
    print("| tree | idle, share of a core | under load, median | every round |")
    print("|---|---:|---:|---|")
    for name, rows in results.items():
        idle = statistics.median(i for i, _ in rows)
        load = statistics.median(x for _, x in rows)
        every = ", ".join(f"{x:.1%}" for _, x in rows)
        print(f"| {name} | {idle:.2%} | **{load:.1%}** | {every} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
