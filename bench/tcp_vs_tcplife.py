#!/usr/bin/env python3
"""Benchmark: the agent's CPU per TCP connect against Debian's `tcplife-bpfcc` (BCC's own
tool, the same tracepoint), side by side, alternating, several rounds.

Each consumer runs as a user runs it, unpinned:
  tcplife   /usr/sbin/tcplife-bpfcc, stdout to /dev/null (one line per closed socket:
            two per loopback connection)
  NAME      `nodewarden run --dry-run` of the checkout DIR (--tree NAME=DIR, default
            new=this checkout), the shipped rules, metrics on a free port; started and
            measured once "ready:" is logged
  none      no tracer at all: the generator's own CPU without any BPF program attached

bench/loadgen.c (`connect` mode: connect + accept + close on 127.0.0.1) is pinned to CPU
--gen-cpu and paced at each --rates value (connects per second) for --seconds. A
consumer's CPU is utime + stime of /proc/PID/stat (all its threads) from the generator's
start until the consumer is idle again (its backlog drained), divided by the connects the
generator made. The generator's own CPU per connect (wait4 rusage) is shown too: the BPF
programs run in its context, so it is where their cost lands. Then the generator runs
unpaced for --max-seconds: its connects/s, and the records each consumer lost (the agent's
nodewarden_events_lost_total; tcplife's "Possibly lost N samples"). Every round runs the
consumers in a different order.

    .venv/bin/python bench/tcp_vs_tcplife.py [--rates 5000 15000] [--seconds 8]
        [--rounds 3] [--max-seconds 4] [--tree base=$BASE --tree new=.] [--together]
        [--json]

With --together all tracers run at once and are measured over the same windows: on a
machine other work shares, its load then lands on every tracer alike (each sees every
connect on the machine; the agent sees every exec too).

Needs root, gcc, BCC; installs bpfcc-tools (apt-get) when tcplife-bpfcc is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TCPLIFE = "/usr/sbin/tcplife-bpfcc"
RECORDS_PER_CONNECT = 4   # loadgen's RATE counts kernel records: connect, accept, 2 closes
TICK = os.sysconf("SC_CLK_TCK")


def build_loadgen(tmpdir: str) -> str:
    """bench/loadgen.c compiled into tmpdir."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise SystemExit("gcc is needed to build bench/loadgen.c")
    out = os.path.join(tmpdir, "loadgen")
    subprocess.run([gcc, "-O2", "-o", out, str(HERE / "loadgen.c")], check=True, timeout=60)
    return out


def ensure_tcplife() -> None:
    """apt-get install bpfcc-tools when tcplife-bpfcc is missing."""
    if not os.path.exists(TCPLIFE):
        subprocess.run(["apt-get", "install", "-y", "bpfcc-tools"], check=True, timeout=600,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Consumer:
    """One tracer process: started, waited for until ready, measured, stopped."""

    def __init__(self, name: str, argv: list[str] | None, cwd: str | None = None,
                 port: int = 0) -> None:
        self.name = name
        self.argv = argv
        self.cwd = cwd
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[str] = []
        self.ready = threading.Event()

    def start(self, timeout: float = 120) -> None:
        if self.argv is None:
            return
        # a lock file of its own: the agents run side by side (and beside the node's agent)
        env = {**os.environ, "NODEWARDEN_LOCK_FILE": f"/tmp/nodewarden-bench-{self.name}.lock"}
        argv = self.argv
        if self.port:
            self.port = free_port()   # taken now: one picked earlier may be in use by now
            argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.ready.clear()
        self.lines = []
        self.proc = subprocess.Popen(argv, cwd=self.cwd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env)
        threading.Thread(target=self._read_stderr, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._is_ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{self.name} did not start:\n" + "".join(self.lines[-20:]))
            time.sleep(0.1)
        settle(self.proc.pid)

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            if "ready:" in line:
                self.ready.set()

    def _is_ready(self) -> bool:
        if self.port:
            return self.ready.is_set()
        # tcplife: its tracepoint and its two perf buffers (one perf event per CPU) open
        assert self.proc is not None
        n = 0
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{self.proc.pid}/fd"):
                with contextlib.suppress(OSError):
                    n += os.readlink(f"/proc/{self.proc.pid}/fd/{fd}") == "anon_inode:[perf_event]"
        return n >= 1 + 2 * (os.cpu_count() or 1)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid) if self.proc is not None else 0.0

    def lost(self) -> float:
        """Records lost so far (the agent's counter; tcplife's own messages)."""
        if self.proc is None:
            return 0.0
        if self.port:
            return metric(self.port, "nodewarden_events_lost_total")
        return float(sum(int(m) for line in self.lines
                         for m in re.findall(r"[Ll]ost (\d+) samples", line)))

    def judged(self) -> float:
        return metric(self.port, 'nodewarden_events_total{source="connect"}') if self.port else 0

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def metric(port: int, prefix: str) -> float:
    """The sum of the /metrics samples whose name (with labels) starts with `prefix`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        body = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith(prefix) and not line.startswith("#"))


def settle(pid: int, quiet: float = 0.3, limit: float = 15.0) -> None:
    """Wait until `pid` used less than one clock tick of CPU over `quiet` seconds."""
    deadline = time.monotonic() + limit
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = cpu_seconds(pid)
        if now - last < 1.5 / TICK:
            return
        last = now


def generate(loadgen: str, cpu: int, connects_per_s: int, seconds: float) -> dict[str, float]:
    """Run the generator; its summary line and its own CPU (rusage)."""
    rate = connects_per_s * RECORDS_PER_CONNECT
    p = subprocess.Popen([loadgen, "connect", str(rate), str(seconds)], stdout=subprocess.PIPE,
                         text=True, preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    assert p.stdout is not None
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"loadgen failed ({p.returncode}): {out}")
    summary = dict(re.findall(r"(\w+)=([\d.]+)", out))
    return {"connects": float(summary["connects"]), "secs": float(summary["secs"]),
            "failures": float(summary.get("failures", 0)),
            "gen_cpu": usage.ru_utime + usage.ru_stime}


def measure(group: list[Consumer], loadgen: str, args: argparse.Namespace,
            rate: int) -> list[dict[str, Any]]:
    """One paced (rate > 0) or unpaced (rate 0) run with the consumers of `group` running
    (all over the same window with --together), after an idle window of --idle-seconds
    that measures what each spends on the machine's other activity meanwhile (other
    processes' connects, and for the agent their execs)."""
    for _ in range(args.retries + 1):
        cpu0, t0 = [c.cpu() for c in group], time.monotonic()
        time.sleep(args.idle_seconds)
        idle = [(c.cpu() - x) / (time.monotonic() - t0) for c, x in zip(group, cpu0, strict=True)]
        if max(idle) <= args.max_idle:
            break   # a quiet enough moment (other helpers' floods land in the agent too)
    before = [(c.lost(), c.judged(), c.cpu()) for c in group]
    t0 = time.monotonic()
    g = generate(loadgen, args.gen_cpu, rate, args.seconds if rate else args.max_seconds)
    for c in group:
        if c.proc is not None:
            settle(c.proc.pid)
    elapsed = time.monotonic() - t0
    n = g["connects"]
    out = []
    for c, idle_rate, (lost0, judged0, cpu0_) in zip(group, idle, before, strict=True):
        cpu = c.cpu() - cpu0_
        net = max(0.0, cpu - idle_rate * elapsed)
        out.append({
            "consumer": c.name, "rate": rate, "connects": n, "connects_per_s": n / g["secs"],
            "cpu_s": cpu, "us_per_connect": cpu / n * 1e6 if n else 0.0,
            "idle_cpu_per_s": idle_rate, "loadavg": os.getloadavg()[0],
            "net_us_per_connect": net / n * 1e6 if n else 0.0,
            "gen_us_per_connect": g["gen_cpu"] / n * 1e6 if n else 0.0,
            "lost": c.lost() - lost0, "judged": c.judged() - judged0,
            "failures": g["failures"]})
    return out


def run_group(group: list[Consumer], loadgen: str, args: argparse.Namespace, rnd: int,
              results: list[dict[str, Any]]) -> None:
    """Start the group, run every rate (and the unpaced run) with it, stop it."""
    try:
        for c in group:
            c.start()
        for rate in [*args.rates, *([0] if args.max_seconds else [])]:
            for r in measure(group, loadgen, args, rate):
                r["round"] = rnd
                results.append(r)
                print(f"round {rnd} {r['consumer']:<8} rate {rate:>6}: "
                      f"{r['us_per_connect']:6.1f} us/connect "
                      f"(net {r['net_us_per_connect']:.1f}), "
                      f"{r['connects_per_s']:8,.0f} connects/s, lost {r['lost']:.0f}",
                      file=sys.stderr, flush=True)
    finally:
        for c in group:
            c.stop()


def consumers(args: argparse.Namespace) -> list[Consumer]:
    out = [Consumer("none", None)]
    if not args.no_tcplife:
        out.append(Consumer("tcplife", [TCPLIFE]))
    for spec in args.tree or [f"new={HERE.parent}"]:
        name, _, tree = spec.partition("=")
        port = free_port()
        py = os.path.join(tree, ".venv", "bin", "python")
        out.append(Consumer(name, [py, "-m", "agent", "run", "--dry-run", "--format", "json",
                                   "--listen", "127.0.0.1:{port}", *args.agent_arg],
                            cwd=tree, port=port))
    return out


def _row(rs: list[dict[str, Any]], key: str, med_ref: float, show_ratio: bool) -> str:
    xs = [r[key] for r in rs]
    med = statistics.median(xs)
    ratio = f"{med / med_ref:.2f}x" if med_ref and show_ratio else ""
    return f"{' / '.join(f'{x:.1f}' for x in xs):<26} {med:>7.1f} {ratio:>7}"


def report(results: list[dict[str, Any]], names: list[str], rates: list[int]) -> None:
    ref = "tcplife"
    print("\nCPU per connect (us), paced: each round's figure, the median, the median's ratio to"
          "\ntcplife's; raw = all the consumer's CPU over the run, net = minus its idle rate"
          "\n(the machine's other activity) measured just before")
    print(f"{'consumer':<9} {'rate/s':>6}  {'raw rounds':<26} {'median':>7} {'ratio':>7}  "
          f"{'net rounds':<26} {'median':>7} {'ratio':>7} {'idle%':>5} {'gen':>5} {'lost':>5} "
          f"{'judged':>6}")
    def med(name: str, key: str, rate: int) -> float:
        xs = [r[key] for r in results if r["consumer"] == name and r["rate"] == rate]
        return statistics.median(xs) if xs else 0.0

    for rate in rates:
        for name in names:
            rs = [r for r in results if r["consumer"] == name and r["rate"] == rate]
            if not rs:
                continue
            agent = name not in ("none", ref)
            idle = statistics.median(r["idle_cpu_per_s"] for r in rs) * 100
            gen = statistics.median(r["gen_us_per_connect"] for r in rs)
            lost = sum(r["lost"] for r in rs)
            judged = (f"{sum(r['judged'] for r in rs) / sum(r['connects'] for r in rs):.3f}"
                      if agent else "")
            print(f"{name:<9} {rate:>6}  "
                  f"{_row(rs, 'us_per_connect', med(ref, 'us_per_connect', rate), agent)}  "
                  f"{_row(rs, 'net_us_per_connect', med(ref, 'net_us_per_connect', rate), agent)} "
                  f"{idle:>5.1f} {gen:>5.1f} {lost:>5.0f} {judged:>6}")
    mx = [r for r in results if r["rate"] == 0]
    if mx:
        print("\nGenerator unpaced (its maximum): connects/s and records lost, per round")
        for name in names:
            rs = [r for r in mx if r["consumer"] == name]
            if rs:
                print(f"{name:<9} " + " / ".join(
                    f"{r['connects_per_s']:,.0f}/s lost {r['lost']:.0f}" for r in rs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", type=int, nargs="*", default=[5000, 15000])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--max-seconds", type=float, default=4.0, help="0: no unpaced run")
    ap.add_argument("--idle-seconds", type=float, default=2.0,
                    help="the idle window before each run (background CPU)")
    ap.add_argument("--max-idle", type=float, default=0.03,
                    help="wait (up to --retries idle windows) for the consumer's idle CPU to "
                         "be at most this share of a core before a run")
    ap.add_argument("--retries", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gen-cpu", type=int, default=1)
    ap.add_argument("--tree", action="append", metavar="NAME=DIR")
    ap.add_argument("--agent-arg", action="append", default=[], metavar="ARG",
                    help="one more argument for every agent (e.g. --agent-arg=--rules ...)")
    ap.add_argument("--no-tcplife", action="store_true", help="the agents only")
    ap.add_argument("--together", action="store_true",
                    help="run the tracers at the same time, measured over the same windows, "
                         "instead of one after the other (no 'none' baseline then)")
    ap.add_argument("--json", action="store_true", help="also print every run as JSON")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (BPF)")
    ensure_tcplife()
    results: list[dict[str, Any]] = []
    cs = consumers(args)
    with tempfile.TemporaryDirectory() as tmp:
        loadgen = build_loadgen(tmp)
        for rnd in range(args.rounds):
            if args.together:
                # the tracers side by side over the same windows: the machine's other
                # activity lands on all of them alike
                run_group([c for c in cs if c.argv is not None], loadgen, args, rnd, results)
                continue
            for c in cs[rnd % len(cs):] + cs[:rnd % len(cs)]:
                run_group([c], loadgen, args, rnd, results)
    report(results, [c.name for c in cs], args.rates)
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
