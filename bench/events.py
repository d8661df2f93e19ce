#!/usr/bin/env python3
"""Benchmark: eBPF events ingested and judged per second by the agent's own path, with
zero loss, and the loss rate at twice that rate.

The consumer runs in this process, pinned to one CPU (--cpu, default 0), exactly as the
agent's event loop does: open_sensors (ring buffer, bpf/*.bpf.c, the cgroup connect guard
attached and the in-kernel rules loaded as with the default kernel_enforcement: true) ->
Observer.handle -> Agent.handle -> Judge.judge with the shipped rules (mode audit, metrics
on, findings counted, not printed). A load generator (bench/loadgen.c, built with gcc into
a temporary directory at start) runs as a separate process pinned to the other CPU
(--gen-cpu, 1):

  exec      fork + execve(/bin/true) + waitpid        3 records: fork, exec, exit
  connect   connect/accept/close to its own listener  4 records: connect, accept, 2 x close
            on 127.0.0.1 (accept4 with a sockaddr)
  connect-rst  the same, the client closing with RST (SO_LINGER 0): 4 records, as connect;
            no FIN exchange and no TIME_WAIT, so a generator that outruns the consumer
  mix       one exec, then 10 connects

For each mode:
  1. max      the generator as fast as it goes, for --duration seconds;
  2. zero-loss rate: if the consumer kept up in (1) (no loss, at most 0.1 s of backlog when
              the generator stopped), the rate of (1); otherwise the highest paced rate it
              kept up with, by --steps steps of bisection of --step-duration seconds each
              between half the rate ingested in (1) and the rate offered in (1);
  3. double   twice the zero-loss rate: one paced generator when it can go that fast, else
              one unpaced on its CPU plus a second one making up the rest on the consumer's CPU
              (the only other one; the consumer then shares it, as the output says);
              loss rate = lost / (lost + ingested).
Also a `bare` run per mode: the generator at full speed with a consumer that only decodes
and counts (no Observer, no rules), which is what the transport alone allows; and, for
--curve-modes (connect-rst), bare and full runs paced at the --curve rates (10k, 20k, 40k/s),
for the consumer's CPU per record and records per poll (per wake-up) against the rate.

Ingested = records the callback received; their rate is counted from the generator's start
to the last record consumed (the backlog drained after the generator stops is included, and
its drain time shown). Judged = Events the Observer returned and Judge.judge judged (fork
records and records it cannot attribute give none). Lost = the sensor's `lost()` delta
(ring-buffer reservations that failed in the kernel). Records from other processes on the
machine are counted too (a handful per second on an idle machine).

Target: >= 50,000 events/s with zero loss.

    .venv/bin/python bench/events.py [--modes exec connect connect-rst mix] [--duration 4]
        [--step-duration 3] [--steps 4] [--curve 10000 20000 40000] [--json] [--profile]

Needs root, gcc and BCC (bpf.check() says what is missing). Every generator dies with us
(PR_SET_PDEATHSIG), is killed on exit, Ctrl-C and SIGTERM, and every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import contextlib

import common  # bench/common.py

from agent.config import Config
from agent.decide import Protection
from agent.engine import loader
from agent.metrics import Metrics
from agent.observer import Observer
from agent.pipeline import Agent, Judge
from agent.sources import bpf
from agent.sources.kevents import EVENT_KINDS, RawEvent, RecordKind
from agent.sources.netstate import NetState
from agent.sources.procfs import ProcFS
from agent.sources.proctree import ProcessTree
from agent.sources.sensorset import SensorSet, open_sensors

_EXEC = int(RecordKind.EXEC)

TARGET = 50_000
MODES = ("exec", "connect", "connect-rst", "mix")
HERE = Path(__file__).resolve().parent
LOADGEN_SRC = HERE / "loadgen.c"
DRAIN_LIMIT = 15.0     # seconds a run may spend draining a backlog after its generator ends
GEN_GRACE = 5.0        # seconds past its duration before a generator is killed
KEEPUP_DRAIN = 0.1     # seconds of backlog at the generator's end that still count as keeping up


# -- the load generator -------------------------------------------------------------------

def build_loadgen(tmpdir: str) -> str:
    """Compile bench/loadgen.c into tmpdir; returns the binary's path."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise SystemExit("events.py: gcc is needed to build bench/loadgen.c (apt-get install gcc)")
    out = os.path.join(tmpdir, "loadgen")
    subprocess.run([gcc, "-O2", "-Wall", "-o", out, str(LOADGEN_SRC)], check=True,
                   capture_output=True, text=True, timeout=60)
    return out


# -- stopping on a signal -------------------------------------------------------------------
# A KeyboardInterrupt raised while BCC's ctypes callback runs is printed and dropped by
# ctypes, so the handler kills the generators (no more records: the poll returns), records
# the signal, and raises only outside the callback; `poll()` raises it after the poll.

_STOP: list[str] = []
_LIVE: list[Generators] = []


def _in_callback(frame: Any) -> bool:
    while frame is not None:
        if frame.f_code.co_name in ("_ring_cb", "_perf_cb"):
            return True
        frame = frame.f_back
    return False


def _on_signal(signum: int, frame: Any) -> None:
    _STOP.append(f"signal {signum}")
    for g in _LIVE:
        g.kill()
    if not _in_callback(frame):
        raise KeyboardInterrupt(_STOP[0])


def install_signal_handlers() -> None:
    """Ctrl-C, SIGTERM and SIGHUP stop the benchmark cleanly (also when started with
    SIGINT ignored, as `cmd &` does)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


def poll(sensor: Any, timeout_ms: int) -> None:
    """sensor.poll(), then raise KeyboardInterrupt if a signal came during it."""
    sensor.poll(timeout_ms)
    if _STOP:
        raise KeyboardInterrupt(_STOP[0])


class Generators:
    """Load generator processes, each pinned to a CPU, in process groups of their own.
    `stop()` kills and reaps every one of them; they also die with us (PR_SET_PDEATHSIG)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        _LIVE.append(self)

    def kill(self) -> None:
        """SIGKILL every generator's process group, without waiting (signal-handler safe)."""
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)

    def start(self, argv: Sequence[str], cpu: int) -> subprocess.Popen[str]:
        def pin() -> None:
            if cpu >= 0:
                os.sched_setaffinity(0, {cpu})

        p = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=pin, process_group=0)  # noqa: PLW1509 (no threads)
        self.procs.append(p)
        return p

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            # the group may hold a child that outlived its generator (it has PDEATHSIG too)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
        self.procs.clear()
        if self in _LIVE:
            _LIVE.remove(self)


_DONE = re.compile(r"^done (.*)$", re.MULTILINE)


def generator_report(out: str) -> dict[str, float]:
    """The generator's summary line as numbers: ops, execs, connects, records, secs."""
    m = _DONE.search(out)
    if m is None:
        return {}
    return {k: float(v) for k, v in (kv.split("=") for kv in m.group(1).split())}


# -- the consumer --------------------------------------------------------------------------

def agent_sensors(on_raw: Callable[[RawEvent], None],
                  ring_pages: int = bpf.DEFAULT_RING_PAGES) -> SensorSet:
    """The sensors the agent runs by default (ring buffer), records to `on_raw`."""
    cfg = Config()
    cfg.bpf, cfg.bpf_transport, cfg.ring_buffer_pages = "required", "ring", ring_pages
    return open_sensors(cfg, on_raw, Metrics())


def load_kernel_rules(sensors: SensorSet, agent: Agent, judge: Judge) -> None:
    """The in-kernel rules, as the agent loads them (kernel_enforcement: true)."""
    agent.use_kernel_rules(*sensors.load_kernel_rules(
        judge.ruleset.rules, judge.mode, judge.protection.names))


class Consumer:
    """One loaded BpfSensor whose records go to a callback that can be swapped per run:
    `full` (Observer -> Agent.handle -> Judge.judge, as the agent) or `bare` (count only)."""

    def __init__(self, ring_pages: int) -> None:
        self.ruleset = loader.load([loader.bundled_rules_dir()])
        self.kinds = [0] * 8
        self.judged: dict[str, int] = {}
        self.findings = 0
        # exec records' delivery lag (ns from the kernel's timestamp to the callback)
        self.lags: list[int] = []
        self._fn: Callable[[RawEvent], None] = self._bare
        self.sensor = agent_sensors(self._on_raw, ring_pages)
        self.agent: Agent | None = None

    def _on_raw(self, raw: RawEvent) -> None:
        self._fn(raw)

    def _bare(self, raw: RawEvent) -> None:
        self.kinds[raw.kind] += 1
        if raw.kind == _EXEC:
            self.lags.append(time.monotonic_ns() - raw.ts_ns)

    def reset(self, level: str) -> None:
        """Fresh counters and, for `full`, a fresh agent (tree scanned as at start-up)."""
        self.kinds = kinds = [0] * 8
        judged: dict[str, int] = {}
        self.judged = judged
        self.findings = 0
        self.lags = lags = []
        if level == "bare":
            self._fn = self._bare
            return
        tree = ProcessTree(ProcFS())
        tree.scan()
        metrics = Metrics()
        judge = Judge(self.ruleset, "audit", Protection.of([ProcFS().read(os.getpid())]),
                      metrics, 65536, can_act=False)

        def report(decisions: list[Any]) -> None:
            self.findings += len(decisions)

        agent = self.agent = Agent(tree, judge, report, metrics, 3600.0)
        # the in-kernel exec (and connect) rules, loaded as the agent does by default
        # (kernel_enforcement: true); /bin/true and loopback connects match none of them
        load_kernel_rules(self.sensor, agent, judge)
        observer = Observer(tree, NetState())
        handle = observer.handle
        agent_handle = agent.handle

        def full(raw: RawEvent) -> None:
            kinds[raw.kind] += 1
            if raw.kind == _EXEC:
                lags.append(time.monotonic_ns() - raw.ts_ns)
            ev = handle(raw)
            if ev is not None:
                judged[ev.kind] = judged.get(ev.kind, 0) + 1
                agent_handle(ev)

        self._fn = full

    def total(self) -> int:
        return sum(self.kinds)

    def drain(self, limit: float = 5.0) -> None:
        """Consume whatever is pending (records from before a run)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            n = self.total()
            poll(self.sensor, 20)
            if self.total() == n:
                return


def run(consumer: Consumer, loadgen: str, mode: str, rate: float, secs: float,
        gens: Sequence[tuple[int, float]] | None = None, level: str = "full") -> dict[str, Any]:
    """One measured run: generators started (`gens`: (cpu, rate) pairs; default one on the
    generator CPU at `rate`), records consumed until they are done and the ring is drained."""
    consumer.reset("bare")
    consumer.drain()
    consumer.reset(level)
    sensor = consumer.sensor
    lost0 = sum(sensor.lost().values())
    g = Generators()
    plan = list(gens) if gens else [(RUN_ARGS.gen_cpu, rate)]
    try:
        cpu0 = os.times()
        steal0 = steal_ms()
        t0 = time.monotonic()
        for cpu, r in plan:
            g.start([loadgen, mode, f"{r:.0f}", f"{secs}"], cpu)
        last = t0
        gen_end = None
        timed_out = False
        hard = t0 + secs + GEN_GRACE
        polls = 0
        while True:
            before = consumer.total()
            poll(sensor, 50)
            now = time.monotonic()
            if consumer.total() > before:
                last = now
                polls += 1
            if gen_end is None:
                if not g.running():
                    gen_end = now
                elif now > hard:
                    g.stop()
                    gen_end = now
                    timed_out = True
            elif consumer.total() == before or now > gen_end + DRAIN_LIMIT:
                timed_out |= now > gen_end + DRAIN_LIMIT
                break
        lost = sum(sensor.lost().values()) - lost0
        cpu1 = os.times()
        steal1 = steal_ms()
        outs = [p.communicate(timeout=5)[0] for p in g.procs]
    finally:
        g.stop()
    reports = [generator_report(o) for o in outs]
    records = consumer.total()
    # the generators' own clock (CLOCK_MONOTONIC, as time.monotonic): from the first one's
    # start to the last record consumed; drain = the backlog left when the last one ended
    gen_t0 = min((r["t0"] for r in reports if "t0" in r), default=t0)
    gen_t1 = max((r["t1"] for r in reports if "t1" in r), default=gen_end or last)
    span = max(last - gen_t0, 1e-9)
    offered = sum(r.get("records", 0) / max(r.get("secs", secs), 1e-9) for r in reports)
    judged = dict(consumer.judged)
    return {
        "mode": mode, "level": level, "target_rate": rate,
        "generators": [{"cpu": cpu, "rate": r} for cpu, r in plan],
        "offered_per_s": offered,
        "generated_records": sum(r.get("records", 0) for r in reports),
        "generator_failures": sum(r.get("failures", 0) for r in reports),
        "ingested": records, "ingested_per_s": records / span,
        "judged": sum(judged.values()), "judged_per_s": sum(judged.values()) / span,
        "by_kind_per_s": {EVENT_KINDS[RecordKind(k)]: n / span
                          for k, n in enumerate(consumer.kinds) if n},
        "judged_by_kind_per_s": {k: n / span for k, n in judged.items()},
        "findings": consumer.findings,
        # this process (the consumer) only: user + system CPU over the run
        "consumer_cpu": (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / span,
        "cpu_us_per_record": (cpu1.user + cpu1.system - cpu0.user - cpu0.system) * 1e6
        / max(records, 1),
        # records per poll() that returned any: ~ per wake-up of the consumer
        "records_per_poll": records / max(polls, 1),
        "lost": lost, "loss_rate": lost / (lost + records) if lost + records else 0.0,
        # loss told truthfully: what the generators made = what arrived + what the kernel
        # counted lost (other processes' records, a handful a second, count as arrived)
        "unaccounted": sum(r.get("records", 0) for r in reports) - records - lost,
        "steal_ms": {c: steal1[c] - steal0.get(c, 0.0) for c in steal1},
        "span_s": span, "drain_s": max(0.0, last - gen_t1),
        "timed_out": timed_out,
        # exec records: kernel timestamp -> the consumer's callback, in us
        "exec_lag_us": _lag_summary(consumer.lags),
    }


def _lag_summary(lags: list[int]) -> dict[str, float]:
    """p50, p99 and max of delivery lags in ns, as us ({} without any)."""
    if not lags:
        return {}
    s = sorted(lags)
    return {"p50": s[len(s) // 2] / 1e3, "p99": s[min(len(s) - 1, len(s) * 99 // 100)] / 1e3,
            "max": s[-1] / 1e3}


def kept_up(r: dict[str, Any]) -> bool:
    """Zero loss, and no more than KEEPUP_DRAIN seconds of backlog when the generator
    stopped (a consumer falling behind can hide in the ring buffer for a few seconds)."""
    return r["lost"] == 0 and r["drain_s"] <= KEEPUP_DRAIN and not r["timed_out"]


RUN_ARGS: argparse.Namespace


def measure_mode(consumer: Consumer, loadgen: str, mode: str, args: argparse.Namespace,
                 log: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {"mode": mode}
    bare = run(consumer, loadgen, mode, 0, args.duration, level="bare")
    log(f"{mode} bare max: offered {bare['offered_per_s']:,.0f}/s, ingested "
        f"{bare['ingested_per_s']:,.0f}/s, lost {bare['lost']}")
    out["bare"] = bare
    if mode in args.curve_modes:
        out["curve"] = []
        for rate in args.curve:
            for level in ("bare", "full"):
                c = run(consumer, loadgen, mode, rate, args.step_duration, level=level)
                out["curve"].append(c)
                log(f"{mode} {level} paced {rate:,.0f}/s: ingested {c['ingested_per_s']:,.0f}/s, "
                    f"CPU {c['consumer_cpu']:.0%}, {c['cpu_us_per_record']:.1f} us/record, "
                    f"{c['records_per_poll']:.1f} records/poll, lost {c['lost']}")
    top = run(consumer, loadgen, mode, 0, args.duration)
    log(f"{mode} max: offered {top['offered_per_s']:,.0f}/s, "
        f"ingested {top['ingested_per_s']:,.0f}/s, "
        f"judged {top['judged_per_s']:,.0f}/s, lost {top['lost']}, drain {top['drain_s']:.2f} s")
    out["max"] = top
    steps: list[dict[str, Any]] = []
    if kept_up(top):
        best = top
        out["consumer_kept_up"] = True
    else:
        out["consumer_kept_up"] = False
        lo, hi = 0.5 * top["ingested_per_s"], top["offered_per_s"]
        best = None
        for _ in range(args.steps):
            mid = (lo + hi) / 2
            r = run(consumer, loadgen, mode, mid, args.step_duration)
            steps.append(r)
            log(f"{mode} paced {mid:,.0f}/s: offered {r['offered_per_s']:,.0f}/s, ingested "
                f"{r['ingested_per_s']:,.0f}/s, lost {r['lost']}, drain {r['drain_s']:.2f} s")
            if kept_up(r):
                lo = mid
                if best is None or r["ingested_per_s"] > best["ingested_per_s"]:
                    best = r
            else:
                hi = mid
        if best is None:
            # not even the bottom of the range: try it, so the report says what happened there
            r = run(consumer, loadgen, mode, lo, args.step_duration)
            steps.append(r)
            log(f"{mode} paced {lo:,.0f}/s: ingested {r['ingested_per_s']:,.0f}/s, "
                f"lost {r['lost']}")
            best = r if kept_up(r) else None
    out["steps"] = steps
    out["zero_loss"] = best
    if best is None:
        return out
    zero = best["ingested_per_s"]
    double = 2 * zero
    if double <= top["offered_per_s"] * 0.95:
        plan = [(args.gen_cpu, double)]
        how = f"one generator on CPU {args.gen_cpu}, paced"
    else:
        # one generator tops out below double: it runs unpaced on its CPU, and a second one,
        # on the consumer's CPU (the only other), makes up the rest and competes with it
        rest = double - top["offered_per_s"]
        plan = [(args.gen_cpu, 0.0), (args.cpu, rest)]
        how = (f"one generator has a maximum of {top['offered_per_s']:,.0f}/s: one unpaced on "
               f"CPU {args.gen_cpu} plus one paced at {rest:,.0f}/s on the consumer's CPU "
               f"{args.cpu}, which it then shares")
    d = run(consumer, loadgen, mode, double, args.duration, gens=plan)
    d["how"] = how
    log(f"{mode} double ({double:,.0f}/s, {how}): offered {d['offered_per_s']:,.0f}/s, ingested "
        f"{d['ingested_per_s']:,.0f}/s, lost {d['lost']} ({d['loss_rate']:.1%})")
    out["double"] = d
    return out


def profile_consumer(consumer: Consumer, loadgen: str, mode: str, secs: float,
                     top: int = 16) -> dict[str, Any]:
    """cProfile of the full consumer while the generator runs at full speed: the share of
    time by category (see _CATEGORIES) and the costliest functions."""
    prof = cProfile.Profile()
    consumer.reset("bare")
    consumer.drain()
    consumer.reset("full")
    fn = consumer._fn

    def profiled(raw: RawEvent) -> None:
        prof.runcall(fn, raw)

    consumer._fn = profiled
    g = Generators()
    try:
        g.start([loadgen, mode, "0", f"{secs}"], RUN_ARGS.gen_cpu)
        deadline = time.monotonic() + secs + GEN_GRACE
        while g.running() and time.monotonic() < deadline:
            poll(consumer.sensor, 50)
        consumer.drain(limit=DRAIN_LIMIT)
    finally:
        g.stop()
    stats = pstats.Stats(prof)
    shares: dict[str, float] = {}
    for (path, _line, func), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        cat = _category(path, func)
        shares[cat] = shares.get(cat, 0.0) + tt
    total = sum(shares.values()) or 1.0
    cats = sorted(shares.items(), key=lambda kv: -kv[1])
    return {"shares": {k: v / total for k, v in cats}, "top": common.pstats_top(stats, top)}


_CATEGORIES = (
    # (substring of the file path, function name or "" for any, category)
    ("ipaddress.py", "", "IP text -> int (Connection.__post_init__ -> ipaddress)"),
    ("agent/model.py", "_ip_int", "IP text -> int (Connection.__post_init__ -> ipaddress)"),
    ("agent/sources/proctree.py", "ancestors", "ProcessTree.ancestors (per event)"),
    ("agent/sources/procfs.py", "", "procfs reads (ProcFS.read, environ)"),
    ("agent/enrich/workspace.py", "", "procfs reads (ProcFS.read, environ)"),
    ("~", "<built-in method posix.", "procfs reads (ProcFS.read, environ)"),
    ("agent/engine/", "", "rules (RuleSet.evaluate)"),
    ("agent/pipeline.py", "", "Judge.judge, Agent.handle, decide"),
    ("agent/decide.py", "", "Judge.judge, Agent.handle, decide"),
    ("prometheus_client", "", "Prometheus counters"),
    ("agent/metrics.py", "", "Prometheus counters"),
    ("agent/observer.py", "", "Observer (own code), Event/Process/Connection objects"),
    ("agent/model.py", "", "Observer (own code), Event/Process/Connection objects"),
    ("agent/sources/proctree.py", "", "Observer (own code), Event/Process/Connection objects"),
    ("cachetools", "", "Observer (own code), Event/Process/Connection objects"),
)


def _category(path: str, func: str) -> str:
    for sub, fn, cat in _CATEGORIES:
        if sub in path and (not fn or func.startswith(fn)):
            return cat
    return "other (dict/len/builtins, bench callback)"


def steal_ms() -> dict[int, float]:
    """Per CPU, the time the hypervisor ran something else while this vCPU wanted to run
    (the `steal` column of /proc/stat), in ms: a VM's scheduling noise, made visible."""
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    out = {}
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            name, *vals = line.split()
            if name.startswith("cpu") and name != "cpu" and len(vals) >= 8:
                out[int(name[3:])] = int(vals[7]) * tick_ms
    return out


# -- report ---------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    try:
        import bcc
        bcc_version = getattr(bcc, "__version__", "?")
    except ImportError:
        bcc_version = "missing"
    return common.machine(bcc=bcc_version)


def _kinds(d: dict[str, float]) -> str:
    """Rates by kind; kinds under 1% of the total (other processes' records) left out."""
    total = sum(d.values()) or 1.0
    return ", ".join(f"{k} {v:,.0f}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])
                     if v >= 0.01 * total)


def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    m = result["machine"]
    print(f"## eBPF events benchmark ({m['date']})\n")
    print(f"nproc {m['nproc']}, kernel {m['kernel']}, Python {m['python']}, bcc {m['bcc']}; "
          f"consumer pinned to CPU {args.cpu}, generator to CPU {args.gen_cpu}; ring buffer "
          f"{args.ring_pages} pages; shipped rules: {result['rules']} rules; runs of "
          f"{args.duration} s (bisection steps {args.step_duration} s).\n")
    print("| mode | run | offered (rec/s) | ingested (rec/s) | judged (ev/s) | lost | loss rate | "
          "drain (s) | consumer CPU | CPU us/record | records/poll | steal CPU 0/1 (ms) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, r in result["modes"].items():
        rows = [("bare (decode only), max", r["bare"]), ("full, max", r["max"])]
        rows += [(f"full, paced {s['target_rate']:,.0f}", s) for s in r["steps"]]
        if "double" in r:
            rows.append((f"full, double {r['double']['target_rate']:,.0f}", r["double"]))
        for label, x in rows:
            judged = f"{x['judged_per_s']:,.0f}" if x["level"] == "full" else ""
            print(f"| {mode} | {label} | {x['offered_per_s']:,.0f} | {x['ingested_per_s']:,.0f} | "
                  f"{judged} | {x['lost']:,} | {x['loss_rate']:.2%} | {x['drain_s']:.2f} | "
                  f"{x['consumer_cpu']:.0%} | {x['cpu_us_per_record']:.1f} | "
                  f"{x['records_per_poll']:.1f} | {x['steal_ms'].get(args.cpu, 0):.0f} / "
                  f"{x['steal_ms'].get(args.gen_cpu, 0):.0f} |")
    curves = {mode: r["curve"] for mode, r in result["modes"].items() if r.get("curve")}
    if curves:
        print("\n### the consumer's CPU per record against the rate (paced, no loss expected)\n")
        print("| mode | consumer | paced (rec/s) | ingested (rec/s) | consumer CPU "
              "| CPU us/record | records per poll | lost |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for mode, rows in curves.items():
            for x in rows:
                print(f"| {mode} | {x['level']} | {x['target_rate']:,.0f} "
                      f"| {x['ingested_per_s']:,.0f} | "
                      f"{x['consumer_cpu']:.0%} | {x['cpu_us_per_record']:.1f} | "
                      f"{x['records_per_poll']:.1f} | {x['lost']:,} |")
    print("\n### zero-loss rate and loss at double\n")
    print("| mode | zero-loss ingested (rec/s) | judged (ev/s) | by kind (rec/s) "
          "| at double: offered | ingested | loss rate | how |")
    print("|---|---:|---:|---|---:|---:|---:|---|")
    for mode, r in result["modes"].items():
        z = r["zero_loss"]
        if z is None:
            print(f"| {mode} | none found | | | | | | |")
            continue
        d = r.get("double", {})
        paced = "" if r["consumer_kept_up"] else " (paced)"
        print(f"| {mode} | {z['ingested_per_s']:,.0f}{paced} | "
              f"{z['judged_per_s']:,.0f} | {_kinds(z['by_kind_per_s'])} | "
              f"{d.get('offered_per_s', 0):,.0f} | {d.get('ingested_per_s', 0):,.0f} | "
              f"{d.get('loss_rate', 0):.2%} | {d.get('how', '')} |")
    print("\n### target (>= 50,000 events/s ingested with zero loss)\n")
    for mode, v in result["targets"].items():
        print(f"- {mode}: {v}")
    profiles = result.get("profiles", {})
    if profiles:
        print("\n### where the consumer's time goes (cProfile of the callback, share of tottime)\n")
        cats: list[str] = []
        for p in profiles.values():
            cats += [c for c in p["shares"] if c not in cats]
        print("| | " + " | ".join(profiles) + " |")
        print("|---|" + "---:|" * len(profiles))
        for c in cats:
            shares = " | ".join(f"{p['shares'].get(c, 0):.0%}" for p in profiles.values())
            print(f"| {c} | {shares} |")
    for key, p in profiles.items():
        print(f"\n### cProfile of the consumer, {key} at full speed (by tottime)\n")
        print("```\n" + p["top"] + "\n```")


def main(argv: list[str] | None = None) -> int:
    global RUN_ARGS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                    help="default: all")
    ap.add_argument("--duration", type=float, default=4.0,
                    help="seconds per max and double run (default 4)")
    ap.add_argument("--step-duration", type=float, default=3.0,
                    help="seconds per bisection step (default 3)")
    ap.add_argument("--steps", type=int, default=4, help="bisection steps (default 4)")
    ap.add_argument("--curve", type=float, nargs="*", default=[10000, 20000, 40000],
                    help="paced rates at which to measure the consumer's CPU per record, bare "
                         "and full (default 10000 20000 40000; none to skip)")
    ap.add_argument("--curve-modes", nargs="*", default=["connect-rst"], choices=MODES,
                    help="modes measured at the --curve rates (default connect-rst)")
    ap.add_argument("--ring-pages", type=int, default=bpf.DEFAULT_RING_PAGES,
                    help=f"ring buffer pages (default {bpf.DEFAULT_RING_PAGES}, the agent's)")
    ap.add_argument("--cpu", type=int, default=0, help="the consumer's CPU (default 0)")
    ap.add_argument("--gen-cpu", type=int, default=1, help="the generator's CPU (default 1)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    ap.add_argument("--profile", action="store_true",
                    help="always print cProfile excerpts (printed anyway when a target is missed)")
    args = ap.parse_args(argv)
    RUN_ARGS = args
    if not (0 < args.duration <= 30 and 0 < args.step_duration <= 30 and 0 <= args.steps <= 8):
        ap.error("durations must be in (0, 30] s and --steps in [0, 8]")
    try:
        bpf.check()
    except bpf.BpfUnavailable as e:
        print(f"events.py: eBPF unavailable: {e}", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {args.cpu})

    install_signal_handlers()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {msg}", file=sys.stderr, flush=True)

    started = time.monotonic()
    result: dict[str, Any] = {"machine": machine(), "modes": {}, "targets": {}}
    with tempfile.TemporaryDirectory(prefix="nw-events-") as tmp:
        loadgen = build_loadgen(tmp)
        consumer = Consumer(args.ring_pages)
        result["rules"] = len(consumer.ruleset)
        try:
            for mode in args.modes:
                result["modes"][mode] = measure_mode(consumer, loadgen, mode, args, log)
            missed = False
            for mode, r in result["modes"].items():
                z = r["zero_loss"]
                rate = z["ingested_per_s"] if z else 0.0
                gen_max = r["max"]["offered_per_s"]
                if rate >= TARGET:
                    v = f"MET ({rate:,.0f}/s)"
                elif r["consumer_kept_up"] and gen_max < TARGET:
                    v = (f"not reachable by this generator: it tops at {gen_max:,.0f}/s and the "
                         f"consumer kept up with zero loss")
                else:
                    v = f"MISSED ({rate:,.0f}/s)"
                    missed = True
                result["targets"][mode] = v
            if missed or args.profile:
                result["profiles"] = {}
                for mode in args.modes:
                    result["profiles"][mode] = profile_consumer(consumer, loadgen, mode,
                                                                min(args.duration, 3.0))
        finally:
            consumer.sensor.close()
    result["wall_s"] = round(time.monotonic() - started, 1)
    log("done")
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        report(result, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
