"""The `nodewarden` command line: run, scan, rules check|test, replay.

Findings go to stdout, logs to stderr. Exit codes follow DESIGN.md: scan and replay exit 1
when they found something, every command exits 2 on bad input, never with a traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TextIO

from agent import __version__, signals
from agent.actions.kill import Enforcer
from agent.config import Config, load_config, read_metrics_token
from agent.decide import Decision, Protection
from agent.engine import loader, ruletest
from agent.engine.ruleset import RuleSet
from agent.errors import ConfigError, NodewardenError, RuleError
from agent.fdlimit import raise_nofile_limit
from agent.httpserver import StatusServer
from agent.metrics import Metrics
from agent.model import Event
from agent.nodelock import NodeLock
from agent.pipeline import Agent, Judge, scan_once
from agent.reload import Reloader
from agent.sinks.findings import Finding, FindingWriter
from agent.sinks.outfile import open_output
from agent.sinks.registry import Sinks
from agent.sources.procfs import ProcFS
from agent.sources.proctree import ProcessTree
from agent.sources.recorded import EventFormatError, read_events
from agent.text import json_line

log = logging.getLogger("nodewarden")

# /healthz fails when the main loop has not turned for this long (it turns every 100 ms)
HEALTHY_WITHIN = 30.0


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (float() takes 'nan' and 'inf')."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nodewarden", description="Node runtime security agent: "
                                "judges processes and connections against YAML rules.")
    p.add_argument("--version", action="version", version=f"nodewarden {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def rules_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--rules", nargs="+", action="extend", metavar="PATH",
                        help="rule files or directories (default: the shipped rules)")

    run = sub.add_parser("run", help="the agent: watch this host and judge what happens")
    run.add_argument("--config", help="YAML config file")
    rules_opt(run)
    run.add_argument("--dry-run", action="store_true", help="audit mode: act on nothing")
    run.add_argument("--proc-root", help="procfs root (default /proc)")
    run.add_argument("--listen", help="metrics address HOST:PORT (default 127.0.0.1:9808); "
                                      "'off' disables")
    run.add_argument("--format", choices=("table", "json"),
                     help="findings format (default: table on a terminal, else json)")
    run.add_argument("--record", metavar="FILE", help="write every judged event as JSON lines")
    run.add_argument("--findings-file", metavar="FILE", help="also append findings as JSON lines")
    run.add_argument("--interval", type=_seconds, help="seconds between procfs scans")
    run.add_argument("--once", action="store_true", help="stop after the first scan")
    run.add_argument("--no-bpf", action="store_true", help="procfs scans only, no eBPF sensors")
    run.add_argument("--print-bpf", action="store_true", help="print the BPF program and exit")
    run.add_argument("--ring-pages", type=int, metavar="N",
                     help="ring buffer size in pages (power of two; default 1024)")

    scan = sub.add_parser("scan", help="one procfs pass, judged and reported; never kills")
    rules_opt(scan)
    scan.add_argument("--proc-root", default="/proc")
    scan.add_argument("--config", help="YAML config file (markers, protected names)")
    scan.add_argument("--format", choices=("table", "json"), default="table")

    rules = sub.add_parser("rules", help="check or test rule files")
    rsub = rules.add_subparsers(dest="rules_command", required=True, metavar="SUBCOMMAND")
    rc = rsub.add_parser("check", help="validate rule files")
    rc.add_argument("paths", nargs="*", metavar="PATH")
    rt = rsub.add_parser("test", help="run the rules' example events")
    rt.add_argument("paths", nargs="*", metavar="PATH")
    rt.add_argument("--verbose", action="store_true", help="list passing examples too")

    rp = sub.add_parser("replay", help="judge recorded events (backtest a rule set)")
    rp.add_argument("file", metavar="EVENTS.jsonl")
    rules_opt(rp)
    rp.add_argument("--format", choices=("table", "json"), default="table")
    rp.add_argument("--config", help="YAML config file")
    return p


def _rule_paths(paths: Sequence[str] | None) -> list[str]:
    return list(paths) if paths else [loader.bundled_rules_dir()]


def _load_rules(paths: Sequence[str] | None, err: TextIO) -> RuleSet | None:
    try:
        return loader.load(_rule_paths(paths))
    except RuleError as e:
        for problem in e.problems:
            print(problem, file=err)
        print(f"nodewarden: {len(e.problems)} problem(s) in the rules; nothing was loaded",
              file=err)
        return None


def _emit(decisions: Sequence[Decision], writer: FindingWriter, host: str) -> None:
    writer.write([Finding.of(d, host) for d in decisions])


def cmd_rules_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    paths = _rule_paths(args.paths)
    ruleset, problems = loader.check(paths)
    for p in problems:
        print(p, file=out)
    if ruleset is None:
        print(f"{len(problems)} problem(s)", file=err)
        return 2
    print(f"ok: {len(ruleset.all_rules)} rules ({len(ruleset.rules)} enabled) in "
          f"{len(ruleset.sources)} file(s), hash {ruleset.digest}", file=out)
    return 0


def cmd_rules_test(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    ruleset = _load_rules(args.paths, err)
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


def _config(path: str | None) -> Config:
    return load_config(path)


def _warn_if_unprivileged() -> None:
    if os.geteuid() != 0:
        log.warning("not running as root: other users' processes show no executable path and "
                    "no workspace (their /proc/PID/exe and environ are unreadable); run as root "
                    "for a complete view")


def cmd_scan(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    cfg = _config(args.config)
    _warn_if_unprivileged()
    ruleset = _load_rules(args.rules or cfg.rules or None, err)
    if ruleset is None:
        return 2
    if not os.path.isdir(args.proc_root):
        print(f"nodewarden: procfs root {args.proc_root} is not a directory", file=err)
        return 2
    tree = ProcessTree(ProcFS(args.proc_root), cfg.workspace_markers)
    judge = Judge(ruleset, "audit", _protection(cfg), can_act=False)
    decisions = scan_once(tree, judge)
    writer = FindingWriter(out, args.format)
    _emit(decisions, writer, cfg.host)
    if args.format == "table":
        print(f"{len(tree.procs)} processes scanned, {len(decisions)} finding(s)", file=err)
    return 1 if decisions else 0


def cmd_replay(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    cfg = _config(args.config)
    ruleset = _load_rules(args.rules or cfg.rules or None, err)
    if ruleset is None:
        return 2
    judge = Judge(ruleset, "audit", _protection(cfg), can_act=False)
    writer = FindingWriter(out, args.format)
    found = 0
    try:
        for ev in read_events(args.file):
            decisions = judge.judge(ev)
            found += len(decisions)
            _emit(decisions, writer, cfg.host)
    except OSError as e:
        print(f"nodewarden: cannot read {args.file}: {e.strerror}", file=err)
        return 2
    except EventFormatError as e:
        print(f"nodewarden: {e}", file=err)
        return 2
    return 1 if found else 0


def _protection(cfg: Config) -> Protection:
    """The agent and its ancestors (its shell, container runtime) as they are now: each is
    protected as (pid, start time, executable), so a recycled pid or an ancestor that execs
    another program later is not; an ancestor that has exited protects nothing."""
    own = []
    pid = os.getpid()
    try:
        procfs = ProcFS(cfg.proc_root if os.path.isdir(cfg.proc_root) else "/proc")
        for _ in range(64):
            if pid <= 1:
                break
            p = procfs.read(pid)
            own.append(p)
            pid = p.ppid
    except (OSError, NodewardenError):
        log.debug("could not read the agent's ancestry past pid %d", pid)
    return Protection.of(own, cfg.protected)


def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.print_bpf:
        from agent.sources.bpf import program_text

        out.write(program_text())
        return 0
    raise_nofile_limit()
    cfg = _config(args.config)
    if args.no_bpf:
        cfg.bpf = "off"
    if args.findings_file:
        cfg.findings_file = args.findings_file
    if args.ring_pages:
        cfg.ring_buffer_pages = args.ring_pages
    if args.dry_run:
        cfg.mode = "audit"
    for attr in ("proc_root", "listen"):
        if getattr(args, attr):
            setattr(cfg, attr, getattr(args, attr))
    if args.interval is not None:
        cfg.scan_interval = args.interval
    if args.rules:
        cfg.rules = list(args.rules)
    cfg.validate()
    # one agent per node; taken before the agent touches anything the other one owns
    lock = NodeLock.take(cfg.lock_file)
    try:
        return _run_agent(args, cfg, out, err)
    finally:
        lock.release()


def _run_agent(args: argparse.Namespace, cfg: Config, out: TextIO, err: TextIO) -> int:
    if not os.path.isdir(cfg.proc_root):
        print(f"nodewarden: procfs root {cfg.proc_root} is not a directory", file=err)
        return 2
    ruleset = _load_rules(cfg.rules or None, err)
    if ruleset is None:
        return 2
    # refused (exit 2) before anything starts: a symlink, FIFO or someone else's file
    record_file = open_output(args.record, "--record") if args.record else None
    findings_file = open_output(cfg.findings_file, "findings_file") if cfg.findings_file else None
    _warn_if_unprivileged()
    metrics = Metrics()
    metrics.set_ruleset(ruleset.digest, len(ruleset))
    metrics.sensor_up.labels(sensor="procfs").set(1)
    fmt = args.format or ("table" if out.isatty() else "json")
    tree = ProcessTree(ProcFS(cfg.proc_root), cfg.workspace_markers)
    metrics.watch_cmdlines(tree.procfs.cmdlines)
    protection = _protection(cfg)
    judge = Judge(ruleset, cfg.mode, protection, metrics, cfg.process_cache_size, can_act=True)
    enforcer = Enforcer(tree.procfs, ProcessTree(tree.procfs, cfg.workspace_markers), protection,
                        metrics=metrics)

    def record(ev: Event) -> None:
        assert record_file is not None
        record_file.write(json_line(ev.to_json()) + "\n")

    kube = _KubeParts(cfg, metrics, enforcer, tree)
    sinks = Sinks.open(cfg, metrics, out, fmt, findings_file, kube.kube)

    def report(decisions: list[Decision]) -> None:
        sinks.submit([Finding.of(d, cfg.host) for d in decisions])

    agent = Agent(tree, judge, report, metrics,
                  cfg.scan_interval, record if record_file is not None else None,
                  enforcer.carry_out)
    stop = threading.Event()
    server = None
    if cfg.listen != "off":
        server = StatusServer(cfg.listen, metrics,
                              healthy=lambda: time.monotonic() - agent.heartbeat < HEALTHY_WITHIN,
                              ready=lambda: agent.ready,
                              token=read_metrics_token(cfg.metrics_token_file)
                              if cfg.metrics_token_file else None,
                              socket_group=cfg.metrics_socket_group)
        server.start()

    # re-fills the kernel's rule maps (after the sensors load, and after every reload)
    kernel_sync: list[Callable[[], None]] = []

    def apply_config(new: Config) -> None:
        if args.dry_run:
            new.mode = "audit"  # the command line's --dry-run outlives any config change
        judge.mode = new.mode
        judge.protection = enforcer.protection = replace(protection, names=frozenset(new.protected))
        agent.scan_interval = new.scan_interval
        kube.reconfigure(new)
        sinks.reconfigure(new)
        for sync in kernel_sync:
            sync()

    def apply_rules(rs: RuleSet) -> None:
        judge.ruleset = rs
        for sync in kernel_sync:
            sync()

    reloader = Reloader(args.config, cfg, cfg.rules or [loader.bundled_rules_dir()],
                        apply_rules=apply_rules, apply_config=apply_config, metrics=metrics)
    agent.ticks.append(reloader.tick)

    # The handlers agent.main installed only write signals down (a handler that took a lock,
    # as Event.set does, hung or crashed the agent in a SIGHUP storm); the loop's first tick
    # acts on them, those that came while the agent started included.
    def act_on_signals() -> None:
        came = signals.drain()
        if signal.SIGHUP in came:
            reloader.request()
        stop_by = next((s for s in came if s != signal.SIGHUP), None)
        if stop_by is not None:
            log.info("received %s, stopping", signal.Signals(stop_by).name)
            stop.set()

    agent.ticks.insert(0, act_on_signals)
    signals.record_early()  # already so through agent.main; not when cli.main is called directly
    log.info("nodewarden %s: mode=%s, %d rules (hash %s), procfs=%s, scan every %.1fs",
             __version__, cfg.mode, len(ruleset), ruleset.digest, cfg.proc_root, cfg.scan_interval)
    if cfg.mode == "enforce":
        log.warning("mode=enforce: processes matching kill rules will be SIGKILLed")
    sensor = observer = None
    try:
        kube.wait_synced()
        if args.once:
            agent.scan("startup")
            return 0
        sensor, observer, running = _start_sensors(cfg, tree, agent, metrics)
        if sensor is not None and hasattr(sensor, "set_kernel_rules") and cfg.kernel_enforcement:
            kernel_sync.append(lambda: sync_kernel_rules(sensor, agent, judge, protection))
            kernel_sync[0]()

        def ready() -> None:
            log.info("ready: %s", running)

        agent.run(stop, sensor, observer, ready)
    finally:
        if sensor is not None:
            sensor.close()  # detaches every BPF program
        sinks.close(deadline=5.0)  # send what is queued, count the rest as dropped
        kube.close()
        if server is not None:
            server.stop()
        if record_file is not None:
            record_file.close()
        if findings_file is not None:
            findings_file.close()
    log.info("stopped")
    return 0


def sync_kernel_rules(sensor: Any, agent: Agent, judge: Judge, protection: Protection) -> None:
    """Put the rules the kernel can enforce into its maps, in the current modes. Protected
    names never enter them: the kernel does not ask userspace before it kills."""
    from agent.engine.kernel import kernel_connect_rules, kernel_rules

    rules = kernel_rules(judge.ruleset.rules)
    specs = [(r.kernel.names - protection.names, r.kernel.paths,
              (r.mode or judge.mode) == "enforce") for r in rules]
    sensor.set_kernel_rules(specs)
    agent.kernel_rules = rules
    if sensor.connect_guard:
        conn_rules = kernel_connect_rules(judge.ruleset.rules)
        sensor.set_kernel_connect_rules([(r.kernel_connect, (r.mode or judge.mode) == "enforce")
                                         for r in conn_rules])
        agent.kernel_connect_rules = conn_rules
        if conn_rules:
            log.info("in-kernel connect rules: %s", ", ".join(r.id for r in conn_rules))
    enforcing = [r.id for r, (_, _, enf) in zip(rules, specs) if enf]
    log.info("in-kernel exec rules: %d (%s); enforcing: %s", len(rules),
             ", ".join(r.id for r in rules) or "none", ", ".join(enforcing) or "none (audit)")


class _KubeParts:
    """What the Kubernetes API gives the agent: pod enrichment, pod deletion (Events are a
    sink: agent/sinks/registry.py).
    Every part is None outside a cluster (the agent then runs without them)."""

    def __init__(self, cfg: Config, metrics: Metrics, enforcer: Enforcer,
                 tree: ProcessTree) -> None:
        from agent import kubeapi
        from agent.enrich.pods import PodIndex
        from agent.sources.kubepods import PodWatcher

        self.metrics = metrics
        self.enforcer = enforcer
        self.kube = kubeapi.connect(cfg.kubernetes, cfg.kubeconfig, cfg.node_name)
        self.watcher: Any = None
        self.deleter: Any = None
        if self.kube is None:
            if cfg.delete_pod:
                log.warning("delete_pod is on but there is no Kubernetes API: rules with "
                            "action delete-pod kill the process only")
            return
        log.info("Kubernetes API: %s, node %s", self.kube.where, self.kube.node)
        self.reconfigure(cfg)
        index = PodIndex()
        self.watcher = PodWatcher(self.kube.api, self.kube.node, index, metrics)
        tree.pod_of = index.lookup
        self.watcher.start()

    def reconfigure(self, cfg: Config) -> None:
        """delete_pod follows the config, reloads included (the chart's RBAC follows
        deletePod too). The connection settings need a restart."""
        if self.kube is None:
            return
        if cfg.delete_pod and self.deleter is None:
            from agent.actions.pods import PodDeleter

            self.deleter = PodDeleter.open(self.kube, cfg, self.metrics)
        elif self.deleter is not None:
            self.deleter.reconfigure(cfg)
        self.enforcer.pod_deleter = self.deleter if cfg.delete_pod else None

    def wait_synced(self, timeout: float = 10.0) -> None:
        """Give the first pod list a moment, so the start-up scan's findings name pods."""
        if self.watcher is not None and not self.watcher.synced.wait(timeout):
            log.warning("the pod list is not done after %.0fs; starting without it", timeout)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self.deleter is not None:
            self.deleter.close(deadline=3.0)


def _start_sensors(cfg: Config, tree: ProcessTree, agent: Agent,
                   metrics: Metrics) -> tuple[Any, Any, str]:
    """The best event source this machine allows: the eBPF sensors; else the netlink proc
    connector (exec, fork, exit); else none. Says once, clearly, what is missing and why.
    Returns (sensor or None, observer or None, what runs)."""
    from agent.observer import Observer
    from agent.sources import bpf
    from agent.sources.netstate import NetState
    from agent.sources.proc_connector import ProcConnector

    observer = Observer(tree, NetState(cfg.proc_root))

    def on_raw(raw: Any) -> None:
        try:
            ev = observer.handle(raw)
        except OSError as e:  # out of descriptors reading procfs: counted, a scan follows
            agent.failed("events", e)
            return
        if ev is not None:
            agent.handle(ev)

    if cfg.bpf == "off":
        why = "disabled in the configuration (bpf: off)"
    else:
        try:
            bpf.check()
            transport = {"auto": None, "ring": False, "perf": True}[cfg.bpf_transport]
            sensor = bpf.BpfSensor(on_raw, ring_pages=cfg.ring_buffer_pages, perf=transport)
            for name in ("exec", "tcp"):
                metrics.sensor_up.labels(sensor=name).set(1)
            log.info("eBPF sensors loaded (%s buffer)", "perf" if sensor.perf else "ring")
            return sensor, observer, "eBPF sensors (exec, fork, exit, tcp) and procfs scans"
        except bpf.BpfUnavailable as e:
            why = f"{e.reason}; fix: {e.fix}"
        except Exception as e:  # noqa: BLE001 - BCC raises bare Exception on compile errors
            why = f"the BPF program failed to load ({e})"
        if cfg.bpf == "required":
            raise ConfigError(f"eBPF is required (bpf: required) but unavailable: {why}")
    try:
        connector = ProcConnector(on_raw)
    except OSError as e:
        log.warning("eBPF sensors unavailable: %s. The netlink proc connector is unavailable "
                    "too (%s). Running on procfs scans every %gs: processes that live shorter "
                    "than that can be missed, and no TCP events are seen.",
                    why, e.strerror, cfg.scan_interval)
        return None, None, f"procfs scans every {cfg.scan_interval:g}s"
    metrics.sensor_up.labels(sensor="proc_connector").set(1)
    log.warning("eBPF sensors unavailable: %s. Using the netlink proc connector for exec, "
                "fork and exit (no TCP events) and procfs scans every %gs.", why, cfg.scan_interval)
    return connector, observer, "netlink proc connector (exec, fork, exit) and procfs scans"


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=err,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command != "run":
        signals.restore_defaults()
    try:
        if args.command == "rules":
            if args.rules_command == "check":
                return cmd_rules_check(args, out, err)
            return cmd_rules_test(args, out, err)
        return {"scan": cmd_scan, "replay": cmd_replay, "run": cmd_run}[args.command](args, out, err)
    except ConfigError as e:
        print(f"nodewarden: {e}", file=err)
        return 2
    except BrokenPipeError:
        return 0
