#!/usr/bin/env python3
"""Benchmark: the agent's CPU per exec (its fork, exec and exit records), checkouts side by
side, alternating, in one run.

Each round runs every `--tree NAME=DIR`'s own `bench/events.py` (its agent code, its BPF
program) in exec mode: `loadgen exec` (fork + execve(/bin/true) + waitpid) pinned to CPU 1,
the consumer (BpfSensor -> Observer -> Agent -> Judge, shipped rules, as the agent runs)
pinned to CPU 0 with the exec sensor alone (`--all-sensors`: every default sensor, so TCP
records made by anything else on the machine count too), paced at `--rate` execs/s and
unpaced (the generator's maximum), and with the bare consumer (decode and count only: the
transport's floor) at `--rate`. Wake-ups per exec = the polls that returned records / the
execs made. Exec record lag = the kernel's timestamp to the consumer's callback, p50 / p99 /
max (-1: that tree's bench/events.py does not measure it). CPU per exec = the consumer's
user + system CPU over the run / the execs the generator made (records of other processes'
execs count against it, as they would against the agent).

    sudo .venv/bin/python bench/exec_cost.py --tree base=$BASE --tree new=. --rounds 3

Needs root, eBPF and gcc (as bench/events.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any

RECORDS_PER_EXEC = 3


# bench/events.py of the tree, its consumer with the exec sensor alone: the other helpers'
# TCP load on this machine would otherwise be counted against each exec
_ONLY_EXEC = """
import dataclasses, sys
sys.path.insert(0, "bench")
import events
_Config = events.Config
events.Config = lambda: dataclasses.replace(_Config(), sensors=["exec"])
sys.argv[0] = "bench/events.py"
sys.exit(events.main())
"""


def run_tree(tree: str, rate: float, secs: float, only_exec: bool) -> dict[str, Any]:
    """One bench/events.py exec run of `tree`: the paced and the unpaced full runs."""
    head = ["-c", _ONLY_EXEC] if only_exec else ["bench/events.py"]
    cmd = [f"{tree}/.venv/bin/python", *head, "--modes", "exec", "--curve",
           f"{rate * RECORDS_PER_EXEC:.0f}", "--curve-modes", "exec", "--duration", f"{secs}",
           "--step-duration", f"{secs}", "--steps", "0", "--json"]
    out = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=600,
                         check=True).stdout
    mode = json.loads(out)["modes"]["exec"]
    paced = next(c for c in mode["curve"] if c["level"] == "full")
    bare = next(c for c in mode["curve"] if c["level"] == "bare")
    return {"paced": per_exec(paced), "max": per_exec(mode["max"]), "bare": per_exec(bare)}


def per_exec(r: dict[str, Any]) -> dict[str, float]:
    """CPU per exec (us), execs/s made, records lost, and wake-ups per exec (polls that
    returned records, per exec made) from one bench/events.py run."""
    execs = r["generated_records"] / RECORDS_PER_EXEC
    cpu_s = r["cpu_us_per_record"] * r["ingested"] / 1e6
    polls = r["ingested"] / max(r["records_per_poll"], 1e-9)
    lag = r.get("exec_lag_us") or {}   # a tree whose bench/events.py does not measure it: -1
    return {"us_per_exec": cpu_s * 1e6 / max(execs, 1), "execs_per_s": execs / r["span_s"],
            "consumer_cpu": r["consumer_cpu"], "lost": r["lost"],
            "wakeups_per_exec": polls / max(execs, 1),
            "lag_p50_us": lag.get("p50", -1.0), "lag_p99_us": lag.get("p99", -1.0),
            "lag_max_us": lag.get("max", -1.0)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", required=True, metavar="NAME=DIR",
                    help="a checkout to measure (made with `make setup`); repeat")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=1000.0, help="paced execs/s (default 1000)")
    ap.add_argument("--secs", type=float, default=4.0, help="seconds per run (default 4)")
    ap.add_argument("--all-sensors", action="store_true",
                    help="run every default sensor (TCP too), as the agent does; default: the "
                         "exec sensor alone")
    args = ap.parse_args(argv)
    trees = [t.split("=", 1) for t in args.tree]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    for rnd in range(args.rounds):
        order = trees if rnd % 2 == 0 else trees[::-1]
        for name, tree in order:
            r = run_tree(tree, args.rate, args.secs, not args.all_sensors)
            results[name].append(r)
            print(f"round {rnd + 1} {name}: paced {r['paced']['us_per_exec']:.1f} us/exec at "
                  f"{r['paced']['execs_per_s']:,.0f}/s ({r['paced']['wakeups_per_exec']:.2f} "
                  f"wake-ups/exec, exec record lag p50/p99/max "
                  f"{r['paced']['lag_p50_us']:.0f}/{r['paced']['lag_p99_us']:.0f}/"
                  f"{r['paced']['lag_max_us']:.0f} us; bare {r['bare']['us_per_exec']:.1f}); max "
                  f"{r['max']['us_per_exec']:.1f} us/exec at {r['max']['execs_per_s']:,.0f}/s",
                  file=sys.stderr, flush=True)
    print(f"| checkout | us/exec at {args.rate:,.0f} execs/s (each round) | median | "
          f"wake-ups/exec | bare consumer (decode + count), us/exec | "
          f"us/exec at the generator's max (each round) | median | execs/s at max | "
          f"exec record lag at {args.rate:,.0f}/s, p99 / max (us, worst round) |")
    print("|---|---|---:|---:|---:|---|---:|---:|---|")
    for name, rs in results.items():
        paced = [r["paced"]["us_per_exec"] for r in rs]
        top = [r["max"]["us_per_exec"] for r in rs]
        rate = statistics.median(r["max"]["execs_per_s"] for r in rs)
        wakes = statistics.median(r["paced"]["wakeups_per_exec"] for r in rs)
        bare = statistics.median(r["bare"]["us_per_exec"] for r in rs)
        print(f"| {name} | {' / '.join(f'{v:.1f}' for v in paced)} | "
              f"{statistics.median(paced):.1f} | {wakes:.2f} | {bare:.1f} | "
              f"{' / '.join(f'{v:.1f}' for v in top)} | {statistics.median(top):.1f} | "
              f"{rate:,.0f} | {max(r['paced']['lag_p99_us'] for r in rs):.0f} / "
              f"{max(r['paced']['lag_max_us'] for r in rs):.0f} |")
    json.dump(results, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
