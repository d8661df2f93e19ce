#!/usr/bin/env python3
"""Latency through the real `nodewarden run` (issue 10, target 4): exec -> finding and
exec -> killed, idle and with a CPU hog on each core, for one or more source trees (the base
commit and this one) and realtime off / on, alternated over --rounds rounds.

Each agent is `python -m agent run` started from the tree under test (cwd = the tree, so
`-m agent` imports that tree's code), with the shipped rules, its own lock file, no metrics
listener, no Kubernetes. Nothing is pinned: the agent runs as it would on a node.

exec -> finding: the agent runs in audit mode with the shipped rules and JSON findings on
stdout. A C generator (pinned to the last CPU) forks --execs times, --interval ms apart; each
child takes CLOCK_MONOTONIC just before execve() of `xmrig 0.2` (a copy of /bin/sleep) and
hands it to the parent through a pipe. The bench reads the agent's stdout and stamps each
crypto-miner-exec finding as the line arrives. latency = arrival - pre-exec stamp.

exec -> killed: the agent runs in enforce mode with one rule the kernel cannot test
(`proc.argv0: nwvictim`, action kill). The generator starts the victim (a C binary that
pause()s) --kills times, one at a time; exec -> killed = the parent's waitpid return -
the child's pre-exec stamp. A victim alive after 2 s is killed by the generator and
counted as missed.

The bench's reader, the generator and the children it starts (until and after their
execve: the miners sleep, the victims pause) run in SCHED_FIFO at priority 20, above the
agent's 10, so that under the hogs what is measured is the agent: a SCHED_OTHER child would
wait for the CPU between the stamp and its exec, and a killed one before it exits. Hogs:
`sh -c 'while :; do :; done'` pinned to each CPU.

    .venv/bin/python bench/run_latency.py --tree base=/tmp/base --tree new=. --rounds 3

With --extra N --scan-interval S the agents scan procfs every S seconds over N more
processes, so what periodic passes do to latency is in the figures.

A tree whose config has no `realtime` key is run with realtime off only. Needs root, BCC and
gcc. Prints a markdown table (medians of the rounds' p50 / p99, and every round's p99).
"""

from __future__ import annotations

import argparse
import contextlib
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
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Hogs  # bench/common.py
from latency import pct  # bench/latency.py

GEN_C = r"""
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* gen MODE COUNT INTERVAL_US PATH [ARG]: MODE spawn (not waited for) or kill (waited for,
   2 s at most). Prints "pid PID EXEC_NS [REAPED_NS STATUS]" per child. */
int main(int argc, char **argv) {
    int kill_mode = strcmp(argv[1], "kill") == 0;
    int count = atoi(argv[2]);
    long interval_us = atol(argv[3]);
    char *child_argv[] = {argv[4], argc > 5 ? argv[5] : NULL, NULL};
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    if (kill_mode)
        sigprocmask(SIG_BLOCK, &chld, NULL);
    else
        signal(SIGCHLD, SIG_IGN); /* reaped by the kernel */
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; i < count; i++) {
        int p[2];
        if (pipe(p) != 0) return 1;
        pid_t pid = fork();
        if (pid == 0) {
            close(p[0]);
            long long t = now_ns();
            if (write(p[1], &t, sizeof t) != sizeof t) _exit(127);
            close(p[1]);
            execv(argv[4], child_argv);
            _exit(127);
        }
        close(p[1]);
        long long t_exec = 0;
        if (read(p[0], &t_exec, sizeof t_exec) != sizeof t_exec) t_exec = 0;
        close(p[0]);
        if (kill_mode) {
            struct timespec limit = {2, 0};
            int status = 0;
            if (sigtimedwait(&chld, NULL, &limit) < 0) kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            long long t_reaped = now_ns();
            printf("pid %d %lld %lld %d\n", (int)pid, t_exec, t_reaped,
                   WIFSIGNALED(status) ? WTERMSIG(status) : -1);
        } else {
            printf("pid %d %lld\n", (int)pid, t_exec);
        }
        usleep(interval_us);
    }
    return 0;
}
"""

VICTIM_C = r"""
#include <unistd.h>
int main(void) { pause(); return 0; }
"""

KILL_RULE = ("rules:\n  - id: victim\n    action: kill\n    severity: high\n"
             "    match: {proc.argv0: nwvictim}\n")
BENCH_PRIORITY = 20


@dataclass
class Agent:
    """One `nodewarden run` from `tree`; its finding lines stamped as they arrive."""

    tree: str
    config: str
    trace: str | None = None   # bench/stagetrace.py's output file: run the agent traced
    proc: subprocess.Popen[str] | None = None
    arrivals: dict[int, int] = field(default_factory=dict)   # pid -> monotonic ns
    _reader: threading.Thread | None = None

    def start(self, timeout: float = 90.0) -> None:
        agent = ["-m", "agent"] if self.trace is None else [
            os.path.join(os.path.dirname(os.path.abspath(__file__)), "stagetrace.py"),
            self.trace, "--"]
        self.proc = subprocess.Popen(
            ["chrt", "-o", "0", sys.executable, *agent, "run", "--config", self.config,
             "--format", "json"], cwd=self.tree, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1, start_new_session=True)
        ready = threading.Event()
        self.stderr: list[str] = []

        def err() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr.append(line)
                if "ready:" in line:
                    ready.set()

        threading.Thread(target=err, daemon=True).start()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not ready.wait(timeout):
            self.stop()
            raise RuntimeError("agent not ready:\n" + "".join(self.stderr[-20:]))

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            t = time.monotonic_ns()
            with contextlib.suppress(ValueError, KeyError, TypeError):
                f = json.loads(line)
                if f["rule"] == "crypto-miner-exec":
                    self.arrivals.setdefault(int(f["process"]["pid"]), t)

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


def build(tmp: Path) -> tuple[str, str, str]:
    """(generator, miner, victim) binaries in tmp."""
    gcc = shutil.which("gcc") or shutil.which("cc") or "cc"
    for name, src in (("gen", GEN_C), ("nwvictim", VICTIM_C)):
        (tmp / f"{name}.c").write_text(src)
        subprocess.run([gcc, "-O2", "-o", str(tmp / name), str(tmp / f"{name}.c")], check=True)
    miner = tmp / "xmrig"
    shutil.copy2(shutil.which("sleep") or "/bin/sleep", miner)
    return str(tmp / "gen"), str(miner), str(tmp / "nwvictim")


def generate(gen: str, args: list[str], cpu: int, timeout: float) -> list[list[int]]:
    """Run the generator pinned to `cpu` in SCHED_FIFO; its "pid ..." lines as ints."""
    cmd = ["taskset", "-c", str(cpu), "chrt", "-f", str(BENCH_PRIORITY), gen, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout
    return [[int(x) for x in line.split()[1:]] for line in out.splitlines()
            if line.startswith("pid ")]


def write_config(tmp: Path, name: str, mode: str, realtime: bool | None,
                 rules: str | None, scan_interval: float | None = None) -> str:
    lines = [f"mode: {mode}", f"lock_file: {tmp}/{name}.lock", "listen: 'off'",
             "kubernetes: 'off'"]
    if scan_interval is not None:
        lines.append(f"scan_interval: {scan_interval}")
    if realtime is not None:
        lines.append(f"realtime: {'true' if realtime else 'false'}")
    if rules is not None:
        lines.append(f"rules: [{rules}]")
    path = tmp / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def measure(agent: Agent, gen: str, binary: str, kill: bool, n: int, interval_ms: float,
            cpu: int) -> tuple[list[float], int]:
    """(latencies in ms, misses) for n execs of `binary`."""
    if kill:
        rows = generate(gen, ["kill", str(n), str(int(interval_ms * 1000)), binary], cpu,
                        timeout=n * 3 + 30)
        got = [(r[2] - r[1]) / 1e6 for r in rows if r[3] == signal.SIGKILL]
        # the generator's own SIGKILL after 2 s also reads as SIGKILL: those are misses
        ok = [x for x in got if x < 2000]
        return ok, n - len(ok)
    agent.arrivals.clear()
    rows = generate(gen, ["spawn", str(n), str(int(interval_ms * 1000)), binary, "0.2"], cpu,
                    timeout=n * 3 + 30)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and any(r[0] not in agent.arrivals for r in rows):
        time.sleep(0.05)
    lat = [(agent.arrivals[r[0]] - r[1]) / 1e6 for r in rows if r[0] in agent.arrivals]
    return lat, n - len(lat)


def has_realtime(tree: str) -> bool:
    return "realtime:" in Path(tree, "agent", "config.py").read_text()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", required=True, metavar="NAME=PATH",
                    help="a source tree to run `python -m agent` from (repeatable)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--execs", type=int, default=200)
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--interval", type=float, default=15.0, help="ms between execs")
    ap.add_argument("--json", help="also write every sample to this file")
    ap.add_argument("--extra", type=int, default=0,
                    help="idle processes started first (sleepers), for a bigger procfs")
    ap.add_argument("--scan-interval", type=float, default=None,
                    help="the agents' scan_interval (default: the config's, 60 s)")
    ap.add_argument("--stages", action="store_true",
                    help="run the agents through bench/stagetrace.py and print each stage's "
                         "p50 / p90 / p99 (µs) per measure")
    args = ap.parse_args()
    sleepers = [subprocess.Popen(["sleep", "3600"]) for _ in range(args.extra)]
    try:
        return run(args)
    finally:
        for p in sleepers:
            p.kill()
            p.wait()


def run(args: argparse.Namespace) -> int:
    """The rounds, then the table."""
    trees = dict(t.split("=", 1) for t in args.tree)
    cpus = sorted(os.sched_getaffinity(0))
    gen_cpu = cpus[-1]
    results: dict[str, list[tuple[list[float], int]]] = {}
    stages: dict[str, list[dict[str, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="nw-runlat-") as tmpdir:
        tmp = Path(tmpdir)
        gen, miner, victim = build(tmp)
        # every thread of the bench (the stdout reader stamping arrivals above all) ahead of
        # the agent and the hogs, which are started at normal priority: no thread of ours
        # holding the GIL can wait behind a hog
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(BENCH_PRIORITY))
        (tmp / "rules").mkdir()
        (tmp / "rules" / "victim.yaml").write_text(KILL_RULE)
        setups = [(name, path, rt) for name, path in trees.items()
                  for rt in ((False, True) if has_realtime(path) else (None,))]
        for rnd in range(args.rounds):
            order = setups if rnd % 2 == 0 else list(reversed(setups))
            for name, path, rt in order:
                label = f"{name}, realtime {'on' if rt else 'off'}"
                for kill in (False, True):
                    cfg = write_config(tmp, "a", "enforce" if kill else "audit", rt,
                                       str(tmp / "rules") if kill else None,
                                       args.scan_interval)
                    trace = str(tmp / "trace.json") if args.stages else None
                    agent = Agent(os.path.abspath(path), cfg, trace)
                    agent.start()
                    windows: dict[str, tuple[int, int]] = {}
                    try:
                        time.sleep(1.0)  # the start-up scan's findings are out
                        for stressed in (False, True):
                            hogs = Hogs(cpus)
                            if stressed:
                                hogs.start()
                                time.sleep(0.2)
                            began = time.monotonic_ns()
                            try:
                                got = measure(agent, gen, victim if kill else miner, kill,
                                              args.kills if kill else args.execs,
                                              args.interval, gen_cpu)
                            finally:
                                hogs.stop()
                            key = (f"{'exec -> killed' if kill else 'exec -> finding'} | "
                                   f"{label} | {'hogs' if stressed else 'idle'}")
                            windows[key] = (began, time.monotonic_ns())
                            results.setdefault(key, []).append(got)
                            print(f"round {rnd + 1} {key}: p50 {pct(got[0], 50):.2f} "
                                  f"p99 {pct(got[0], 99):.2f} missed {got[1]}",
                                  file=sys.stderr, flush=True)
                    finally:
                        agent.stop()
                    if trace is not None:
                        for key, window in windows.items():
                            stages.setdefault(key, []).extend(in_window(trace, window))
    print("| measure | tree, realtime | load | rounds | p50 median (ms) | p99 median (ms) "
          "| p99 per round (ms) | missed |")
    print("|---|---|---|---:|---:|---:|---|---:|")
    for key in sorted(results):
        runs = results[key]
        p50 = statistics.median(pct(r[0], 50) for r in runs)
        p99s = [pct(r[0], 99) for r in runs]
        what, label, load = key.split(" | ")
        print(f"| {what} | {label} | {load} | {len(runs)} | {p50:.2f} | "
              f"{statistics.median(p99s):.2f} | {', '.join(f'{x:.2f}' for x in p99s)} | "
              f"{sum(r[1] for r in runs)} |")
    if stages:
        print_stages(stages)
    if args.json:
        Path(args.json).write_text(json.dumps({k: [r[0] for r in v] for k, v in
                                               results.items()}))
    return 0


def in_window(trace: str, window: tuple[int, int]) -> list[dict[str, int]]:
    """The traced samples (bench/stagetrace.py) of one measure's window, each with the GC
    time (µs) that overlapped its handling."""
    data = json.loads(Path(trace).read_text())
    out = []
    for s in data["samples"]:
        if window[0] <= s["obs_in"] <= window[1]:
            s["gc_us"] = sum(min(g1, s["done"]) - max(g0, s["obs_in"])
                             for g0, g1, _ in data["gc"]
                             if g0 < s["done"] and g1 > s["obs_in"]) // 1000
            out.append(s)
    return out


def print_stages(stages: dict[str, list[dict[str, int]]]) -> None:
    """Per measure, each stage's p50 / p90 / p99 in µs over every round's samples, the
    event thread's CPU/wall over the handling, and the GC that overlapped it."""
    from stagetrace import STAGES

    print("\n| measure | tree, realtime | load | n | " +
          " | ".join(STAGES) + " | cpu/wall | gc (events, max µs) |")
    print("|---|---|---|---:|" + "---|" * (len(STAGES) + 2))
    for key in sorted(stages):
        ss = stages[key]
        cells = []
        for a, b in STAGES.values():
            xs = [(s[b] - s[a]) / 1e3 for s in ss if a in s and b in s]
            cells.append(f"{pct(xs, 50):.0f} / {pct(xs, 90):.0f} / {pct(xs, 99):.0f}"
                         if xs else "-")
        ratio = [(s["cpu_out"] - s["cpu_in"]) / max(1, s["done"] - s["obs_in"]) for s in ss]
        gcs = [s["gc_us"] for s in ss if s["gc_us"]]
        what, label, load = key.split(" | ")
        print(f"| {what} | {label} | {load} | {len(ss)} | " + " | ".join(cells) +
              f" | {pct(ratio, 50):.2f} / {pct(ratio, 99):.2f} | "
              f"{len(gcs)}, {max(gcs, default=0)} |")


if __name__ == "__main__":
    sys.exit(main())
