"""A compiled rule set and its evaluation (pure: events in, matches out).

Rules are bucketed by event kind, and within a kind indexed by the executable names their
conditions require, so an exec of `ls` never runs the miner or reverse-shell rules; only
rules the index cannot rule out are run, in file order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.engine.windows import Window
from agent.model import Event

Predicate = Callable[[Event], bool]


@dataclass(eq=False)
class Example:
    """A rule's example: events that must (or must not) make the rule fire."""

    line: int
    should_match: bool
    events: list[Event]


@dataclass(eq=False)
class Rule:
    """One compiled rule. `mode` is None when the rule follows the global mode."""

    id: str
    description: str
    severity: str
    action: str
    mode: str | None
    enabled: bool
    tags: tuple[str, ...]
    kinds: tuple[str, ...]
    predicate: Predicate
    exceptions: Predicate | None
    message: Callable[[Event], str]
    window: Window | None
    file: str
    line: int
    order: int
    # field attribute -> values one of which the process must have for the rule to match
    requirement: dict[str, frozenset[str]] | None = None
    examples: list[Example] = field(default_factory=list)

    def fires(self, ev: Event) -> bool:
        """Whether this rule matches `ev` (updating its window, if it has one)."""
        if not self.predicate(ev):
            return False
        if self.exceptions is not None and self.exceptions(ev):
            return False
        if self.window is not None:
            return self.window.observe(ev) is not None
        return True


@dataclass(eq=False, slots=True)
class Match:
    """A rule that fired on an event."""

    rule: Rule
    event: Event
    message: str


class _Bucket:
    """The rules of one event kind: those always run, and per-attribute name indexes."""

    __slots__ = ("always", "tables")

    def __init__(self) -> None:
        self.always: list[Rule] = []
        self.tables: list[tuple[str, dict[str, tuple[Rule, ...]]]] = []


class RuleSet:
    """Enabled rules compiled into per-kind buckets with name indexes."""

    def __init__(self, rules: Sequence[Rule], digest: str = "", sources: Sequence[str] = ()) -> None:
        self.all_rules = list(rules)
        self.rules = [r for r in rules if r.enabled]
        self.digest = digest
        self.sources = list(sources)
        self._buckets: dict[str, _Bucket] = {}
        for rule in self.rules:
            for kind in rule.kinds:
                self._add(self._buckets.setdefault(kind, _Bucket()), rule)
        for b in self._buckets.values():
            b.always.sort(key=_order)

    @staticmethod
    def _add(bucket: _Bucket, rule: Rule) -> None:
        if not rule.requirement:
            bucket.always.append(rule)
            return
        for attr, values in rule.requirement.items():
            table = next((t for a, t in bucket.tables if a == attr), None)
            if table is None:
                table = {}
                bucket.tables.append((attr, table))
            for v in values:
                table[v] = tuple(sorted({*table.get(v, ()), rule}, key=_order))

    def candidates(self, ev: Event) -> list[Rule]:
        """The rules that could match `ev`, in file order."""
        b = self._buckets.get(ev.kind)
        if b is None:
            return []
        p = ev.process
        hits: set[Rule] | None = None
        for attr, table in b.tables:
            found = table.get(getattr(p, attr))
            if found:
                if hits is None:
                    hits = set(found)
                else:
                    hits.update(found)
        if hits is None:
            return b.always
        hits.update(b.always)
        return sorted(hits, key=_order)

    def evaluate(self, ev: Event) -> list[Match]:
        """Every rule that fires on `ev`."""
        out: list[Match] = []
        for rule in self.candidates(ev):
            if rule.fires(ev):
                out.append(Match(rule, ev, rule.message(ev)))
        return out

    def reset_windows(self) -> None:
        for r in self.all_rules:
            if r.window is not None:
                r.window.reset()

    def __len__(self) -> int:
        return len(self.rules)


def _order(rule: Rule) -> int:
    return rule.order


def naive_evaluate(rules: Sequence[Rule], ev: Event) -> list[Match]:
    """Every enabled rule tried in turn, no index: the reference the benchmark compares to."""
    out = []
    for rule in rules:
        if rule.enabled and ev.kind in rule.kinds and rule.fires(ev):
            out.append(Match(rule, ev, rule.message(ev)))
    return out


def describe(rule: Rule) -> dict[str, Any]:
    return {"id": rule.id, "severity": rule.severity, "action": rule.action, "mode": rule.mode,
            "enabled": rule.enabled, "file": rule.file, "line": rule.line}
