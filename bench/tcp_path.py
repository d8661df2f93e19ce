#!/usr/bin/env python3
"""Benchmark: the userspace part of a TCP record's path, alone: kevents.decode ->
Observer.handle -> Agent.handle -> Judge.judge with the shipped rules, on synthetic
connect/accept/close records of this process (no BPF, no ring buffer), CPU time per record.

    taskset -c 1 .venv/bin/python bench/tcp_path.py [--records 8000] [--repeat 7]

Run it from two checkouts alternately to compare them (each imports its own agent/).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent.decide import Protection  # noqa: E402 - after the path above
from agent.engine import loader  # noqa: E402
from agent.metrics import Metrics  # noqa: E402
from agent.observer import Observer  # noqa: E402
from agent.pipeline import Agent, Judge  # noqa: E402
from agent.sources import kevents  # noqa: E402
from agent.sources.netstate import NetState  # noqa: E402
from agent.sources.procfs import ProcFS  # noqa: E402
from agent.sources.proctree import ProcessTree  # noqa: E402

LOOPBACK = bytes([127, 0, 0, 1]) + bytes(12)


def records(n: int) -> list[bytes]:
    """n records: per connection a connect, an accept and two closes, on 127.0.0.1."""
    pid = os.getpid()

    def rec(kind: int, sport: int, dport: int, state: int) -> bytes:
        if hasattr(kevents, "CONN_FORMAT"):   # compact TCP records (issue 10)
            fields = [name for name, _ in kevents.CONN_FIELDS]
            return kevents.CONN_FORMAT.pack(123, kind, pid, 0, 0, 2, sport, dport, state,
                                            LOOPBACK, LOOPBACK, b"python3",
                                            *([1, 0] if "count" in fields else []))
        return kevents.NW_EVENT_FORMAT.pack(123, kind, pid, 0, 0, 0, 2, sport, dport, state,
                                            LOOPBACK, LOOPBACK, b"python3", b"")

    out = []
    for i in range(n // 4):
        port = 40000 + i % 20000
        out += [rec(kevents.CONNECT, port, 8080, 1), rec(kevents.ACCEPT, 8080, port, 1),
                rec(kevents.CLOSE, port, 8080, 7), rec(kevents.CLOSE, 8080, port, 7)]
    return out


def main() -> None:
    """Time the path and print the median and minimum CPU microseconds per record."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=8000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    recs = records(args.records)
    metrics = Metrics()
    tree = ProcessTree(ProcFS("/proc"))
    judge = Judge(loader.load([loader.bundled_rules_dir()]), "audit", Protection(), metrics)
    agent = Agent(tree, judge, lambda d: None, metrics, 3600.0)
    observer = Observer(tree, NetState())

    def run() -> float:
        t = time.process_time()
        for r in recs:
            ev = observer.handle(kevents.decode(r))
            if ev is not None:
                agent.handle(ev)
        return (time.process_time() - t) / len(recs) * 1e6

    run()
    xs = [run() for _ in range(args.repeat)]
    print(f"us/record: median {statistics.median(xs):.2f}, min {min(xs):.2f}")


if __name__ == "__main__":
    main()
