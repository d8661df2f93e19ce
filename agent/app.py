"""The running agent (`nodewarden run`): one object that builds every part from a Config,
applies settings to them in one place, and shuts them down in one place.

`Runtime.apply(config, ruleset)` is the only way settings reach the parts, at start and on
every reload: the judge's rules, mode and protection, the enforcer's protection and pod
deleter, the scan interval, the sinks, and the kernel's rule maps, which are re-filled from
the protection of *this* config (a name a reload adds to `protected` leaves the kernel's
kill map at once). The command line's say (`Overrides`) is laid over every config before it
is applied, so `--dry-run`, `--rules` and `--interval` outlive reloads.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TextIO

from agent import __version__, signals
from agent.actions.kill import Enforcer
from agent.codec import event_line
from agent.config import Config, read_metrics_token
from agent.decide import Decision, Protection
from agent.engine import loader
from agent.engine.ruleset import RuleSet
from agent.errors import ConfigError
from agent.httpserver import StatusServer
from agent.metrics import CacheTotal, Metrics, rule_windows
from agent.model import Event
from agent.observer import Observer
from agent.pipeline import Agent, Judge
from agent.realtime import Realtime, between_records, settle_heap, tuned
from agent.reload import Reloader
from agent.sinks.findings import Finding
from agent.sinks.registry import Sinks
from agent.sources.kevents import RawEvent
from agent.sources.netstate import NetState
from agent.sources.procfs import ProcFS
from agent.sources.proctree import ProcessTree, own_processes
from agent.sources.sensorset import SensorSet, open_sensors

if TYPE_CHECKING:  # the Kubernetes parts are imported only when a cluster is there
    from agent.actions.pods import PodDeleter
    from agent.sources.kubepods import PodWatcher
    from agent.sources.proctree import PodLookup

log = logging.getLogger("nodewarden")

# /healthz fails when the main loop has not turned for this long (it turns every 100 ms)
HEALTHY_WITHIN = 30.0


@dataclass(frozen=True)
class Overrides:
    """What the command line says about settings the config file also holds. Laid over the
    file's config at start and over every reloaded one, so a reload never undoes them."""

    dry_run: bool = False
    rules: tuple[str, ...] = ()
    interval: float | None = None
    proc_root: str | None = None
    listen: str | None = None
    findings_file: str | None = None
    ring_pages: int | None = None
    no_bpf: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Overrides:
        """The overrides `nodewarden run`'s arguments carry."""
        return cls(dry_run=args.dry_run, rules=tuple(args.rules or ()), interval=args.interval,
                   proc_root=args.proc_root, listen=args.listen,
                   findings_file=args.findings_file, ring_pages=args.ring_pages,
                   no_bpf=args.no_bpf)

    def apply(self, cfg: Config) -> Config:
        """A copy of `cfg` with the command line's values over it, validated."""
        changes: dict[str, Any] = {}
        if self.dry_run:
            changes["mode"] = "audit"
        if self.rules:
            changes["rules"] = list(self.rules)
        if self.interval is not None:
            changes["scan_interval"] = self.interval
        if self.no_bpf:
            changes["bpf"] = "off"
        for key, value in (("proc_root", self.proc_root), ("listen", self.listen),
                           ("findings_file", self.findings_file),
                           ("ring_buffer_pages", self.ring_pages)):
            if value:
                changes[key] = value
        out = replace(cfg, **changes)
        out.validate()
        return out


def rule_paths(cfg: Config) -> list[str]:
    """The rule files and directories a config names (the shipped rules when none)."""
    return list(cfg.rules) or [loader.bundled_rules_dir()]


class Runtime:
    """Every part of a running agent, built from one Config and rule set.

    Parts get what they depend on when they are made; afterwards only `apply` changes their
    settings, through their own methods."""

    def __init__(self, cfg: Config, ruleset: RuleSet, overrides: Overrides,
                 config_path: str | None, out: TextIO, fmt: str,
                 record: TextIO | None = None, findings_file: TextIO | None = None) -> None:
        self.cfg = cfg
        self.ruleset = ruleset
        self.overrides = overrides
        self.metrics = metrics = Metrics()
        self.stop = threading.Event()
        self._record_file = record
        procfs = ProcFS(cfg.proc_root)
        self.kube = _KubeParts(cfg, metrics)
        try:  # stdout, findings_file, Slack, pod Events, webhook ... (agent/sinks/registry.py)
            self.sinks = Sinks.open(cfg, metrics, out, fmt, findings_file, self.kube.kube)
        except ConfigError:  # a refused secret file: stop what started
            self.kube.close()
            raise
        self.tree = ProcessTree(procfs, cfg.workspace_markers, pod_of=self.kube.pod_of)
        metrics.watch_cmdlines(procfs.cmdlines)
        self._own = Protection.of(own_processes(cfg.proc_root), cfg.protected)
        self.judge = Judge(ruleset, cfg.mode, self._own, metrics, cfg.process_cache_size,
                           can_act=True)
        metrics.watch_caches({"judged": lambda: self.judge.seen,
                              "processes": lambda: self.tree.procs,
                              "rule_windows": rule_windows(lambda: self.judge.ruleset.all_rules),
                              "rule_verdicts": lambda: CacheTotal(self.judge.ruleset.remembered),
                              **self.tree.caches()})
        self.enforcer = Enforcer(procfs, ProcessTree(procfs, cfg.workspace_markers),
                                 self._own, metrics=metrics)
        self.reloader = Reloader(config_path, cfg, rule_paths(cfg), apply_rules=self._new_rules,
                                 apply_config=self._new_config, metrics=metrics,
                                 effective=overrides.apply)
        self.agent = Agent(self.tree, self.judge, self._report, metrics, cfg.scan_interval,
                           self._record if record is not None else None,
                           self.enforcer.carry_out,
                           ticks=(self._act_on_signals, self.reloader.tick))
        self.server = self._status_server(cfg)
        self.sensors: SensorSet | None = None
        self.realtime = Realtime()  # `apply` runs on the event thread: start and reloads

    # -- settings: the one place they reach the parts ------------------------------------

    def apply(self, cfg: Config, ruleset: RuleSet) -> None:
        """Make `cfg` (already with the command line's overrides) and `ruleset` the running
        settings: at start and on every reload."""
        protection = replace(self._own, names=frozenset(cfg.protected))
        self.judge.use(ruleset, cfg.mode, protection)
        self.enforcer.reconfigure(protection, self.kube.reconfigure(cfg))
        self.sinks.reconfigure(cfg)
        self.agent.set_scan_interval(cfg.scan_interval)
        self.realtime.use(cfg.realtime)
        self.cfg, self.ruleset = cfg, ruleset
        self.metrics.set_ruleset(ruleset.digest, len(ruleset))
        self._sync_kernel(protection)

    def _new_config(self, cfg: Config) -> None:
        self.apply(cfg, self.ruleset)

    def _new_rules(self, ruleset: RuleSet) -> None:
        self.apply(self.cfg, ruleset)

    def _sync_kernel(self, protection: Protection) -> None:
        """Re-fill the kernel's rule maps from the running rules, mode and protection (all
        empty when kernel enforcement is off)."""
        if self.sensors is None:
            return
        self.sensors.load_workspace_markers(self.tree.markers)
        exec_rules, connect_rules = self.sensors.load_kernel_rules(
            self.ruleset.rules, self.cfg.mode, protection.names,
            in_kernel=self.cfg.kernel_enforcement)
        self.agent.use_kernel_rules(exec_rules, connect_rules)
        self.sensors.send_only(self.ruleset.rules, everything=self._record_file is not None)
        self.sensors.use_rules(self.ruleset.rules)

    # -- what flows ------------------------------------------------------------------------

    def _record(self, ev: Event) -> None:
        assert self._record_file is not None
        self._record_file.write(event_line(ev) + "\n")

    def _report(self, decisions: list[Decision]) -> None:
        self.sinks.submit([Finding.of(d, self.cfg.host) for d in decisions])

    def _act_on_signals(self) -> None:
        """The handlers agent.main installed only write signals down (a handler that took a
        lock, as Event.set does, hung or crashed the agent in a SIGHUP storm); the loop's
        first tick acts on them, those that came while the agent started included."""
        came = signals.drain()
        if signal.SIGHUP in came:
            self.reloader.request()
        stop_by = next((s for s in came if s != signal.SIGHUP), None)
        if stop_by is not None:
            log.info("received %s, stopping", signal.Signals(stop_by).name)
            self.stop.set()

    # -- life --------------------------------------------------------------------------------

    def _status_server(self, cfg: Config) -> StatusServer | None:
        if cfg.listen == "off":
            return None
        agent = self.agent
        token = read_metrics_token(cfg.metrics_token_file) if cfg.metrics_token_file else None
        return StatusServer(cfg.listen, self.metrics,
                            healthy=lambda: time.monotonic() - agent.heartbeat < HEALTHY_WITHIN,
                            ready=lambda: agent.ready, token=token,
                            socket_group=cfg.metrics_socket_group)

    def run(self, once: bool = False) -> int:
        """Start everything, run until a stop signal (or one scan with `once`), shut down."""
        signals.record_early()  # so through agent.main; not when cli.main is called directly
        if self.server is not None:
            self.server.start()
        cfg = self.cfg
        self.metrics.sensor_up.labels(sensor="procfs").set(1)
        log.info("nodewarden %s: mode=%s, %d rules (hash %s), procfs=%s, scan every %.1fs",
                 __version__, cfg.mode, len(self.ruleset), self.ruleset.digest, cfg.proc_root,
                 cfg.scan_interval)
        if cfg.mode == "enforce":
            log.warning("mode=enforce: processes matching kill rules will be SIGKILLed")
        try:
            self.kube.wait_synced()
            if once:
                self.apply(cfg, self.ruleset)
                self.agent.scan("startup")
                return 0
            self.sensors, observer = _open_sensors(cfg, self.tree, self.agent, self.metrics)
            self.apply(cfg, self.ruleset)
            self.sensors.release_compiler_memory()
            running = self.sensors.describe() or f"procfs scans every {cfg.scan_interval:g}s"
            with tuned():  # the GIL handed over within 0.5 ms (agent/realtime.py)
                self.agent.run(self.stop, self.sensors if self.sensors else None, observer,
                               lambda: _ready(running))
        finally:
            self.close()
        log.info("stopped")
        return 0

    def close(self) -> None:
        """Shut every part down, the kernel's programs first (nothing is judged past here)."""
        if self.sensors is not None:
            self.sensors.close()  # detaches every BPF program
            self.sensors = None
        self.sinks.close(deadline=5.0)  # send what is queued, count the rest as dropped
        self.kube.close()
        if self.server is not None:
            self.server.stop()


class _KubeParts:
    """What the Kubernetes API gives the agent: pod enrichment, pod deletion (its Events
    are a sink: agent/sinks/registry.py).
    Every part is None outside a cluster (the agent then runs without them)."""

    def __init__(self, cfg: Config, metrics: Metrics) -> None:
        from agent import kubeapi
        from agent.enrich.pods import PodIndex
        from agent.sources.kubepods import PodWatcher

        self.metrics = metrics
        self.kube = kubeapi.connect(cfg.kubernetes, cfg.kubeconfig, cfg.node_name)
        self.watcher: PodWatcher | None = None
        self.deleter: PodDeleter | None = None
        self.pod_of: PodLookup | None = None
        if self.kube is None:
            if cfg.delete_pod:
                log.warning("delete_pod is on but there is no Kubernetes API: rules with "
                            "action delete-pod kill the process only")
            return
        log.info("Kubernetes API: %s, node %s", self.kube.where, self.kube.node)
        index = PodIndex()
        self.pod_of = index.lookup
        self.watcher = PodWatcher(self.kube.api, self.kube.node, index, metrics)
        self.watcher.start()

    def reconfigure(self, cfg: Config) -> PodDeleter | None:
        """delete_pod follows the config, reloads included (the chart's RBAC follows
        deletePod too). The connection settings need a restart.
        Returns the pod deleter the enforcer is to use (None: delete-pod kills only)."""
        if self.kube is None:
            return None
        if cfg.delete_pod and self.deleter is None:
            from agent.actions.pods import PodDeleter

            self.deleter = PodDeleter.open(self.kube, cfg, self.metrics)
        elif self.deleter is not None:
            self.deleter.reconfigure(cfg)
        return self.deleter if cfg.delete_pod else None

    def wait_synced(self, timeout: float = 10.0) -> None:
        """Give the first pod list a moment, so the start-up scan's findings name pods."""
        if self.watcher is not None and not self.watcher.synced.wait(timeout):
            log.warning("the pod list is not done after %.0fs; starting without it", timeout)

    def close(self) -> None:
        """Stop the pod watch; send what deletions are queued, within 3 s."""
        if self.watcher is not None:
            self.watcher.stop()
        if self.deleter is not None:
            self.deleter.close(deadline=3.0)


def _ready(running: str) -> None:
    """Start-up is done: its heap frozen out of the collector's reach, then said."""
    frozen = settle_heap()
    log.info("ready: %s", running)
    log.debug("%d objects alive at ready frozen (gc.freeze)", frozen)


def _open_sensors(cfg: Config, tree: ProcessTree, agent: Agent,
                  metrics: Metrics) -> tuple[SensorSet, Observer]:
    """The sensors `cfg.sensors` enables that can run here, their records turned into
    Events by an Observer and handed to the agent."""
    observer = Observer(tree, NetState(cfg.proc_root))
    metrics.watch_caches(observer.caches())

    def on_record(raw: RawEvent) -> None:
        try:
            ev = observer.handle(raw)
        except OSError as e:  # out of descriptors reading procfs: counted, a scan follows
            agent.failed("events", e)
            return
        if ev is not None:
            agent.handle(ev)

    return open_sensors(cfg, between_records(on_record), metrics), observer
