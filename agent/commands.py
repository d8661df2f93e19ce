"""What each `nodewarden` command does, given its parsed arguments (agent/cli.py parses).

Findings go to `out`, problems to `err`. Exit codes follow DESIGN.md: scan and replay exit 1
when they found something, every command exits 2 on bad input, never with a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

# Each command imports what it uses when it runs: `scan` on an empty procfs starts in a
# fraction of the time the agent's whole import graph (BPF, HTTP, Kubernetes) takes.
if TYPE_CHECKING:
    from agent.app import Overrides
    from agent.config import Config
    from agent.decide import Decision
    from agent.engine.ruleset import RuleSet
    from agent.errors import RuleError
    from agent.pipeline import Judge
    from agent.sinks.findings import FindingWriter

log = logging.getLogger("nodewarden")


def load_rules(paths: Sequence[str], err: TextIO, examples: bool = False,
               lazy: bool = False) -> RuleSet | None:
    """The rule set of `paths` (with the rules' examples if asked; `lazy`: see
    loader.load), or None after printing every problem to `err`."""
    from agent.engine import loader
    from agent.errors import RuleError

    try:
        return loader.load(list(paths), examples, lazy)
    except RuleError as e:
        _tell(e, err)
        return None


def _tell(e: RuleError, err: TextIO) -> None:
    for problem in e.problems:
        print(problem, file=err)
    print(f"nodewarden: {len(e.problems)} problem(s) in the rules; nothing was loaded",
          file=err)


def _paths(paths: Sequence[str] | None) -> list[str]:
    from agent.engine.files import bundled_rules_dir

    return list(paths) if paths else [bundled_rules_dir()]


def _emit(decisions: Sequence[Decision], writer: FindingWriter, host: str) -> None:
    from agent.sinks.findings import Finding

    writer.write([Finding.of(d, host) for d in decisions])


def rules_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """`rules check`: every problem of the rule files, exit 2 when there is one."""
    from agent.engine import loader

    ruleset, problems = loader.check(_paths(args.paths), examples=True)
    for p in problems:
        print(p, file=out)
    if ruleset is None:
        print(f"{len(problems)} problem(s)", file=err)
        return 2
    print(f"ok: {len(ruleset.all_rules)} rules ({len(ruleset.rules)} enabled) in "
          f"{len(ruleset.sources)} file(s), hash {ruleset.digest}", file=out)
    return 0


def rules_test(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """`rules test`: run each rule's match/no_match examples, exit 1 when one fails."""
    from agent.engine import ruletest

    ruleset = load_rules(_paths(args.paths), err, examples=True)
    if ruleset is None:
        return 2
    results = ruletest.run_examples(ruleset.all_rules)
    failed = [r for r in results if not r.ok]
    for r in results:
        if not r.ok:
            print(f"FAIL {r}", file=out)
        elif args.verbose:
            kind = "match" if r.should_match else "no_match"
            print(f"ok   {r.file}:{r.line}: {r.rule} ({kind})", file=out)
    untested = [r.id for r in ruleset.all_rules if not r.examples]
    if untested:
        print(f"note: rules without examples: {', '.join(untested)}", file=err)
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed", file=out)
    return 1 if failed else 0


def _warn_if_unprivileged() -> None:
    if os.geteuid() != 0:
        log.warning("not running as root: other users' processes show no executable path and "
                    "no workspace (their /proc/PID/exe and environ are unreadable); run as root "
                    "for a complete view")


def _offline_judge(cfg: Config, ruleset: RuleSet) -> Judge:
    """A judge that reports and never acts (scan, replay)."""
    from agent.decide import Protection
    from agent.pipeline import Judge
    from agent.sources.proctree import own_processes

    protection = Protection.of(own_processes(cfg.proc_root), cfg.protected)
    return Judge(ruleset, "audit", protection, can_act=False)


def scan(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """`scan`: one procfs pass, judged and reported; exit 1 when something was found."""
    from agent.config import load_config
    from agent.errors import RuleError
    from agent.pipeline import scan_once
    from agent.sinks.findings import FindingWriter
    from agent.sources.procfs import ProcFS
    from agent.sources.proctree import ProcessTree

    cfg = load_config(args.config)
    _warn_if_unprivileged()
    # checked now; on a set checked before (setcache.py) compiled on the first process
    ruleset = load_rules(_paths(args.rules or cfg.rules), err, lazy=True)
    if ruleset is None:
        return 2
    if not os.path.isdir(args.proc_root):
        print(f"nodewarden: procfs root {args.proc_root} is not a directory", file=err)
        return 2
    tree = ProcessTree(ProcFS(args.proc_root), cfg.workspace_markers)
    try:
        decisions = scan_once(tree, _offline_judge(cfg, ruleset))
    except RuleError as e:  # a recalled set whose bytes no longer compile (setcache.py)
        _tell(e, err)
        return 2
    _emit(decisions, FindingWriter(out, args.format), cfg.host)
    if args.format == "table":
        print(f"{len(tree.procs)} processes scanned, {len(decisions)} finding(s)", file=err)
    return 1 if decisions else 0


def replay(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """`replay`: judge recorded events; exit 1 when something was found."""
    from agent.codec import EventFormatError, read_events
    from agent.config import load_config
    from agent.sinks.findings import FindingWriter

    cfg = load_config(args.config)
    ruleset = load_rules(_paths(args.rules or cfg.rules), err)
    if ruleset is None:
        return 2
    judge = _offline_judge(cfg, ruleset)
    writer = FindingWriter(out, args.format)
    found = 0
    try:
        for ev in read_events(args.file):
            decisions = judge.judge(ev)
            if decisions:  # most events find nothing: no findings list, no writer call
                found += len(decisions)
                _emit(decisions, writer, cfg.host)
    except OSError as e:
        print(f"nodewarden: cannot read {args.file}: {e.strerror}", file=err)
        return 2
    except EventFormatError as e:
        print(f"nodewarden: {e}", file=err)
        return 2
    return 1 if found else 0


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """`run`: the agent, until SIGTERM/SIGINT (or one scan with --once)."""
    from agent.app import Overrides
    from agent.config import load_config
    from agent.fdlimit import raise_nofile_limit
    from agent.nodelock import NodeLock

    overrides = Overrides.from_args(args)
    cfg = overrides.apply(load_config(args.config))
    if args.print_bpf:
        from agent.sources.sensorset import print_bpf

        out.write(print_bpf(cfg))  # the program of the sensors this config enables
        return 0
    raise_nofile_limit()
    # one agent per node; taken before the agent touches anything the other one owns
    lock = NodeLock.take(cfg.lock_file)
    try:
        return _run(args, overrides, cfg, out, err)
    finally:
        lock.release()


def _run(args: argparse.Namespace, overrides: Overrides, cfg: Config, out: TextIO,
         err: TextIO) -> int:
    from agent.app import Runtime, rule_paths
    from agent.sinks.outfile import open_output

    if not os.path.isdir(cfg.proc_root):
        print(f"nodewarden: procfs root {cfg.proc_root} is not a directory", file=err)
        return 2
    ruleset = load_rules(rule_paths(cfg), err)
    if ruleset is None:
        return 2
    # refused (exit 2) before anything starts: a symlink, FIFO or someone else's file
    record = open_output(args.record, "--record") if args.record else None
    findings = open_output(cfg.findings_file, "findings_file") if cfg.findings_file else None
    try:
        _warn_if_unprivileged()
        fmt = args.format or ("table" if out.isatty() else "json")
        runtime = Runtime(cfg, ruleset, overrides, args.config, out, fmt, record, findings)
        return runtime.run(once=args.once)
    finally:
        for f in (record, findings):
            if f is not None:
                f.close()
