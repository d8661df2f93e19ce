"""Every Prometheus metric the agent exports, defined once, on a registry we are given.

Labels are bounded by construction: sources, rule ids, severities, modes, actions,
outcomes. Never a pid, a cmdline or an error text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agent import __version__
from agent.sources.cmdline import CmdlineBudget
from agent.sources.procfs.cgroup import CGROUPS

if TYPE_CHECKING:
    from agent.engine.ruleset import Rule


class Metrics:
    """The agent's metrics on `registry` (a fresh one per agent, and per test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # process_resident_memory_bytes, process_cpu_seconds_total, open fds, ...
        ProcessCollector(registry=r)
        self.events = Counter("nodewarden_events_total", "Events judged", ["source"], registry=r)
        self.events_lost = Counter("nodewarden_events_lost_total", "Events the kernel dropped",
                                   ["source"], registry=r)
        self.rule_matches = Counter("nodewarden_rule_matches_total", "Rule matches",
                                    ["rule", "severity", "mode"], registry=r)
        self.actions = Counter("nodewarden_actions_total", "Decisions carried out",
                               ["action", "outcome"], registry=r)
        self.scan_duration = Histogram("nodewarden_scan_duration_seconds",
                                       "Duration of a full procfs scan", registry=r,
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                                2.5, 5))
        self.alerts_sent = Counter("nodewarden_alerts_sent_total", "Alerts delivered", ["sink"],
                                   registry=r)
        self.alerts_dropped = Counter("nodewarden_alerts_dropped_total",
                                      "Alerts given up on, and why", ["sink", "reason"], registry=r)
        self.scans = Counter("nodewarden_scans_total", "Procfs reconciliation scans",
                             ["reason"], registry=r)
        self.reload_failures = Counter("nodewarden_reload_failures_total",
                                       "Rule or config reloads refused", ["what"], registry=r)
        self.processes = Gauge("nodewarden_processes", "Processes in the last scan", registry=r)
        self.pods = Gauge("nodewarden_pods", "Pods of this node known to the enrichment",
                          registry=r)
        self.kube_requests = Counter("nodewarden_kubernetes_watch_total",
                                     "Pod lists, and watch failures by kind", ["what"], registry=r)
        self.rules_loaded = Gauge("nodewarden_rules_loaded", "Enabled rules", registry=r)
        self.ruleset_info = Gauge("nodewarden_ruleset_info", "The rule set that runs",
                                  ["hash"], registry=r)
        self.build_info = Info("nodewarden_build", "Version of the agent", registry=r)
        self.build_info.info({"version": __version__})
        self.sensor_up = Gauge("nodewarden_sensor_up", "Whether a sensor runs", ["sensor"],
                               registry=r)
        # running out of file descriptors, and other OS errors the agent survives, by
        # where (scan, events, reload, http, kill); the status server's closed connections
        self.fd_exhausted = Counter("nodewarden_fd_exhausted_total",
                                    "EMFILE/ENFILE met and survived", ["where"], registry=r)
        self.errors = Counter("nodewarden_errors_total", "OS errors met and survived",
                              ["where"], registry=r)
        self.http_closed = Counter("nodewarden_http_connections_closed_total",
                                   "Status connections closed before a response, and why",
                                   ["reason"], registry=r)
        for sensor in ("procfs", "exec", "tcp", "proc_connector"):
            self.sensor_up.labels(sensor=sensor).set(0)
        self._caches: _CacheCollector | None = None
        # process-wide caches, whichever part fills them
        self.watch_caches({"cgroups": lambda: CGROUPS})

    def watch_cmdlines(self, budget: CmdlineBudget) -> None:
        """Export the command-line budget (held bytes, limit, command lines cut) and its
        set of the processes already counted as cut (the `cmdlines_counted` cache)."""
        self.registry.register(_CmdlineCollector(budget))
        self.watch_caches({"cmdlines_counted": lambda: budget.counted})

    def watch_caches(self, caches: Mapping[str, Callable[[], Sized | None]]) -> None:
        """Export how full each bounded cache is (entries, and capacity where it has one),
        read when scraped: memory that stays flat under load is memory whose caches stop
        at their capacity. Each cache is given as a function that returns it, or None while
        the part that holds it is off (a sink turned off by a reload): then it is left out."""
        if self._caches is None:
            self._caches = _CacheCollector()
            self.registry.register(self._caches)
        self._caches.caches.update(caches)

    def set_ruleset(self, digest: str, count: int) -> None:
        """The rule set that runs: its hash (one labelled series) and its rule count."""
        self.ruleset_info.clear()
        self.ruleset_info.labels(hash=digest).set(1)
        self.rules_loaded.set(count)


class Bounded:
    """A cache its owner keeps bounded by hand (a dict it trims), as the cache metrics see
    it: the entries `held` has now, against `maxsize`."""

    def __init__(self, held: Sized, maxsize: int) -> None:
        self.held = held
        self.maxsize = maxsize

    def __len__(self) -> int:
        return len(self.held)


class CacheTotal:
    """Several bounded caches exported as one: entries and capacities summed (the windows
    of every rule, whose rules change at each reload). `parts` is called at each scrape."""

    def __init__(self, parts: Callable[[], Iterable[Sized]]) -> None:
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts())

    @property
    def maxsize(self) -> int:
        """The parts' capacities summed."""
        return sum(int(getattr(p, "maxsize", 0)) for p in self.parts())


def rule_windows(rules: Callable[[], Iterable[Rule]]) -> Callable[[], Sized]:
    """The `rule_windows` cache for `watch_caches`: the keys every window rule of the rule
    set that runs now (`rules()`, read at each scrape) holds, against their capacity."""
    total = CacheTotal(lambda: [r.window.cache() for r in rules() if r.window is not None])
    return lambda: total


class _CmdlineCollector:
    """The command-line budget as metrics, read when scraped."""

    def __init__(self, budget: CmdlineBudget) -> None:
        self.budget = budget

    def collect(self) -> Iterator[Metric]:
        b = self.budget
        yield GaugeMetricFamily("nodewarden_cmdline_bytes",
                                "Memory held by the command lines of known processes", b.held)
        yield GaugeMetricFamily("nodewarden_cmdline_budget_bytes",
                                "Past this, command lines keep a small head and tail", b.limit)
        cut = CounterMetricFamily("nodewarden_cmdlines_cut",
                                  "Processes whose command line kept only its head and tail: "
                                  "too long, or the budget was spent", labels=["reason"])
        for reason, n in sorted(b.cut.items()):
            cut.add_metric([reason], n)
        yield cut


class _CacheCollector:
    """Cache sizes as metrics, read when scraped."""

    def __init__(self) -> None:
        self.caches: dict[str, Callable[[], Sized | None]] = {}

    def collect(self) -> Iterator[Metric]:
        entries = GaugeMetricFamily("nodewarden_cache_entries", "Entries held, by cache",
                                    labels=["cache"])
        capacity = GaugeMetricFamily("nodewarden_cache_capacity",
                                     "The most entries a cache holds, by cache",
                                     labels=["cache"])
        for name, get in sorted(self.caches.items()):
            cache = get()
            if cache is None:
                continue
            entries.add_metric([name], len(cache))
            maxsize = getattr(cache, "maxsize", None)
            if maxsize is not None:
                capacity.add_metric([name], maxsize)
        yield entries
        yield capacity
