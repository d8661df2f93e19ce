"""A compiled rule set and its evaluation (pure: events in, matches out).

Rules are bucketed by event kind, and within a kind indexed by the executable names their
conditions require, so an exec of `ls` never runs the miner or reverse-shell rules; only
rules the index cannot rule out are run, in file order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.engine import codegen
from agent.engine.schema import EXE_PREFIX_INDEX, NORM_NEEDLE_INDEX, cmdline_norm
from agent.engine.windows import Window
from agent.model import Event, EventKind, Process, Severity

if TYPE_CHECKING:
    from agent.engine.filewatch import Watch
    from agent.engine.kernel import KernelConnectSpec, KernelExecSpec

Predicate = Callable[[Event], bool]
# a rule's (predicate, exceptions, check) compiled; check None: `fires` serves
Compiled = tuple[Predicate, Predicate | None, Predicate | None]
# index key (a Process attribute, or EXE_DIR_INDEX) -> values one of which an event must
# have for a condition to hold; None when the index cannot rule anything out
Requirement = dict[str, frozenset[str]] | None


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
    severity: Severity
    action: str
    mode: str | None
    enabled: bool
    tags: tuple[str, ...]
    kinds: tuple[EventKind, ...]
    predicate: Predicate
    exceptions: Predicate | None
    message: Callable[[Event], str]
    window: Window | None
    file: str
    line: int
    order: int
    # what the rule index may use to skip this rule (see Requirement)
    requirement: Requirement = None
    # a rule on file events: the paths and names the kernel watches for it (filewatch.py)
    file_watches: tuple[Watch, ...] = ()
    examples: list[Example] = field(default_factory=list)
    # the kernel form when the BPF program can enforce the rule at exec
    kernel: KernelExecSpec | None = None
    # the kernel form of a connect rule the cgroup connect programs can refuse
    kernel_connect: KernelConnectSpec | None = None
    # makes (predicate, exceptions, check) compiled into single functions (codegen.py),
    # the same tests as the closures above; called on the rule's first event, so loading
    # (and `scan` start-up) pays no compiling for rules no event reaches
    compile: Callable[[], Compiled] | None = field(default=None, repr=False)
    # what evaluate calls: `fires`, or the predicate itself when there is nothing more to
    # it (no exceptions, no window); once compiled, `fires` as one function
    check: Predicate = field(init=False, repr=False)

    def __post_init__(self) -> None:
        plain = self.exceptions is None and self.window is None
        self.check = self.predicate if plain else self.fires
        if self.compile is not None:
            self.check = self._compile_then_check

    def _compile_then_check(self, ev: Event) -> bool:
        """The first check: compile, then check as compiled from now on (two threads
        racing here both compile the same functions; either result is right)."""
        assert self.compile is not None
        self.predicate, self.exceptions, check = self.compile()
        plain = self.exceptions is None and self.window is None
        self.check = check or (self.predicate if plain else self.fires)
        return self.check(ev)

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
    """The rules of one event kind: those always run, and indexes from a key of the event
    (comm, exe basename, argv0, the parent's, the executable's directories) to the rules
    that need it. Index entries are pre-merged with the always-run rules, so the usual event
    does a few dict lookups and iterates a ready tuple."""

    __slots__ = ("_unions", "always", "exe_prefixes", "indexed", "lookup", "needles",
                 "parent_tables", "prefix_hits", "proc_tables")

    def __init__(self) -> None:
        self.always: tuple[Rule, ...] = ()
        # (the Process attribute, its table)
        self.proc_tables: list[tuple[str, dict[str, tuple[Rule, ...]]]] = []
        self.parent_tables: list[tuple[str, dict[str, tuple[Rule, ...]]]] = []
        # candidates of an event, as one generated function (None: RuleSet.candidates')
        self.lookup: Callable[[Event], Sequence[Rule]] | None = None
        # whether any index can rule a rule out (else every event runs `always`)
        self.indexed = False
        # executable prefixes and their rules; all the prefixes, for one startswith
        self.prefix_hits: tuple[tuple[str, tuple[Rule, ...]], ...] = ()
        self.exe_prefixes: tuple[str, ...] = ()
        # needles of the normalised command line and their rules
        self.needles: tuple[tuple[str, tuple[Rule, ...]], ...] = ()
        # several index hits for one event: their union, cached by the hits' identities
        self._unions: dict[tuple[int, ...], tuple[Rule, ...]] = {}

    def text_hits(self, p: Process, hits: list[tuple[Rule, ...]]) -> None:
        """Add the hits of the executable's prefixes and the command line's needles."""
        if self.exe_prefixes:
            exe = p.exe
            if exe.startswith(self.exe_prefixes):
                for prefix, hit in self.prefix_hits:
                    if exe.startswith(prefix):
                        hits.append(hit)
        if self.needles:
            norm = cmdline_norm(p)
            for needle, hit in self.needles:
                if needle in norm:
                    hits.append(hit)

    def union(self, hits: list[tuple[Rule, ...]]) -> tuple[Rule, ...]:
        """The rules of several index hits, in file order (cached by the hits' identities,
        in the order the tables gave them: the same hits come in the same order)."""
        key = tuple(map(id, hits))
        found = self._unions.get(key)
        if found is None:
            merged: set[Rule] = set()
            for h in hits:
                merged.update(h)
            found = tuple(sorted(merged, key=_order))
            if len(self._unions) >= 4096:
                self._unions.clear()  # bounded; combinations seen again are rebuilt
            self._unions[key] = found
        return found


class RuleSet:
    """Enabled rules compiled into per-kind buckets with indexes."""

    def __init__(self, rules: Sequence[Rule], digest: str = "",
                 sources: Sequence[str] = ()) -> None:
        self.all_rules = list(rules)
        self.rules = [r for r in rules if r.enabled]
        self.digest = digest
        self.sources = list(sources)
        self._buckets: dict[str, _Bucket] = {}
        # keyed by the kinds' text (exact str): the dict's fastest lookup for any event kind
        for kind in {str(k) for r in self.rules for k in r.kinds}:
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
            if index == EXE_PREFIX_INDEX:
                b.prefix_hits = tuple(sorted(merged.items()))
                b.exe_prefixes = tuple(merged)
            elif index == NORM_NEEDLE_INDEX:
                b.needles = tuple(sorted(merged.items()))
            elif index.startswith("parent."):
                b.parent_tables.append((index[len("parent."):], merged))
            else:
                b.proc_tables.append((index, merged))
        b.indexed = bool(indexed)
        b.lookup = _lookup_function(b)
        return b

    def candidates(self, ev: Event) -> Sequence[Rule]:
        """The rules that could match `ev`, in file order."""
        b = self._buckets.get(ev.kind)
        if b is None:
            return ()
        if b.lookup is not None:
            return b.lookup(ev)
        if not b.indexed:
            return b.always
        hits: list[tuple[Rule, ...]] = []
        p = ev.process
        for attr, table in b.proc_tables:
            hit = table.get(getattr(p, attr))
            if hit is not None:
                hits.append(hit)
        if b.parent_tables and ev.ancestors:
            parent = ev.ancestors[0]
            for attr, table in b.parent_tables:
                hit = table.get(getattr(parent, attr))
                if hit is not None:
                    hits.append(hit)
        if b.exe_prefixes or b.needles:
            b.text_hits(p, hits)
        if not hits:
            return b.always
        first = hits[0]
        if len(hits) == 1 or all(h is first for h in hits):
            return first
        return b.union(hits)

    def evaluate(self, ev: Event) -> list[Match]:
        """Every rule that fires on `ev`."""
        return [Match(rule, ev, rule.message(ev)) for rule in self.candidates(ev) if rule.check(ev)]

    def reset_windows(self) -> None:
        """Forget the state of every window (a fresh start for `rules test`)."""
        for r in self.all_rules:
            if r.window is not None:
                r.window.reset()

    def __len__(self) -> int:
        return len(self.rules)


# the Process attributes an index may key (the schema's indexed fields)
_INDEX_ATTRS = frozenset({"comm", "exe_name", "argv0"})


def _lookup_function(b: _Bucket) -> Callable[[Event], Sequence[Rule]] | None:
    """`RuleSet.candidates` for bucket `b` as one function (codegen.py): its tables,
    prefixes and needles unrolled, each a constant by generated name; attribute names
    only from _INDEX_ATTRS. None when it cannot be (the loop serves)."""
    attrs = [a for a, _ in (*b.proc_tables, *b.parent_tables)]
    if not all(a in _INDEX_ATTRS for a in attrs):
        return None
    consts: dict[str, Any] = {"_always": b.always, "_union": b.union,
                              "_prefix_hits": b.prefix_hits, "_norm": cmdline_norm}
    body = ["p = ev.process", "hits = []"]
    for i, (attr, table) in enumerate(b.proc_tables):
        consts[f"_t{i}"] = table
        body += [f"h = _t{i}.get(p.{attr})", "if h is not None: hits.append(h)"]
    if b.parent_tables:
        body += ["a = ev.ancestors", "if a:", "    q = a[0]"]
        for i, (attr, table) in enumerate(b.parent_tables):
            consts[f"_u{i}"] = table
            body += [f"    h = _u{i}.get(q.{attr})", "    if h is not None: hits.append(h)"]
    if b.exe_prefixes:
        consts["_prefixes"] = b.exe_prefixes
        body += ["exe = p.exe", "if exe.startswith(_prefixes):",
                 "    for pre, h in _prefix_hits:",
                 "        if exe.startswith(pre): hits.append(h)"]
    if b.needles:
        body.append("n = _norm(p)")
        for i, (needle, hit) in enumerate(b.needles):
            consts[f"_n{i}"], consts[f"_h{i}"] = needle, hit
            body.append(f"if _n{i} in n: hits.append(_h{i})")
    body += ["if not hits: return _always", "if len(hits) == 1: return hits[0]",
             "return _union(hits)"]
    return codegen.source_function(body, consts)


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
    """A rule as `rules list --json` shows it."""
    return {"id": rule.id, "severity": rule.severity, "action": rule.action, "mode": rule.mode,
            "enabled": rule.enabled, "file": rule.file, "line": rule.line}
