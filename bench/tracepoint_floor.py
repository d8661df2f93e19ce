#!/usr/bin/env python3
"""Benchmark: what a syscall tracepoint costs before a sensor's program does anything (its
floor), next to what the file and udp sensors cost, per syscall, in one run.

An open+close loop (bench/common.py's OPENLOOP_C) and UDP floods (bench/udpflood.c:
`sendto` with an address, connected `send`) run pinned to CPU 1, timed by their own CPU
time (user + system, where the kernel's tracepoint dispatch and BPF programs are charged),
under each condition in turn, rounds alternating:

- `none`: nothing attached;
- `execve`: an empty program on sys_enter_execve (any agent has one: from then on every
  syscall takes the traced entry path);
- `+empty X`: that, plus an empty program on the tracepoint X the sensors use;
- `+file` / `+udp`: that, plus the sensor itself (this checkout's bpf/, shipped rules).

The minimum and the quartiles over rounds are reported: on a shared VM the distribution is
wide and its low end is what the code costs.

    sudo .venv/bin/python bench/tracepoint_floor.py --rounds 11

Needs root, bcc and gcc.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common  # bench/common.py

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

EXECVE = "TRACEPOINT_PROBE(syscalls, sys_enter_execve) { return 0; }\n"


def empty(tp: str) -> str:
    """An empty program on syscalls:tp beside the execve one."""
    return EXECVE + f"TRACEPOINT_PROBE(syscalls, {tp}) {{ return 0; }}\n"


def cpu_ns(cmd: list[str], ops: int) -> float:
    """CPU ns per operation of a child run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["taskset", "-c", "1", *cmd], check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return used / ops * 1e9


class Attached:
    """A condition's programs, attached while in use."""

    def __init__(self, text: str | None, sensor: str | None) -> None:
        from bcc import BPF

        self.bpf = BPF(text=text) if text else None
        self.program: Any = None
        if sensor:
            self.program = _sensor(sensor)

    def close(self) -> None:
        if self.program is not None:
            self.program.close()
        if self.bpf is not None:
            self.bpf.cleanup()


def _sensor(name: str) -> Any:
    """The file or udp sensor of this checkout with the shipped rules' watches and kinds."""
    from agent.engine.loader import load
    from agent.sources.bpf import BpfProgram
    from agent.sources.file_sensor import FileSensor
    from agent.sources.sensorset import attachable
    from agent.sources.udp_sensor import UdpSensor

    rules = load([str(HERE.parent / "rules")]).rules
    cls = FileSensor if name == "file" else UdpSensor
    _, _, cflags = attachable([cls])
    program = BpfProgram([cls.source], lambda r: None, cflags=cflags)
    if cls is FileSensor:
        FileSensor(program).use_rules(rules)
    else:
        UdpSensor(program).send_kinds({k for r in rules for k in r.kinds})
    return program


def measure(rounds: int, work: Path, count: int) -> dict[str, dict[str, list[float]]]:
    """CPU ns per op of each workload under each condition, rounds alternating."""
    loads: dict[str, Callable[[], float]] = {
        "open+close": lambda: cpu_ns([str(work / "openloop"), str(count),
                                      str(work / "files")], count),
        "udp sendto": lambda: cpu_ns([str(work / "udpflood"), "sendto", str(count)], count),
        "udp send": lambda: cpu_ns([str(work / "udpflood"), "send", str(count)], count),
    }
    conds: dict[str, tuple[str | None, str | None]] = {
        "none": (None, None), "execve": (EXECVE, None),
        "+empty sys_enter_openat": (empty("sys_enter_openat"), None),
        "+empty sys_enter_close": (empty("sys_enter_close"), None),
        "+empty sys_exit_openat": (empty("sys_exit_openat"), None),
        "+empty sys_enter_sendto": (empty("sys_enter_sendto"), None),
        "+file sensor": (EXECVE, "file"), "+udp sensor": (EXECVE, "udp"),
    }
    out: dict[str, dict[str, list[float]]] = {c: {w: [] for w in loads} for c in conds}
    for r in range(rounds):
        order = list(conds) if r % 2 == 0 else list(reversed(conds))
        for cond in order:
            att = Attached(*conds[cond])
            try:
                for w, run in loads.items():
                    out[cond][w].append(run())
            finally:
                att.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--count", type=int, default=200_000, help="operations per run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nw-tp-floor-") as tmp:
        work = Path(tmp)
        (work / "openloop.c").write_text(common.OPENLOOP_C)
        for src, exe in ((work / "openloop.c", "openloop"), (HERE / "udpflood.c", "udpflood")):
            subprocess.run(["gcc", "-O2", "-o", str(work / exe), str(src)], check=True)
        (work / "files").mkdir()
        for i in range(100):
            (work / "files" / f"file-{i}").write_text("x")
        out = measure(args.rounds, work, args.count)
    print(f"CPU ns per operation, {args.rounds} rounds: min / p25 / median "
          f"({common.machine()['date']})")
    works = list(next(iter(out.values())))
    print("| condition | " + " | ".join(works) + " |")
    print("|---|" + "---:|" * len(works))
    for cond, per in out.items():
        cells = []
        for w in works:
            xs = sorted(per[w])
            cells.append(f"{xs[0]:.0f} / {xs[len(xs) // 4]:.0f} / {statistics.median(xs):.0f}")
        print(f"| {cond} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
