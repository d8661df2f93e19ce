#!/usr/bin/env python3
"""Benchmark: nanoseconds each BPF program of the file and udp sensors spends per call in
the kernel, with the shipped rules loaded, over an open loop, `find | xargs cat` and UDP
floods; for each checkout given, side by side in one run.

Run times come from `kernel.bpf_stats_enabled` (each program's run_time_ns / run_cnt in its
fdinfo): they count the program only, not the tracepoint's dispatch before it (see
bench/file_cost.py's `floor` for that), and include the two clock reads the statistics
add (~30 ns here: an empty program reads ~35 ns). They hardly depend on what else runs on
the machine, unlike wall time. Each tree's sensors are loaded from that tree's `bpf/` and
`agent/` (in a child Python), so the figures compare the kernel filters themselves.

    sudo .venv/bin/python bench/bpf_cost.py --tree before=/path/to/old/checkout --tree new=.

Needs root, eBPF (bcc) and gcc.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common  # bench/common.py

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, subprocess, sys
from pathlib import Path
tree, work, rounds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
sys.path.insert(0, tree)
import agent.sources.bpf as B
B.source_dir = lambda: Path(tree) / "bpf"   # that tree's sources, not the installed ones
from agent.engine.loader import load
from agent.sources.file_sensor import FileSensor
from agent.sources.udp_sensor import UdpSensor
from agent.sources.sensorset import attachable
rules = load([f"{tree}/rules"]).rules
_, _, cflags = attachable([FileSensor, UdpSensor])
prog = B.BpfProgram(["file.bpf.c", "udp.bpf.c"], lambda r: None, cflags=cflags)
FileSensor(prog).use_rules(rules)
UdpSensor(prog).send_kinds({k for r in rules for k in r.kinds})
fds = {(n.decode() if isinstance(n, bytes) else n).split("__")[-1]: f.fd
       for n, f in prog.bpf.funcs.items()}
def info(fd):
    d = dict(l.split(":", 1) for l in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
             if ":" in l)
    return int(d.get("run_time_ns", 0)), int(d.get("run_cnt", 0))
loads = {
    "opens": [str(work / "openloop"), "300000", str(work / "files")],
    "find-cat": ["sh", "-c", "find /usr/share -type f -print0 | xargs -0 cat > /dev/null"],
    "udp-sendto": [str(work / "udpflood"), "sendto", "200000"],
    "udp-send": [str(work / "udpflood"), "send", "200000"],
}
stats = Path("/proc/sys/kernel/bpf_stats_enabled")
old = stats.read_text().strip()
out = {}
try:
    stats.write_text("1")
    for _ in range(rounds):
        for name, cmd in loads.items():
            before = {n: info(fd) for n, fd in fds.items()}
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            for n, fd in fds.items():
                t, c = info(fd)
                if c - before[n][1] >= 1000:
                    out.setdefault(name, {}).setdefault(n, []).append(
                        [(t - before[n][0]) / (c - before[n][1]), c - before[n][1]])
finally:
    stats.write_text(old)
print(json.dumps(out))
"""

OPENLOOP_C = common.OPENLOOP_C


def build(work: Path) -> None:
    """The open loop, its 100 files and the UDP flood, in work."""
    (work / "openloop.c").write_text(OPENLOOP_C)
    subprocess.run(["gcc", "-O2", "-o", str(work / "openloop"), str(work / "openloop.c")],
                   check=True)
    subprocess.run(["gcc", "-O2", "-o", str(work / "udpflood"), str(HERE / "udpflood.c")],
                   check=True)
    (work / "files").mkdir()
    for i in range(100):
        (work / "files" / f"file-{i}").write_text("x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                    help="a checkout to measure (default: this one as `new`)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    trees = [t.split("=", 1) for t in args.tree] or [["new", str(HERE.parent)]]
    results: dict[str, dict[str, dict[str, list[list[float]]]]] = {}
    with tempfile.TemporaryDirectory(prefix="nw-bpf-cost-") as tmp:
        work = Path(tmp)
        build(work)
        for name, tree in trees:
            got = subprocess.run([sys.executable, "-c", CHILD, str(Path(tree).resolve()),
                                  str(work), str(args.rounds)],
                                 capture_output=True, text=True)
            if got.returncode:
                raise SystemExit(f"{name}: {got.stderr[-3000:]}")
            results[name] = json.loads(got.stdout.strip().splitlines()[-1])
    print(f"ns per call in the kernel (median of {args.rounds} rounds; calls per round)")
    print("| workload | program | " + " | ".join(n for n, _ in trees) + " |")
    print("|---|---|" + "---:|" * len(trees))
    rows = sorted({(w, p) for r in results.values() for w, ps in r.items() for p in ps})
    for w, p in rows:
        cells = []
        for n, _ in trees:
            xs = results[n].get(w, {}).get(p)
            cells.append(f"{statistics.median(x[0] for x in xs):.0f} ({int(xs[0][1])})"
                         if xs else "-")
        print(f"| {w} | {p} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
