#!/usr/bin/env python3
"""Benchmark: the agent's resident memory at ready and under a flood, against another
checkout's agent in the same run.

Each side starts the real `nodewarden run --dry-run --listen off --interval 3600` from its
own checkout (its own venv), waits for "ready:", samples VmRSS (and its anonymous and
file-backed parts) for --settle seconds, then floods it with bench/loadgen.c in
`connect-rst` mode at full speed for --flood seconds (overload: the ring buffer drops what
the agent cannot take) and samples every second; then it idles --settle seconds again.
Reported per side: RSS at ready, the peak, RSS at the end, and the growth over the second
half of the flood (flat means the caches are bounded).

    .venv/bin/python bench/memory.py [--vs /path/to/other/checkout] [--flood 60]
        [--settle 5] [--json]

Needs root, gcc and BCC (as bench/events.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402 - bench/common.py, after the path above
from events import build_loadgen  # noqa: E402 - bench/events.py

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of `pid`, in kB."""
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
    return out


def start_agent(checkout: str, tmp: str) -> subprocess.Popen[bytes]:
    """The checkout's own agent, ready (its log in tmp)."""
    env = {**os.environ, "NODEWARDEN_LOCK_FILE": os.path.join(tmp, "agent.lock")}
    log = open(os.path.join(tmp, "agent.log"), "wb")  # noqa: SIM115 - the agent's lifetime
    proc = subprocess.Popen([os.path.join(checkout, ".venv/bin/python"), "-m", "agent", "run",
                             "--dry-run", "--listen", "off", "--format", "json",
                             "--interval", "3600"],
                            cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 120
    while True:
        with open(os.path.join(tmp, "agent.log"), "rb") as f:
            if b"ready:" in f.read():
                return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"memory.py: the agent of {checkout} did not get ready")
        time.sleep(0.2)


def measure(checkout: str, loadgen: str, args: argparse.Namespace) -> dict[str, Any]:
    """RSS samples of one checkout's agent: settle, flood, settle."""
    with tempfile.TemporaryDirectory() as tmp:
        agent = start_agent(checkout, tmp)
        try:
            time.sleep(args.settle)
            ready = rss(agent.pid)
            flood: list[int] = []
            gen = subprocess.Popen([loadgen, "connect-rst", "0", str(args.flood)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while gen.poll() is None:
                time.sleep(1)
                flood.append(rss(agent.pid)["VmRSS"])
            time.sleep(args.settle)
            end = rss(agent.pid)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
    half = flood[len(flood) // 2:] or [ready["VmRSS"]]
    return {"checkout": checkout, "ready": ready, "peak_kb": max([ready["VmRSS"], *flood]),
            "end": end, "second_half_growth_kb": half[-1] - half[0], "flood_samples": flood}


def main() -> None:
    """Measure this checkout (and --vs another) and print a table or JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vs", help="another checkout with its own .venv, measured first")
    ap.add_argument("--flood", type=float, default=60.0, help="seconds of flood (default 60)")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds idle before and after")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        loadgen = build_loadgen(tmp)
        sides = [args.vs, HERE] if args.vs else [HERE]
        results = [measure(c, loadgen, args) for c in sides]
    if args.json:
        print(json.dumps({"machine": common.machine(), "results": results}, indent=2))
        return
    print("| checkout | RSS at ready (MB) | anon / file (MB) | peak (MB) | end (MB) "
          "| growth, 2nd half of flood (MB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        ready = r["ready"]
        print(f"| {r['checkout']} | {ready['VmRSS'] / 1024:.1f} | "
              f"{ready['RssAnon'] / 1024:.1f} / {ready['RssFile'] / 1024:.1f} | "
              f"{r['peak_kb'] / 1024:.1f} | {r['end']['VmRSS'] / 1024:.1f} | "
              f"{r['second_half_growth_kb'] / 1024:+.1f} |")


if __name__ == "__main__":
    main()
