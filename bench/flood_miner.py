#!/usr/bin/env python3
"""Benchmark (issue 10, target 8): a miner started during an event flood is found, and how
soon, through the real `nodewarden run`.

The agent runs from this checkout (or --tree) in audit mode with the shipped rules, JSON
findings on stdout. bench/loadgen.c floods it in `connect-rst` mode: --gens generators at
full speed, pinned one per CPU, which offers well over twice what the agent takes, so the
ring buffer drops records all along (the agent's loss counter and loss scans at work).
Every --every seconds of the flood a miner (a copy of /bin/sleep named `xmrig` in a temp
dir) is started; the time from just before its exec to the arrival of its
crypto-miner-exec finding is measured, and whether it came from its exec record (`exec`)
or from a loss scan (`scan`). A miner not found within --timeout seconds is a miss.

    .venv/bin/python bench/flood_miner.py [--miners 20] [--every 1.5] [--gens 2]

Prints the rate of lost records, the found/missed counts, p50/p90/max time to finding and
the sources. Needs root, gcc and BCC.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from events import build_loadgen  # noqa: E402 - bench/events.py
from memory import free_port  # noqa: E402 - bench/memory.py

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lost_and_taken(port: int) -> tuple[float, float]:
    """(records lost, records judged) so far, from the agent's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    lost = taken = 0.0
    for line in text.splitlines():
        if line.startswith("nodewarden_events_lost_total{"):
            lost += float(line.rsplit(" ", 1)[1])
        elif line.startswith("nodewarden_events_total{"):
            taken += float(line.rsplit(" ", 1)[1])
    return lost, taken


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class Findings:
    """The agent's stdout, read on a thread: finding arrival times by pid."""

    def __init__(self, stream: object) -> None:
        self.arrived: dict[int, tuple[float, str]] = {}
        self._stream = stream
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._stream:  # type: ignore[attr-defined]
            now = time.monotonic()
            try:
                f = json.loads(line)
            except ValueError:
                continue
            if f.get("rule") == "crypto-miner-exec":
                pid = f["process"]["pid"]
                self.arrived.setdefault(pid, (now, f.get("source", "?")))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", default=HERE, help="checkout whose agent runs (its .venv)")
    ap.add_argument("--miners", type=int, default=20)
    ap.add_argument("--every", type=float, default=1.5, help="seconds between miners")
    ap.add_argument("--gens", type=int, default=2, help="generators at full speed")
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        loadgen = build_loadgen(tmp)
        miner = os.path.join(tmp, "xmrig")
        shutil.copy("/bin/sleep", miner)
        port = free_port()
        env = {**os.environ, "NODEWARDEN_LOCK_FILE": os.path.join(tmp, "agent.lock")}
        log = open(os.path.join(tmp, "agent.log"), "wb")  # noqa: SIM115 - the agent's lifetime
        agent = subprocess.Popen(
            [os.path.join(args.tree, ".venv/bin/python"), "-m", "agent", "run", "--dry-run",
             "--listen", f"127.0.0.1:{port}", "--format", "json", "--interval", "3600"],
            cwd=args.tree, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        findings = Findings(agent.stdout)
        try:
            deadline = time.monotonic() + 120
            while b"ready:" not in read_bytes(os.path.join(tmp, "agent.log")):
                if agent.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("flood_miner.py: the agent did not get ready")
                time.sleep(0.2)
            secs = args.miners * args.every + 2
            gens = [subprocess.Popen(["taskset", "-c", str(i % os.cpu_count()), loadgen,
                                      "connect-rst", "0", str(secs)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    for i in range(args.gens)]
            time.sleep(1.0)  # the flood is on
            lost0, taken0 = lost_and_taken(port)
            t0 = time.monotonic()
            started: dict[int, float] = {}
            miners = []
            for _ in range(args.miners):
                before = time.monotonic()
                m = subprocess.Popen([miner, "30"])
                started[m.pid] = before
                miners.append(m)
                time.sleep(args.every)
            lost1, taken1 = lost_and_taken(port)
            flood_s = time.monotonic() - t0
            end = time.monotonic() + args.timeout
            while time.monotonic() < end and len(findings.arrived.keys() & started) < len(started):
                time.sleep(0.1)
            for g in gens:
                g.wait(timeout=60)
            for m in miners:
                m.kill()
                m.wait()
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
    delays = sorted(findings.arrived[p][0] - t for p, t in started.items()
                    if p in findings.arrived)
    sources: dict[str, int] = {}
    for p in started:
        if p in findings.arrived:
            src = findings.arrived[p][1]
            sources[src] = sources.get(src, 0) + 1
    lost, taken = lost1 - lost0, taken1 - taken0
    print(f"flood: {(lost + taken) / flood_s:,.0f} records/s reached the agent's sensors, "
          f"{lost / max(lost + taken, 1):.0%} lost, over {flood_s:.1f} s")
    print(f"miners: {len(delays)} found of {len(started)}; by {sources}")
    if delays:
        p90 = delays[min(len(delays) - 1, int(0.9 * len(delays)))]
        print(f"time to finding: p50 {statistics.median(delays) * 1000:.0f} ms, "
              f"p90 {p90 * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms "
              f"(target: within 1500 ms)")
    return 0 if len(delays) == len(started) else 1


if __name__ == "__main__":
    sys.exit(main())
