"""A compiled rule set and its evaluation (pure: events in, matches out).

Rules are bucketed by event kind, and within a kind indexed by the executable names their
conditions require, so an exec of `ls` never runs the miner or reverse-shell rules; only
rules the index cannot rule out are run, in file order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.engine.schema import INDEX_KEYS
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
    """The rules of one event kind: those always run, and per-key indexes whose entries are
    pre-merged with the always-run rules, so the usual event does one dict lookup per index
    and iterates a ready tuple."""

    __slots__ = ("always", "tables")

    def __init__(self) -> None:
        self.always: tuple[Rule, ...] = ()
        self.tables: list[tuple[Callable[[Event], Any], dict[str, tuple[Rule, ...]]]] = []


class RuleSet:
    """Enabled rules compiled into per-kind buckets with name indexes."""

    def __init__(self, rules: Sequence[Rule], digest: str = "", sources: Sequence[str] = ()) -> None:
        self.all_rules = list(rules)
        self.rules = [r for r in rules if r.enabled]
        self.digest = digest
        self.sources = list(sources)
        self._buckets: dict[str, _Bucket] = {}
        for kind in {k for r in self.rules for k in r.kinds}:
            self._buckets[kind] = self._bucket([r for r in self.rules if kind in r.kinds])

    @staticmethod
    def _bucket(rules: list[Rule]) -> _Bucket:
        b = _Bucket()
        b.always = tuple(r for r in rules if not r.requirement)
        indexed: dict[str, dict[str, set[Rule]]] = {}
        for r in rules:
            for index, values in (r.requirement or {}).items():
                table = indexed.setdefault(index, {})
                for v in values:
                    table.setdefault(v, set()).add(r)
        for index, table in indexed.items():
            merged = {k: tuple(sorted(hits.union(b.always), key=_order))
                      for k, hits in table.items()}
            b.tables.append((INDEX_KEYS[index], merged))
        return b

    def candidates(self, ev: Event) -> Sequence[Rule]:
        """The rules that could match `ev`, in file order."""
        b = self._buckets.get(ev.kind)
        if b is None:
            return ()
        found: tuple[Rule, ...] | None = None
        union: set[Rule] | None = None
        for keys, table in b.tables:
            for key in keys(ev):
                hit = table.get(key)
                if hit is None or hit is found:
                    continue
                if found is None:
                    found = hit
                elif union is None:
                    union = set(found)
                    union.update(hit)
                else:
                    union.update(hit)
        if union is not None:
            return sorted(union, key=_order)
        return found if found is not None else b.always

    def evaluate(self, ev: Event) -> list[Match]:
        """Every rule that fires on `ev`."""
        return [Match(rule, ev, rule.message(ev)) for rule in self.candidates(ev) if rule.fires(ev)]

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
