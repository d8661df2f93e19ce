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

With --events N the flood goes on past --flood seconds, the generator at full speed in
30-second runs, until the agent has taken N records (nodewarden_events_total plus
nodewarden_events_lost_total from its /metrics, which then listens on a free local port):
the issue's "flat over 10 million events including 60 s of overload". The growth is then
also given from the first million records to the end.

    .venv/bin/python bench/memory.py [--vs /path/to/other/checkout] [--flood 60]
        [--settle 5] [--events 10000000] [--json]

Needs root, gcc and BCC (as bench/events.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
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


def free_port() -> int:
    """A local TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def taken(port: int) -> int:
    """Records the agent took from its sensors: judged plus lost (its /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(("nodewarden_events_total{", "nodewarden_events_lost_total{")):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def start_agent(checkout: str, tmp: str, listen: str = "off") -> subprocess.Popen[bytes]:
    """The checkout's own agent, ready (its log in tmp)."""
    env = {**os.environ, "NODEWARDEN_LOCK_FILE": os.path.join(tmp, "agent.lock")}
    log = open(os.path.join(tmp, "agent.log"), "wb")  # noqa: SIM115 - the agent's lifetime
    proc = subprocess.Popen([os.path.join(checkout, ".venv/bin/python"), "-m", "agent", "run",
                             "--dry-run", "--listen", listen, "--format", "json",
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
    """RSS samples of one checkout's agent: settle, flood (up to --events records), settle."""
    port = free_port() if args.events else 0
    with tempfile.TemporaryDirectory() as tmp:
        agent = start_agent(checkout, tmp, f"127.0.0.1:{port}" if port else "off")
        try:
            time.sleep(args.settle)
            ready = rss(agent.pid)
            flood: list[int] = []
            counts: list[int] = []
            seconds = args.flood
            while True:
                gen = subprocess.Popen([loadgen, "connect-rst", "0", str(seconds)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                while gen.poll() is None:
                    time.sleep(1)
                    flood.append(rss(agent.pid)["VmRSS"])
                    counts.append(taken(port) if port else 0)
                if not port or counts[-1] >= args.events:
                    break
                seconds = 30.0
            time.sleep(args.settle)
            end = rss(agent.pid)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
    half = flood[len(flood) // 2:] or [ready["VmRSS"]]
    out = {"checkout": checkout, "ready": ready, "peak_kb": max([ready["VmRSS"], *flood]),
           "end": end, "second_half_growth_kb": half[-1] - half[0], "flood_samples": flood,
           "seconds": len(flood)}
    if port:
        first_million = next((i for i, n in enumerate(counts) if n >= 1_000_000), 0)
        out["records"] = counts[-1]
        out["growth_after_1M_kb"] = flood[-1] - flood[first_million]
    return out


def main() -> None:
    """Measure this checkout (and --vs another) and print a table or JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vs", help="another checkout with its own .venv, measured first")
    ap.add_argument("--flood", type=float, default=60.0, help="seconds of flood (default 60)")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds idle before and after")
    ap.add_argument("--events", type=int, default=0,
                    help="flood on until the agent took this many records (e.g. 10000000)")
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
          "| growth, 2nd half of flood (MB) | records, seconds | growth after 1M (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        ready = r["ready"]
        print(f"| {r['checkout']} | {ready['VmRSS'] / 1024:.1f} | "
              f"{ready['RssAnon'] / 1024:.1f} / {ready['RssFile'] / 1024:.1f} | "
              f"{r['peak_kb'] / 1024:.1f} | {r['end']['VmRSS'] / 1024:.1f} | "
              f"{r['second_half_growth_kb'] / 1024:+.1f} | "
              f"{r.get('records', '-')}, {r['seconds']} | "
              f"{r.get('growth_after_1M_kb', 0) / 1024:+.1f} |")


if __name__ == "__main__":
    main()
