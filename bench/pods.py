#!/usr/bin/env python3
"""Benchmark: what Kubernetes pod enrichment costs the agent.

1. Per event: `ProcessTree.event()` for processes in containers, with the pod lookup
   (`PodIndex.lookup` through `tree.pod_of`) against the same call without it (the
   reference), at 110 pods (the kubelet's default maximum per node) and 1,000 pods,
   3 containers each. Reported: us per event, and the ratio with/without.
2. Per pod update: the watch path end to end, through the real kubernetes client against
   the local API server of the tests (tests/integration/kube_apiserver.py): N MODIFIED
   events streamed and applied to the index, us per event; the reference is json.loads of
   the same watch lines, the least any client must do.

Medians over --repeat repetitions, methods interleaved in each repetition.

    .venv/bin/python bench/pods.py [--repeat 11] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

# E402: run as a script, these import only after the sys.path lines above (the repo root for
# `agent`, tests/integration for the fake API server)
from kube_apiserver import FakeApiServer, pod  # noqa: E402

from agent.enrich.pods import PodIndex  # noqa: E402
from agent.kubeapi import connect  # noqa: E402
from agent.model import Process  # noqa: E402
from agent.sources.kubepods import PodWatcher  # noqa: E402
from agent.sources.procfs import ProcFS  # noqa: E402
from agent.sources.proctree import ProcessTree  # noqa: E402


def _cid(i: int, j: int) -> str:
    return f"{i:032x}{j:032x}"


def _pods(n: int) -> list[dict[str, Any]]:
    return [pod(f"ns-{i % 20}", f"pod-{i}", f"uid-{i}", "node-1", {"app": f"a{i}", "tier": "x"},
                tuple(_cid(i, j) for j in range(3))) for i in range(n)]


def bench_event(n_pods: int, repeat: int, events: int = 50_000) -> dict[str, float]:
    tree = ProcessTree(ProcFS(tempfile.mkdtemp()))
    idx = PodIndex()
    idx.replace(_pods(n_pods))
    procs = [Process(pid=1000 + k, ppid=1, starttime=k, comm="python3", exe="/usr/bin/python3",
                     container_id=_cid(k % n_pods, k % 3)) for k in range(events)]
    for p in procs:
        tree.procs[p.pid] = p
    with_, without, ratio = [], [], []
    for _ in range(repeat):
        tree.pod_of = None
        t0 = time.perf_counter()
        for p in procs:
            tree.event("exec", p, 0.0)
        a = (time.perf_counter() - t0) / events * 1e6
        tree.pod_of = idx.lookup
        t0 = time.perf_counter()
        for p in procs:
            ev = tree.event("exec", p, 0.0)
        b = (time.perf_counter() - t0) / events * 1e6
        assert ev.pod is not None
        without.append(a)
        with_.append(b)
        ratio.append(b / a)
    return {"pods": n_pods, "us_per_event_without": statistics.median(without),
            "us_per_event_with_pod": statistics.median(with_), "ratio": statistics.median(ratio),
            "added_us": statistics.median(b - a for a, b in zip(without, with_, strict=True))}


def bench_watch(repeat: int, updates: int = 2000) -> dict[str, float]:
    per_event, ref = [], []
    with FakeApiServer() as server:
        objs = _pods(110)
        for o in objs:
            server.put_pod(o)
        k = connect("auto", server.kubeconfig(Path(tempfile.mkdtemp()) / "kc"), "node-1", env={})
        assert k is not None
        for _ in range(repeat):
            idx = PodIndex()
            w = PodWatcher(k.api, "node-1", idx, watch_seconds=3600)
            w.list()
            server.held = True
            for u in range(updates):
                o = objs[u % len(objs)]
                o["metadata"]["labels"]["gen"] = str(u)
                server.put_pod(o)
            lines = [json.dumps({"type": kind, "object": obj}) for rv, kind, obj in server.history
                     if rv > int(w.resource_version)]
            t0 = time.perf_counter()
            for line in lines:
                json.loads(line)
            ref.append((time.perf_counter() - t0) / len(lines) * 1e6)
            last = str(server.rv)
            t = threading.Thread(target=w.watch)
            t0 = time.perf_counter()
            server.held = False
            t.start()
            while w.resource_version != last:
                time.sleep(0.001)
            per_event.append((time.perf_counter() - t0) / len(lines) * 1e6)
            server.end_watches()
            t.join()
    return {"updates": updates, "us_per_watch_event": statistics.median(per_event),
            "us_per_json_loads": statistics.median(ref),
            "ratio": statistics.median(a / b for a, b in zip(per_event, ref, strict=True))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--cpu", type=int, default=0, help="pin to this CPU (-1: do not pin)")
    args = ap.parse_args()
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    out = {"event": [bench_event(110, args.repeat), bench_event(1000, args.repeat)],
           "watch": bench_watch(max(3, args.repeat // 3))}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for r in out["event"]:
        print(f"event, {r['pods']:>5} pods: {r['us_per_event_without']:.2f} us without pod, "
              f"{r['us_per_event_with_pod']:.2f} us with "
              f"(+{r['added_us']:.2f} us, {r['ratio']:.2f}x)")
    w = out["watch"]
    print(f"watch: {w['us_per_watch_event']:.1f} us per applied watch event through the client; "
          f"json.loads alone {w['us_per_json_loads']:.1f} us ({w['ratio']:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
