"""Wiring: events -> rules -> decisions, with each process judged once.

`Judge` holds the rule set, the global mode and the LRU of process identities; sources
(procfs scans now, eBPF events later) hand it enriched events.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cachetools import LRUCache

from agent.decide import Decision, Protection, decide
from agent.engine.ruleset import RuleSet
from agent.metrics import Metrics
from agent.model import Event
from agent.sources.proctree import ProcessTree

# Kinds that are about a process instance rather than a connection: judged once per identity.
_PER_PROCESS = ("exec", "scan")


class Judge:
    """Judges events with the rules and decides what to do about each match.

    A process is marked seen only after it was judged, so a crash or a rules error mid-way
    never leaves a process marked but unjudged.
    """

    def __init__(self, ruleset: RuleSet, mode: str = "audit", protection: Protection | None = None,
                 metrics: Metrics | None = None, cache_size: int = 65536, can_act: bool = False) -> None:
        self.ruleset = ruleset
        self.mode = mode
        self.protection = protection or Protection()
        self.metrics = metrics
        self.can_act = can_act
        self.seen: LRUCache[int, bool] = LRUCache(maxsize=cache_size)
        # labelled counter children, looked up once per kind rather than once per event
        self._event_counters: dict[str, Any] = {}

    def judged(self, identity: int) -> bool:
        """Whether the process with this identity was judged already. A hit refreshes its
        LRU position (`in` alone would not), so live processes stay cached."""
        return self.seen.get(identity) is not None

    def judge(self, ev: Event) -> list[Decision]:
        """Decisions for `ev`; [] when nothing matched or the process was already judged."""
        once = ev.kind in _PER_PROCESS
        pid_id = ev.process.id
        if once and self.judged(pid_id):
            return []
        matches = self.ruleset.evaluate(ev)
        if once:
            self.seen[pid_id] = True
        m = self.metrics
        if m is not None:
            counter = self._event_counters.get(ev.kind)
            if counter is None:
                counter = self._event_counters[ev.kind] = m.events.labels(source=ev.kind)
            counter.inc()
        if not matches:
            return []
        decisions = [decide(x, self.mode, self.protection, self.can_act) for x in matches]
        if m is not None:
            for d in decisions:
                rule = d.match.rule
                m.rule_matches.labels(rule=rule.id, severity=rule.severity, mode=d.mode).inc()
        return decisions


def scan_once(tree: ProcessTree, judge: Judge, metrics: Metrics | None = None,
              clock: Callable[[], float] = time.time,
              on_event: Callable[[Event], None] | None = None) -> list[Decision]:
    """One procfs pass: read every process, judge those not yet judged."""
    started = time.monotonic()
    procs = tree.scan()
    now = clock()
    out: list[Decision] = []
    for p in procs:
        if judge.judged(p.id):
            continue  # skip building the event, not only judging it
        ev = tree.event("scan", p, now)
        out.extend(judge.judge(ev))
        if on_event is not None:
            on_event(ev)
    if metrics is not None:
        metrics.scan_duration.observe(time.monotonic() - started)
        metrics.processes.set(len(procs))
    return out
