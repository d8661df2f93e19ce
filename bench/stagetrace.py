#!/usr/bin/env python3
"""`nodewarden run` with a per-stage clock on each exec event (bench/run_latency.py --stages).

    cd TREE && python /path/to/bench/stagetrace.py OUT.json -- run --config ... --format json

Runs the agent of the tree in the current directory (as `python -m agent` would) with
wrappers around the methods an exec event goes through, on the event thread:

- `Observer.handle` (entry: the record reached Python; exit: the Event is built),
- `Judge.judge` (exit: the rules' decisions),
- `signal.pidfd_send_signal` (the kill),
- `Runtime._report` (entry / exit: the findings written),
- `Agent.handle` (exit: everything, the --record line included),

plus the record's kernel time (`RawEvent.ts_ns`, CLOCK_MONOTONIC), the thread's CPU time at
entry and exit, and every GC pass (gc.callbacks). Only exec events whose comm is in
NW_TRACE_COMMS (default `xmrig,nwvictim`: the bench's) are kept. At exit the samples go to
OUT.json (samples: dicts of monotonic ns; gc: (start, stop, generation)).

The names are those of main 5e950f6 on: both trees of a side-by-side run must have them.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

COMMS = frozenset(os.environ.get("NW_TRACE_COMMS", "xmrig,nwvictim").split(","))

# stage name -> (from, to) keys of a sample
STAGES = {
    "kernel->observer": ("k", "obs_in"),
    "observer": ("obs_in", "obs_out"),
    "rules": ("obs_out", "judged"),
    "kill": ("judged", "killed"),
    "output": ("report_in", "report_out"),
    "record->kill": ("obs_in", "killed"),
    "kernel->kill": ("k", "killed"),
    "kernel->finding": ("k", "report_out"),
    "handle wall": ("obs_in", "done"),
}


def install(out: str) -> None:  # pragma: no cover - runs inside the agent
    """Wrap the event path's methods; write the samples to `out` at exit."""
    from agent import app, observer, pipeline
    from agent.sources import sensorset

    samples: list[dict[str, Any]] = []
    gcs: list[tuple[int, int, int]] = []
    cur: dict[str, Any] = {}
    clock, cpu = time.monotonic_ns, time.thread_time_ns
    gc_start = [0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_start[0] = clock()
        else:
            gcs.append((gc_start[0], clock(), info.get("generation", -1)))

    gc.callbacks.append(on_gc)

    def wrap(cls: Any, name: str, before: Callable[..., None] | None,
             after: Callable[..., None] | None) -> None:
        inner = getattr(cls, name)

        def traced(*a: Any, **kw: Any) -> Any:
            if before is not None:
                before(*a)
            try:
                res = inner(*a, **kw)
            finally:
                if after is not None:
                    after(*a)
            return res

        setattr(cls, name, traced)

    def obs_in(_self: Any, raw: Any) -> None:
        cur.clear()
        cur.update(k=raw.ts_ns, obs_in=clock(), cpu_in=cpu())

    def obs_out(*_a: Any) -> None:
        cur["obs_out"] = clock()

    def judged(*_a: Any) -> None:
        cur.setdefault("judged", clock())

    def report_in(*_a: Any) -> None:
        cur.setdefault("report_in", clock())

    def report_out(*_a: Any) -> None:
        cur.setdefault("report_out", clock())

    def done(_self: Any, ev: Any) -> None:
        if "obs_in" in cur and ev.kind == "exec" and ev.process.comm in COMMS:
            cur.update(done=clock(), cpu_out=cpu(), pid=ev.process.pid)
            samples.append(dict(cur))
        elif "obs_in" in cur:
            others.append((cur["obs_in"], clock()))
        cur.clear()

    # what else the event thread did: other records, scan steps, ticks, polls (start, end)
    others: list[tuple[int, int]] = []
    busy: dict[str, list[tuple[int, int]]] = {"step": [], "tick": [], "poll": []}

    def timed(cls: Any, name: str, into: list[tuple[int, int]]) -> None:
        inner = getattr(cls, name)

        def traced(*a: Any, **kw: Any) -> Any:
            t0 = clock()
            try:
                return inner(*a, **kw)
            finally:
                into.append((t0, clock()))

        setattr(cls, name, traced)

    timed(pipeline.Agent, "_step", busy["step"])
    timed(pipeline.Agent, "_tick", busy["tick"])
    timed(sensorset.SensorSet, "poll", busy["poll"])

    wrap(observer.Observer, "handle", obs_in, obs_out)
    wrap(pipeline.Judge, "judge", None, judged)
    wrap(app.Runtime, "_report", report_in, report_out)
    wrap(pipeline.Agent, "handle", None, done)
    send = signal.pidfd_send_signal

    def traced_send(fd: int, sig: int, *a: Any) -> None:
        send(fd, sig, *a)
        if sig == signal.SIGKILL:
            cur.setdefault("killed", clock())

    signal.pidfd_send_signal = traced_send  # type: ignore[assignment]

    def write() -> None:
        with open(out, "w") as f:
            json.dump({"samples": samples, "gc": gcs, "others": others, **busy}, f)

    atexit.register(write)


def main() -> int:  # pragma: no cover - runs as the agent
    """stagetrace.py OUT -- AGENT ARGS: the agent of the current directory, traced."""
    out, rest = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
    sys.path.insert(0, os.getcwd())
    install(out)
    from agent.main import main as agent_main

    sys.argv = ["nodewarden", *rest]
    return agent_main()


if __name__ == "__main__":
    sys.exit(main())
