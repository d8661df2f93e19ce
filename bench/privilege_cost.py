#!/usr/bin/env python3
"""Benchmark: what the privilege and kernel sensors cost the syscalls they trace, with vs
without the agent, alternating, in one run.

A C loop (compiled here) makes, per iteration, the syscalls these sensors attach to that
a busy node makes all the time and that no rule wants reported: setuid(own uid) and
setresgid(-1, -1, -1) (root asking for root: filtered in the kernel), ptrace(PEEKDATA) of
no process (not an injecting request: filtered), and getuid() (no tracepoint of ours: the
floor). A second loop makes memfd_create + close (sent only when a rule is on memfd).
Each round times both loops (the median of `--reps` runs) with no agent; with a
`nodewarden run` of this checkout whose `sensors:` are those before these two (exec, tcp,
connect_guard, proc_connector: `before`); with the default sensors, these two included,
and the shipped rules (no rule on these kinds: the kernel sends nothing; `after`); and
with rules on ptrace, setuid and memfd (`rules-on`: memfd records are sent and judged).
Rounds alternate the order. `after` against `before` is what these sensors cost: any
`syscalls:` tracepoint (the exec sensor's execve) already puts every syscall on the
kernel's tracing path.

Wall time on a shared 2-core machine is noisy, so the run also measures what the kernel
side costs exactly: the sensors' programs loaded here (through agent/sources/bpf.py, the
kinds no rule wants skipped, as with the shipped rules), kernel.bpf_stats_enabled on, the
loops run, and each program's run_time_ns / run_cnt read from its fdinfo.

    sudo .venv/bin/python bench/privilege_cost.py --rounds 3 --iters 100000

Needs root, eBPF and gcc.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOOP_C = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    long n = atol(argv[2]);
    double t0 = now();
    if (!strcmp(argv[1], "ids")) {
        uid_t me = getuid();
        for (long i = 0; i < n; i++) {
            setuid(me);
            setresgid(-1, -1, -1);
            ptrace(PTRACE_PEEKDATA, 0, 0, 0);
            getuid();
        }
    } else {
        for (long i = 0; i < n; i++)
            close(memfd_create("bench", MFD_CLOEXEC));
    }
    printf("%.1f\n", (now() - t0) * 1e9 / n);
    return 0;
}
"""

RULES_ON = """rules:
  - id: bench-ptrace
    on: [ptrace]
    match: {ptrace.target_pid: 1}
  - id: bench-setuid
    on: [setuid]
    match: {priv.call: setuid}
  - id: bench-memfd
    on: [memfd]
    match: {memfd.name: not-bench}
"""


def build(tmp: Path) -> Path:
    src, exe = tmp / "loop.c", tmp / "loop"
    src.write_text(LOOP_C)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def timed(exe: Path, loop: str, iters: int, reps: int) -> float:
    """Median ns per iteration of `reps` runs of one loop, pinned to CPU 1 (the agent runs
    where the scheduler puts it)."""
    runs = [float(subprocess.run(["taskset", "-c", "1", str(exe), loop, str(iters)],
                                 check=True, capture_output=True, text=True).stdout)
            for _ in range(reps)]
    return statistics.median(runs)


class Agent:
    """`nodewarden run` of this checkout until `stop`."""

    def __init__(self, tmp: Path, rules: Path | None, config: str = "") -> None:
        cfg = tmp / "bench-config.yaml"
        cfg.write_text(config)
        args = [sys.executable, "-m", "agent", "run", "--config", str(cfg), "--interval",
                "3600", "--listen", "off", "--format", "json"]
        if rules is not None:
            args += ["--rules", str(rules)]
        self.log = tmp / "agent.log"
        env = {**os.environ, "NODEWARDEN_LOCK_FILE": str(tmp / "agent.lock")}
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=self.log.open("w"), env=env)
        deadline = time.monotonic() + 120
        while "ready:" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("agent did not start:\n" + self.log.read_text())
            time.sleep(0.2)
        time.sleep(1)   # the start-up scan and the first rules load done

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def measure(exe: Path, tmp: Path, setup: str, iters: int, reps: int) -> dict[str, float]:
    agent = None
    if setup != "none":
        rules = None
        if setup == "rules-on":
            rules = tmp / "rules-on.yaml"
            rules.write_text(RULES_ON)
        config = ("sensors: [exec, tcp, connect_guard, proc_connector]\n"
                  if setup == "before" else "")
        agent = Agent(tmp, rules, config)
    try:
        return {"ids": timed(exe, "ids", iters, reps),
                "memfd": timed(exe, "memfd", iters, reps)}
    finally:
        if agent is not None:
            agent.stop()


def _fdinfo(fd: int) -> tuple[int, int]:
    info = dict(line.split(":", 1) for line in Path(f"/proc/self/fdinfo/{fd}").read_text()
                .splitlines() if ":" in line)
    return int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0))


def program_cost(exe: Path, iters: int) -> list[tuple[str, float, int]]:
    """(program, ns per run, runs) of each of the sensors' programs that ran during the
    loops, measured with kernel.bpf_stats_enabled."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from agent.sources.bpf import BpfProgram
    from agent.sources.kernel_sensor import KernelSensor
    from agent.sources.privilege_sensor import PrivilegeSensor
    from agent.sources.sensorset import attachable

    _, _, cflags = attachable([PrivilegeSensor, KernelSensor])
    program = BpfProgram(["privilege.bpf.c", "kernel.bpf.c"], lambda r: None, cflags=cflags)
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = stats.read_text().strip()
    try:
        for cls in (PrivilegeSensor, KernelSensor):
            cls(program).send_kinds(frozenset())   # the shipped rules: none on these kinds
        funcs = {name.decode() if isinstance(name, bytes) else name: f.fd
                 for name, f in program.bpf.funcs.items()}
        stats.write_text("1")
        before = {n: _fdinfo(fd) for n, fd in funcs.items()}
        for loop in ("ids", "memfd"):
            subprocess.run([str(exe), loop, str(iters)], check=True, capture_output=True)
        out = []
        for n, fd in funcs.items():
            t, c = _fdinfo(fd)
            dt, dc = t - before[n][0], c - before[n][1]
            if dc:
                out.append((n.replace("tracepoint__syscalls__", ""), dt / dc, dc))
        return out
    finally:
        stats.write_text(old)
        program.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=5, help="runs per loop per round (median)")
    args = ap.parse_args(argv)
    setups = ["none", "before", "after", "rules-on"]
    got: dict[str, list[dict[str, float]]] = {s: [] for s in setups}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        exe = build(tmp)
        for rnd in range(args.rounds):
            for setup in setups if rnd % 2 == 0 else setups[::-1]:
                got[setup].append(measure(exe, tmp, setup, args.iters, args.reps))
                print(f"round {rnd + 1} {setup:>8}: {got[setup][-1]}", file=sys.stderr)
    base = {k: statistics.median(r[k] for r in got["none"]) for k in ("ids", "memfd")}
    print(f"{'agent':<10} {'ids loop ns/iter':>17} {'ratio':>6} {'memfd ns/iter':>14} "
          f"{'ratio':>6}   (medians of {args.rounds} rounds x {args.reps} runs of "
          f"{args.iters} iterations; per-round values on stderr)")
    for setup in setups:
        med = {k: statistics.median(r[k] for r in got[setup]) for k in ("ids", "memfd")}
        print(f"{setup:<10} {med['ids']:>17.1f} {med['ids'] / base['ids']:>6.3f} "
              f"{med['memfd']:>14.1f} {med['memfd'] / base['memfd']:>6.3f}")
    with tempfile.TemporaryDirectory() as d:
        exe = build(Path(d))
        print("\nthe sensors' programs, kinds skipped as with the shipped rules "
              "(kernel.bpf_stats_enabled):")
        for name, ns, runs in program_cost(exe, args.iters):
            print(f"  {name:<28} {ns:>7.1f} ns per run ({runs} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
