#!/usr/bin/env python3
"""Benchmark: what the file sensor costs an open-heavy workload, and that unwatched opens
never reach userspace.

Each round runs, in turn, with no agent, with the agent without the file sensor (every
other sensor: they attach syscall tracepoints too), the same plus an empty program on
`sys_enter_openat` (`floor`: what any file sensor on that tracepoint costs before it does
anything) and with the whole agent (every sensor), the agent
loading the shipped rules (or the `--rules` given: with the file rule packs) and a representative
watch list of its own (WATCH_RULES: 52 paths, prefixes and names, reads and writes):

  - `opens`: a C loop of `--opens` open(O_RDONLY)+close of 100 unwatched files;
  - `find-cat`: `find /usr -type f -print0 | xargs -0 cat > /dev/null` (page cache warm).

Both pinned to CPU 1, the agent to CPU 0; wall time per workload, conditions alternating,
medians over `--rounds`. The file records the agent received during the workloads: its
nodewarden_events_total{source="file"} before and after (the whole machine's: other
processes read watched files meanwhile), and those of the workloads' own processes (from
its --record): 0 when the kernel filtered everything they did.

    sudo .venv/bin/python bench/file_cost.py --rounds 5 [--rules DIR_WITH_FILE_PACKS]

Needs root, eBPF and gcc.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import common  # bench/common.py

ROOT = Path(__file__).resolve().parents[1]

OPENLOOP_C = common.OPENLOOP_C

# read watches on credentials; write watches on configuration every process reads (a read
# watch on /etc/passwd or /etc/hosts would count the whole machine's lookups)
_SECRETS = ["/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/ld.so.preload",
            "/root/.kube/config", "/root/.aws/credentials", "/root/.docker/config.json",
            "/root/.git-credentials", "/root/.netrc", "/etc/kubernetes/admin.conf",
            "/etc/kubernetes/kubelet.conf", "/var/lib/kubelet/kubeconfig",
            "/etc/ssh/ssh_host_rsa_key", "/etc/ssh/ssh_host_ed25519_key"]
_CONFIG = ["/etc/passwd", "/etc/group", "/etc/hosts", "/etc/resolv.conf", "/etc/crontab",
           "/etc/pam.conf", "/etc/ssh/sshd_config", "/root/.bashrc", "/root/.profile",
           "/proc/sys/kernel/core_pattern", "/etc/environment", "/etc/bash.bashrc",
           "/etc/profile"]
_PREFIXES = ["/etc/cron.d/", "/etc/cron.hourly/", "/etc/cron.daily/", "/var/spool/cron/",
             "/etc/systemd/system/", "/lib/systemd/system/", "/etc/sudoers.d/",
             "/etc/profile.d/", "/root/.ssh/", "/etc/init.d/", "/etc/rc.local",
             "/var/run/secrets/kubernetes.io/", "/etc/pam.d/", "/var/log/auth",
             "/etc/update-motd.d/"]
_NAMES = ["authorized_keys", "authorized_keys2", ".bash_history", ".zsh_history",
          "id_rsa", "id_ed25519", "credentials", ".bashrc", ".zshrc", ".profile"]
_WRITES = "[write, create, truncate, rename, unlink, chmod]"

WATCH_RULES = f"""rules:
  - id: bench-secrets-read
    match:
      file.path: {{in: {json.dumps(_SECRETS)}}}
      file.op: {{in: [read, write]}}
  - id: bench-config-written
    match:
      file.path: {{in: {json.dumps(_CONFIG)}}}
      file.op: {{in: {_WRITES}}}
  - id: bench-persistence
    match:
      file.path: {{prefix: {json.dumps(_PREFIXES)}}}
      file.op: {{in: {_WRITES}}}
  - id: bench-names
    match:
      file.name: {{in: {json.dumps(_NAMES)}}}
      file.op: {{in: {_WRITES}}}
"""

FILE_EVENTS = 'nodewarden_events_total{source="file"}'
WORKLOAD_COMMS = {"openloop", "find", "xargs", "cat", "sh", "taskset"}
CONDITIONS = ("none", "agent-nofile", "floor", "agent")
# every sensor but `file`
NOFILE = ["exec", "tcp", "connect_guard", "proc_connector", "privilege", "kernel", "udp"]
EMPTY_OPENAT = ("from bcc import BPF; import sys, time; "
                "b = BPF(text='TRACEPOINT_PROBE(syscalls, sys_enter_openat) { return 0; }'); "
                "print('attached', flush=True); sys.stdin.read()")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Agent:
    """`nodewarden run` of this checkout pinned to CPU 0, findings to /dev/null."""

    def __init__(self, work: Path, sensors: list[str] | None, rules: list[str]) -> None:
        self.port = _port()
        cfg = work / "config.yaml"
        cfg.write_text(f"sensors: {json.dumps(sensors)}\n" if sensors else "")
        self.log = open(work / "agent.log", "w")  # noqa: SIM115 - closed in stop()
        self.record = work / "events.jsonl"
        self.record.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            ["taskset", "-c", "0", sys.executable, "-m", "agent", "run", "--config", str(cfg),
             "--format", "json", "--interval", "3600", "--listen", f"127.0.0.1:{self.port}",
             "--record", str(self.record), "--rules", *rules], cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 120
        while "ready:" not in (work / "agent.log").read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("agent did not start:\n" + (work / "agent.log").read_text())
            time.sleep(0.2)
        self.settled()

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def settled(self, quiet: float = 1.0) -> float:
        """The file events counter once it stopped moving for `quiet` seconds."""
        value, since = self.metric(FILE_EVENTS), time.monotonic()
        while time.monotonic() - since < quiet:
            time.sleep(0.1)
            now = self.metric(FILE_EVENTS)
            if now != value:
                value, since = now, time.monotonic()
        return value

    def workload_records(self) -> list[str]:
        """The paths of the file events the workloads' own processes made (recorded)."""
        out = []
        for line in self.record.read_text().splitlines():
            ev = json.loads(line)
            if ev.get("kind") == "file" and ev["process"].get("comm") in WORKLOAD_COMMS:
                out.append(ev["file"]["path"])
        return out

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def _timed(cmd: list[str] | str, shell: bool = False) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, shell=shell, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def workloads(work: Path, opens: int) -> dict[str, float]:
    """Wall seconds of each workload, pinned to CPU 1."""
    return {
        "opens": _timed(["taskset", "-c", "1", str(work / "openloop"), str(opens),
                         str(work / "files")]),
        "find-cat": _timed("taskset -c 1 sh -c 'find /usr -type f -print0 | "
                           "xargs -0 cat > /dev/null'", shell=True),
    }


def one(cond: str, work: Path, opens: int, rules: list[str]) -> dict[str, Any]:
    """One condition's run: workload times, and the file records the agent received."""
    if cond == "none":
        return {"times": workloads(work, opens), "file_records": None, "workload_paths": []}
    agent = Agent(work, None if cond == "agent" else NOFILE, rules)
    empty = None
    try:
        if cond == "floor":
            # /usr/bin/python3: the system interpreter has bcc
            empty = subprocess.Popen(["taskset", "-c", "0", "/usr/bin/python3", "-c",
                                      EMPTY_OPENAT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
            assert empty.stdout is not None and empty.stdout.readline().strip() == "attached"
        before = agent.settled()
        times = workloads(work, opens)
        after = agent.settled()
        paths = agent.workload_records()
    finally:
        if empty is not None:
            empty.communicate(timeout=30)
        agent.stop()
    return {"times": times, "file_records": after - before, "workload_paths": paths}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--opens", type=int, default=1_000_000)
    ap.add_argument("--rules", nargs="*", default=[str(ROOT / "rules")],
                    help="rule files or directories (default: the shipped rules); the "
                         "representative watch list is always added")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nw-file-cost-") as tmp:
        work = Path(tmp)
        (work / "openloop.c").write_text(OPENLOOP_C)
        subprocess.run(["gcc", "-O2", "-o", str(work / "openloop"), str(work / "openloop.c")],
                       check=True)
        (work / "files").mkdir()
        for i in range(100):
            (work / "files" / f"file-{i}").write_text("x")
        (work / "watch.yaml").write_text(WATCH_RULES)
        rules = [*map(os.path.abspath, args.rules), str(work / "watch.yaml")]
        workloads(work, args.opens // 10)   # the page cache warm for every condition
        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CONDITIONS}
        for r in range(args.rounds):
            order = CONDITIONS if r % 2 == 0 else tuple(reversed(CONDITIONS))
            for cond in order:
                runs[cond].append(one(cond, work, args.opens, rules))
                print(f"round {r + 1} {cond}: {runs[cond][-1]}", file=sys.stderr)
    report = summary(runs)
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


_COUNTS = ("file_records", "workload_records", "workload_paths")


def summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians and spreads by condition and workload, ratios to no agent, records seen."""
    out: dict[str, Any] = {}
    for cond, rs in runs.items():
        out[cond] = {}
        for w in rs[0]["times"]:
            xs = [r["times"][w] for r in rs]
            out[cond][w] = {"median_s": statistics.median(xs), "min_s": min(xs),
                            "max_s": max(xs)}
        recs = [r["file_records"] for r in rs if r["file_records"] is not None]
        out[cond]["file_records"] = sum(recs) if recs else None
        out[cond]["workload_records"] = sum(len(r["workload_paths"]) for r in rs)
        out[cond]["workload_paths"] = sorted({p for r in rs for p in r["workload_paths"]})
    for cond in CONDITIONS[1:]:
        for w in out["none"]:
            if w not in _COUNTS:
                out[cond][w]["vs_none"] = out[cond][w]["median_s"] / out["none"][w]["median_s"]
    for w in out["none"]:
        if w not in _COUNTS:
            for cond in ("floor", "agent"):
                out[cond][w]["vs_agent_nofile"] = (out[cond][w]["median_s"]
                                                   / out["agent-nofile"][w]["median_s"])
    return out


def table(report: dict[str, Any]) -> str:
    """The report as a text table."""
    lines = [f"{'condition':14} {'workload':9} {'median s':>9} {'min':>7} {'max':>7} "
             f"{'vs none':>8} {'vs no-file':>10} {'file records':>12} {'of workload':>11}"]
    for cond, per in report.items():
        for w, v in per.items():
            if w in _COUNTS:
                continue
            vs = f"{v['vs_none']:.3f}" if "vs_none" in v else "-"
            vf = f"{v['vs_agent_nofile']:.3f}" if "vs_agent_nofile" in v else "-"
            rec = per["file_records"]
            mine = "-" if rec is None else str(per["workload_records"])
            lines.append(f"{cond:14} {w:9} {v['median_s']:9.3f} {v['min_s']:7.3f} "
                         f"{v['max_s']:7.3f} {vs:>8} {vf:>10} "
                         f"{'-' if rec is None else int(rec):>12} {mine:>11}")
    paths = report["agent"]["workload_paths"]
    lines.append(f"workload paths recorded: {', '.join(paths) or 'none'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
