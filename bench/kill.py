#!/usr/bin/env python3
"""Exec-to-kill latency, userspace path vs in-kernel path, as the victim's parent sees it.

    .venv/bin/python bench/kill.py [--trials-user 200] [--trials-kernel 1000]

Both paths run the agent's real code in-process: ExecSensor -> Observer -> Judge ->
Enforcer (pidfd + start-time check) for userspace, and the BPF program's own
bpf_send_signal at sched_process_exec for the in-kernel path. Per trial: the exec's
bpf_ktime_get_ns (CLOCK_MONOTONIC) against the moment the parent's waitpid returned
(reaped), and the whole lifetime from spawn to reap. The in-kernel victim is a C binary
whose first act is to create a marker file: the marker must never appear.
Needs root and eBPF. Targets: userspace exec-to-kill p99 <= 10 ms; in-kernel: no marker
in 1,000 trials.

This is the agent's path in-process, pinned; the same measure through the real
`nodewarden run` (a subprocess, `realtime` off and on, against another source tree) is
bench/run_latency.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.actions.kill import Enforcer
from agent.decide import Protection
from agent.engine import loader
from agent.metrics import Metrics
from agent.observer import Observer
from agent.pipeline import Agent, Judge
from agent.sources import bpf
from agent.sources.exec_sensor import ExecSensor
from agent.sources.netstate import NetState
from agent.sources.procfs import ProcFS
from agent.sources.proctree import ProcessTree

MARKER_C = r"""
#include <fcntl.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int fd = open(argv[1], O_CREAT | O_WRONLY, 0644);
    if (fd >= 0) close(fd);
    pause();
    return 0;
}
"""


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def run(trials_user: int, trials_kernel: int) -> None:
    bpf.check()
    tmp = Path(tempfile.mkdtemp(prefix="nodewarden-kill-"))
    try:
        (tmp / "m.c").write_text(MARKER_C)
        marker = tmp / "nwmarker"
        subprocess.run(["cc", "-O2", "-o", str(marker), str(tmp / "m.c")], check=True)
        victim = tmp / "nwvictim"
        shutil.copy(marker, victim)
        # userspace-only rule: argv0 cannot be tested in the kernel
        (tmp / "r.yaml").write_text("rules:\n  - id: victim\n    action: kill\n"
                                    "    match: {proc.argv0: nwvictim}\n")
        fs = ProcFS()
        tree = ProcessTree(fs)
        tree.scan()
        metrics = Metrics()
        prot = Protection.of([ProcFS().read(os.getpid())])
        judge = Judge(loader.load([str(tmp / "r.yaml")]), "enforce", prot, metrics, can_act=True)
        enforcer = Enforcer(fs, ProcessTree(fs), prot)
        agent = Agent(tree, judge, lambda ds: None, metrics, 3600.0, act=enforcer.carry_out)
        observer = Observer(tree, NetState())
        exec_ktime: dict[int, int] = {}

        def on_raw(raw):  # type: ignore[no-untyped-def]
            if raw.kind == 1:
                exec_ktime[raw.pid] = raw.ts_ns
            ev = observer.handle(raw)
            if ev is not None:
                agent.handle(ev)

        program = bpf.BpfProgram([ExecSensor.source], on_raw)
        sensor = ExecSensor(program)
        sensor.start()
        sensor.load_rules([({"nwmarker"}, set(), True)])
        stop = threading.Event()

        def consume() -> None:
            while not stop.is_set():
                sensor.poll(50)

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        results = {}
        for name, exe, trials in (("userspace", victim, trials_user),
                                  ("in-kernel", marker, trials_kernel)):
            to_kill, lifetimes, markers, not_killed = [], [], 0, 0
            for i in range(trials):
                mark = tmp / f"mark-{name}-{i}"
                start = time.monotonic_ns()
                p = subprocess.Popen([str(exe), str(mark)])
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
                    not_killed += 1
                reaped = time.monotonic_ns()
                if p.returncode != -9:
                    not_killed += 1
                markers += mark.exists()
                lifetimes.append((reaped - start) / 1e6)
                for _ in range(100):
                    if p.pid in exec_ktime:
                        break
                    time.sleep(0.001)
                if p.pid in exec_ktime:
                    to_kill.append((reaped - exec_ktime.pop(p.pid)) / 1e6)
                time.sleep(0.005)
            results[name] = (to_kill, lifetimes, markers, not_killed, trials)
        stop.set()
        t.join(timeout=5)
        sensor.close()
        program.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"## kill benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    print(f"nproc {os.cpu_count()}, kernel {os.uname().release}, Python {sys.version.split()[0]}\n")
    print("| path | trials | killed | marker files | exec->reaped p50 ms | p99 ms | max ms | "
          "lifetime seen by parent p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, (to_kill, life, markers, not_killed, trials) in results.items():
        print(f"| {name} | {trials} | {trials - not_killed} | {markers} | "
              f"{statistics.median(to_kill):.2f} | {pct(to_kill, 99):.2f} | {max(to_kill):.2f} | "
              f"{statistics.median(life):.2f} | {pct(life, 99):.2f} |")
    user = results["userspace"][0]
    kern = results["in-kernel"]
    print(f"\n- userspace exec-to-kill p99 <= 10 ms: {pct(user, 99):.2f} ms: "
          f"{'MET' if pct(user, 99) <= 10 else 'MISSED'}")
    print(f"- in-kernel: marker never created in {kern[4]} trials: "
          f"{'MET' if kern[2] == 0 and kern[3] == 0 else 'MISSED'} ({kern[2]} markers)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials-user", type=int, default=200)
    ap.add_argument("--trials-kernel", type=int, default=1000)
    a = ap.parse_args()
    os.sched_setaffinity(0, {0})
    run(a.trials_user, a.trials_kernel)
