#!/usr/bin/env python3
"""Benchmark: what the udp sensor costs a UDP flood, with vs without the agent, alternating.

Each round floods COUNT datagrams of 64 bytes to a local port (bench/udpflood.c, pinned to
CPU 1), once with sendto() and an address per datagram, once connect() + send() (glibc's
resolver's way), in three conditions, in an order that alternates between rounds (ABC,
CBA, ...):

- `off`: no agent;
- `udp`: `nodewarden run` with a rule on udp and one on dns (the sensor reports: one
  record per (process, destination) per 10 s, the rest counted in the kernel);
- `idle`: `nodewarden run` with the shipped rules, none on udp or dns (the sensor's
  programs stop at their first map lookup).

Reported: the flood's wall time (median over rounds) and its ratio to `off`; and, to show
there is no userspace wake-up per packet, the records the agent judged during the floods
(`nodewarden_events_total{source="udp"}`) and the agent's CPU time over them.

    sudo .venv/bin/python bench/udp_cost.py --count 1000000 --rounds 5

Needs root, eBPF and gcc. Every agent and flood dies with us.
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
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODES = ("sendto", "send")
UDP_RULES = """rules:
  - id: bench-udp
    on: [udp]
    match: {conn.dport: {in: [9]}}
  - id: bench-dns
    on: [dns]
    match: {dns.name: {suffix: bench.invalid}}
"""
_CLK = os.sysconf("SC_CLK_TCK")


def build(tmp: Path) -> Path:
    """bench/udpflood.c compiled into tmp."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise SystemExit("udp_cost.py: gcc is needed (apt-get install gcc)")
    out = tmp / "udpflood"
    subprocess.run([gcc, "-O2", "-Wall", "-o", str(out), str(HERE / "udpflood.c")], check=True)
    return out


def flood(binary: Path, mode: str, count: int) -> tuple[float, float]:
    """(seconds the send loop took, CPU seconds the flood used: user + system, where the
    BPF programs' time is charged). The flood is pinned to the last CPU. The CPU time
    is the steadier figure on a shared machine: wall time also counts the waits for a CPU
    other work holds."""
    cpu = max(os.sched_getaffinity(0))
    p = subprocess.Popen(["taskset", "-c", str(cpu), str(binary), mode, str(count)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"udpflood exited {p.returncode}")
    fields = dict(kv.split("=") for kv in out.split())
    if int(fields["failures"]):
        raise SystemExit(f"udpflood: {fields['failures']} sends failed")
    return float(fields["secs"]), usage.ru_utime + usage.ru_stime


class Agent:
    """`nodewarden run` with the given rules (None: the shipped rules), its /metrics."""

    def __init__(self, tmp: Path, rules: str | None, port: int) -> None:
        args = [sys.executable, "-m", "agent", "run", "--config", os.devnull, "--format",
                "json", "--interval", "3600", "--listen", f"127.0.0.1:{port}"]
        if rules is not None:
            path = tmp / "bench-udp.yaml"
            path.write_text(rules)
            args += ["--rules", str(path)]
        self.port = port
        self.log = (tmp / f"agent-{port}.log").open("w+")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=self.log,
                                     env={**os.environ,
                                          "NODEWARDEN_LOCK_FILE": str(tmp / "agent.lock")})
        deadline = time.monotonic() + 180
        while "ready:" not in Path(self.log.name).read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("agent did not start:\n" + Path(self.log.name).read_text())
            time.sleep(0.2)
        time.sleep(2)   # the start-up scan's events judged

    def metric(self, name: str) -> float:
        """One sample of /metrics (0 when absent)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def cpu_s(self) -> float:
        """User + system CPU seconds the agent used so far."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / _CLK

    def stop(self) -> None:
        """SIGTERM, then wait."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def run_condition(cond: str, binary: Path, count: int, tmp: Path, port: int,
                  ) -> dict[str, Any]:
    """The floods of every mode under one condition."""
    agent = None
    if cond != "off":
        agent = Agent(tmp, UDP_RULES if cond == "udp" else None, port)
    try:
        before = (agent.metric('nodewarden_events_total{source="udp"}'),
                  agent.cpu_s()) if agent else (0.0, 0.0)
        got = {mode: flood(binary, mode, count) for mode in MODES}
        out: dict[str, Any] = {"secs": {m: g[0] for m, g in got.items()},
                               "cpu": {m: g[1] for m, g in got.items()}}
        if agent:
            time.sleep(1)   # records sent without a wake-up are read within ms
            out["records"] = agent.metric('nodewarden_events_total{source="udp"}') - before[0]
            out["agent_cpu_s"] = agent.cpu_s() - before[1]
        return out
    finally:
        if agent:
            agent.stop()


class SensorOnly:
    """bpf/udp.bpf.c alone, loaded once in this process, its tracepoints attached and
    detached between floods: the sensor's own cost, without a recompile per round and
    without the other sensors (whose syscall tracepoints, like other agents' on this
    machine, already put every syscall on the traced path)."""

    def __init__(self) -> None:
        from agent.sources import bpf  # BCC: only in this mode

        self.records = 0
        self.program = bpf.BpfProgram(["udp.bpf.c"], self._count)
        self.tps = self.program.tracepoints()
        self.attached = True

    def _count(self, _raw: object) -> None:
        self.records += 1

    def set(self, cond: str) -> None:
        """off: detached; udp: attached and reporting udp and dns; idle: attached, mask 0."""
        import ctypes

        want = (1 << 17 | 1 << 18) if cond == "udp" else 0
        self.program["udp_want"][ctypes.c_int(0)] = ctypes.c_ulonglong(want)
        b = self.program.bpf
        if cond == "off" and self.attached:
            for tp in self.tps:
                b.detach_tracepoint(tp)
            self.attached = False
        elif cond != "off" and not self.attached:
            for tp in self.tps:
                cat, name = tp.split(":")
                b.attach_tracepoint(tp=tp, fn_name=f"tracepoint__{cat}__{name}")
            self.attached = True

    def drain(self) -> int:
        """Records read so far (polling what is pending)."""
        for _ in range(5):
            self.program.poll(10)
        return self.records


def run_sensor_round(sensor: SensorOnly, cond: str, binary: Path, count: int,
                     ) -> dict[str, Any]:
    """The floods of every mode with the sensor in one state."""
    sensor.set(cond)
    before = sensor.drain()
    t0 = os.times()
    got = {mode: flood(binary, mode, count) for mode in MODES}
    records = sensor.drain() - before
    t1 = os.times()
    return {"secs": {m: g[0] for m, g in got.items()}, "cpu": {m: g[1] for m, g in got.items()},
            "records": records,
            "agent_cpu_s": (t1.user + t1.system) - (t0.user + t0.system)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1_000_000, help="datagrams per flood")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print the raw results as JSON")
    ap.add_argument("--level", choices=("agent", "sensor"), default="agent",
                    help="agent: `nodewarden run` started per condition; sensor: "
                    "bpf/udp.bpf.c alone in this process, attached and detached per flood")
    a = ap.parse_args()
    conds = ["off", "udp", "idle"]
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in conds}
    sensor = SensorOnly() if a.level == "sensor" else None
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        binary = build(tmp)
        for r in range(a.rounds):
            order = conds if r % 2 == 0 else conds[::-1]
            for cond in order:
                if sensor is not None:
                    res = run_sensor_round(sensor, cond, binary, a.count)
                    if cond == "off":
                        del res["records"], res["agent_cpu_s"]
                else:
                    res = run_condition(cond, binary, a.count, tmp, 19600 + r)
                runs[cond].append(res)
                print(f"round {r + 1} {cond:5s} " + " ".join(
                    f"{m}={s:.3f}s/{res['cpu'][m]:.3f}cpu" for m, s in res["secs"].items())
                    + (f" records={res['records']:.0f} agent_cpu={res['agent_cpu_s']:.2f}s"
                       if "records" in res else ""), file=sys.stderr, flush=True)
    summary = summarize(runs, a.count)
    if a.json:
        print(json.dumps({"machine": machine(), "count": a.count, "runs": runs,
                          "summary": summary}, indent=1))
    else:
        print_table(summary, a.count, a.rounds)
    return 0


def summarize(runs: dict[str, list[dict[str, Any]]], count: int) -> dict[str, Any]:
    """Medians per condition and mode, and their ratio to `off`."""
    out: dict[str, Any] = {}
    for cond, rs in runs.items():
        row: dict[str, Any] = {}
        offs = runs["off"]
        for mode in MODES:
            med = statistics.median(r["secs"][mode] for r in rs)
            cpu = statistics.median(r["cpu"][mode] for r in rs)
            spread = max(r["secs"][mode] for r in rs) - min(r["secs"][mode] for r in rs)
            # the median of each round's ratio to the `off` flood of the same round
            row[mode] = {
                "median_s": med, "ns_per_send": med / count * 1e9, "spread_s": spread,
                "cpu_s": cpu, "cpu_ns_per_send": cpu / count * 1e9,
                "ratio": statistics.median(r["secs"][mode] / o["secs"][mode]
                                           for r, o in zip(rs, offs, strict=True)),
                "cpu_ratio": statistics.median(r["cpu"][mode] / o["cpu"][mode]
                                               for r, o in zip(rs, offs, strict=True))}
        if cond != "off":
            row["records"] = statistics.median(r["records"] for r in rs)
            row["agent_cpu_s"] = statistics.median(r["agent_cpu_s"] for r in rs)
        out[cond] = row
    return out


def print_table(summary: dict[str, Any], count: int, rounds: int) -> None:
    """The summary as a Markdown table."""
    print(f"{count:,} datagrams per flood and mode, {rounds} rounds, medians (vs off: the "
          "median of each round's ratio); "
          f"{machine()['date']}, {os.cpu_count()} CPUs")
    print("| condition | sendto wall | vs off | sendto CPU | vs off | send (connected) wall | "
          "vs off | send CPU | vs off | udp records read (2 floods) | reader CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for cond, row in summary.items():
        rec = f"{row['records']:.0f}" if "records" in row else "-"
        cpu = f"{row['agent_cpu_s']:.2f} s" if "agent_cpu_s" in row else "-"
        cells = []
        for mode in MODES:
            m = row[mode]
            cells += [f"{m['median_s']:.3f} s ({m['ns_per_send']:.0f} ns)",
                      f"{(m['ratio'] - 1) * 100:+.1f}%",
                      f"{m['cpu_s']:.3f} s ({m['cpu_ns_per_send']:.0f} ns)",
                      f"{(m['cpu_ratio'] - 1) * 100:+.1f}%"]
        print(f"| {cond} | " + " | ".join(cells) + f" | {rec} | {cpu} |")


if __name__ == "__main__":
    sys.exit(main())
