"""A compiled rule set and its evaluation (pure: events in, matches out).

Rules are bucketed by event kind, and within a kind indexed by what their conditions
require (executable names, executable prefixes, substrings of the command line, a cut
command line), so an exec of `ls` never runs the miner or reverse-shell rules; only rules
the index cannot rule out are run, in file order. The rules one event leaves to run (a
candidate set: a few dozen distinct ones on a busy node) are judged by one generated
function per set, which computes what its rules share (the command line's forms, a
macro's answer) once per event.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.engine.indexkeys import (
    EXE_PREFIX_INDEX,
    NORM_NEEDLE_INDEX,
    TRUNCATED,
    TRUNCATED_INDEX,
    cmdline_norm,
)
from agent.model import PROCESS_KINDS, Event, EventKind, Process, Severity

# codegen.py and verdicts.py (and the schema they read) are imported where a bucket first
# needs them: a rule set recalled by `scan` (setcache.py) may judge nothing
if TYPE_CHECKING:
    from agent.engine import codegen, verdicts
    from agent.engine.filewatch import Watch
    from agent.engine.kernel import KernelConnectSpec, KernelExecSpec
    from agent.engine.windows import Window

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
    # the match and exceptions as codegen forms: the candidate set an event selects judges
    # its rules in one function made of them (codegen.set_function); None: `check` serves
    forms: tuple[codegen.Expr, codegen.Expr | None] | None = field(default=None, repr=False)
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

    if not TYPE_CHECKING:  # (mypy would take any attribute of a Rule for a real one)
        def __getattr__(self, name: str) -> Any:
            """A rule recalled from setcache.py holds its own facts only (id, kinds, what
            the index may use, ...): anything else (its conditions, message, window,
            `check`) is compiled, for the whole set, the first time it is asked for."""
            pending = self.__dict__.get("_pending")
            if pending is None or name.startswith("__"):
                raise AttributeError(name)
            pending()
            return object.__getattribute__(self, name)

    def recalled(self) -> bool:
        """Whether this rule was recalled from setcache.py and is not compiled yet."""
        return "_pending" in self.__dict__

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


# a candidate set judges its rules in one generated function from its COMPILE_AFTER-th
# event on (a set seen once, as some rare combination of index hits, is never compiled);
# at most MAX_UNION_FUNCTIONS sets made of several hits have one at a time (bounded
# memory and compiling, whatever command lines a workload makes up)
COMPILE_AFTER = 3
MAX_UNION_FUNCTIONS = 512
_UNIONS_MAX = 4096


def _nothing(ev: Event) -> Sequence[Rule]:
    return ()


class _Set:
    """Rules that could match an event, in file order, and what judges them: each rule's
    check at first, then one function (codegen.set_function) that judges them all with
    what they share (the command line, a macro's answer) computed once per event."""

    __slots__ = ("_owner", "_uses", "rules", "run")

    def __init__(self, rules: tuple[Rule, ...], owner: _Bucket | None = None) -> None:
        self.rules = rules
        # the bucket whose budget of union functions this set draws on (None: no limit)
        self._owner = owner
        self._uses = 0
        # the rules of `rules` that fire on an event, in file order
        self.run: Callable[[Event], Sequence[Rule]] = self._counted if rules else _nothing

    def each(self, ev: Event) -> list[Rule]:
        """The rules that fire, each by its own check."""
        return [r for r in self.rules if r.check(ev)]

    def _counted(self, ev: Event) -> Sequence[Rule]:
        self._uses += 1
        if self._uses >= COMPILE_AFTER:
            self.run = self._function()
        return self.each(ev)

    def _function(self) -> Callable[[Event], Sequence[Rule]]:
        owner = self._owner
        if owner is not None:
            if owner.union_functions >= MAX_UNION_FUNCTIONS:
                return self.each
            owner.union_functions += 1
        from agent.engine import codegen
        return codegen.set_function([_form(r) for r in self.rules]) or self.each


def _form(rule: Rule) -> codegen.RuleForm:
    from agent.engine import codegen
    match, exceptions = rule.forms or (None, None)
    return codegen.RuleForm(rule, match, exceptions,
                            rule.window.observe if rule.window is not None else None,
                            lambda ev: rule.check(ev))


class _Bucket:
    """The rules of one event kind: those always run, and indexes from a key of the event
    (comm, exe basename, argv0, the parent's, the executable's prefixes, the command line's
    needles, a cut command line) to the rules that need it. Index entries are pre-merged
    with the always-run rules, so the usual event does a few dict lookups and runs a ready
    set."""

    __slots__ = ("_sets", "_unions", "always", "exe_prefixes", "fired", "indexed", "lookup",
                 "needles", "parent_tables", "prefix_hits", "proc_tables", "truncated",
                 "union_functions", "verdicts")

    def __init__(self) -> None:
        self._sets: dict[tuple[Rule, ...], _Set] = {}
        self.always = self.set_of(())
        # (the Process attribute, its table)
        self.proc_tables: list[tuple[str, dict[str, _Set]]] = []
        self.parent_tables: list[tuple[str, dict[str, _Set]]] = []
        # candidates of an event, as one generated function (None: RuleSet.candidate_set's)
        self.lookup: Callable[[Event], _Set] | None = None
        # whether any index can rule a rule out (else every event runs `always`)
        self.indexed = False
        # executable prefixes and their rules; all the prefixes, for one startswith
        self.prefix_hits: tuple[tuple[str, _Set], ...] = ()
        self.exe_prefixes: tuple[str, ...] = ()
        # needles of the normalised command line and their rules
        self.needles: tuple[tuple[str, _Set], ...] = ()
        # the rules of a process whose command line was cut
        self.truncated: _Set | None = None
        # several index hits for one event: their union, cached by the hits' identities;
        # how many of those have a function now
        self._unions: dict[tuple[int, ...], _Set] = {}
        self.union_functions = 0
        # the rules that fire on an event: `judged`, or its answers remembered by what the
        # rules read (verdicts.py; `remember`), which `verdicts` holds
        self.fired: Callable[[Event], Sequence[Rule]] = self.judged
        self.verdicts: verdicts.Store | None = None

    def judged(self, ev: Event) -> Sequence[Rule]:
        """The rules that fire on `ev`: its candidate set's, judged."""
        s = self.lookup(ev) if self.lookup is not None else RuleSet._candidate_set(self, ev)
        return s.run(ev)

    def remember(self, rules: Sequence[Rule]) -> None:
        """Remember answers by what `rules` (this kind's) read, when they can be."""
        from agent.engine import verdicts
        store = verdicts.Store()
        fired = verdicts.remembering(rules, self.judged, store)
        if fired is not None:
            self.fired, self.verdicts = fired, store

    def set_of(self, rules: tuple[Rule, ...]) -> _Set:
        """The one set of these rules (index entries with the same rules share it)."""
        found = self._sets.get(rules)
        if found is None:
            found = self._sets[rules] = _Set(rules)
        return found

    def text_hits(self, p: Process, hits: list[_Set]) -> None:
        """Add the hits of the executable's prefixes, the command line's needles and a cut
        command line."""
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
        if self.truncated is not None and p.cmdline_cut:
            hits.append(self.truncated)

    def union(self, hits: list[_Set]) -> _Set:
        """The rules of several index hits, in file order (cached by the hits' identities,
        in the order the tables gave them: the same hits come in the same order)."""
        key = tuple(map(id, hits))
        found = self._unions.get(key)
        if found is None:
            merged: set[Rule] = set()
            for h in hits:
                merged.update(h.rules)
            rules = tuple(sorted(merged, key=_order))
            if len(self._unions) >= _UNIONS_MAX:
                self._unions.clear()  # bounded; combinations seen again are rebuilt
                self.union_functions = 0
            # the same rules as an index entry (a name and its exe basename): that entry
            found = self._unions[key] = self._sets.get(rules) or _Set(rules, self)
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
        # a set recalled from setcache.py (`scan`) builds each kind's bucket on its first
        # event: the index and what remembering reads are not needed before
        recalled = any(r.recalled() for r in self.rules)
        # keyed by the kinds' text (exact str): the dict's fastest lookup for any event kind
        for kind in {str(k) for r in self.rules for k in r.kinds}:
            rules_of = [r for r in self.rules if kind in r.kinds]
            self._buckets[kind] = (self._unbuilt(kind, rules_of) if recalled
                                   else self._built(kind, rules_of))

    def _built(self, kind: str, rules: list[Rule]) -> _Bucket:
        b = self._bucket(rules)
        if kind in PROCESS_KINDS:  # a program's execs repeat; file paths, addresses less
            b.remember(rules)
        return b

    def _unbuilt(self, kind: str, rules: list[Rule]) -> _Bucket:
        """A stand-in for the bucket of `kind` that builds it, and takes its place, on the
        first event (two threads racing here build two equal buckets; either serves)."""
        b = _Bucket()

        def build() -> _Bucket:
            built = self._buckets[kind] = self._built(kind, rules)
            return built

        b.fired = lambda ev: build().fired(ev)
        b.lookup = lambda ev: _looked_up(build(), ev)
        return b

    @staticmethod
    def _bucket(rules: list[Rule]) -> _Bucket:
        b = _Bucket()
        always = tuple(r for r in rules if not r.requirement)
        b.always = b.set_of(always)
        indexed: dict[str, dict[str, set[Rule]]] = {}
        for r in rules:
            for index, values in (r.requirement or {}).items():
                table = indexed.setdefault(index, {})
                for v in values:  # (no throwaway set per value, as setdefault would make)
                    hits = table.get(v)
                    if hits is None:
                        table[v] = {r}
                    else:
                        hits.add(r)
        for index, table in indexed.items():
            merged = _merged(b, table, always)
            if index == EXE_PREFIX_INDEX:
                b.prefix_hits = tuple(sorted(merged.items()))
                b.exe_prefixes = tuple(merged)
            elif index == NORM_NEEDLE_INDEX:
                b.needles = tuple(sorted(merged.items()))
            elif index == TRUNCATED_INDEX:
                b.truncated = merged.get(TRUNCATED)
            elif index.startswith("parent."):
                b.parent_tables.append((index[len("parent."):], merged))
            else:
                b.proc_tables.append((index, merged))
        b.indexed = bool(indexed)
        b.lookup = _first_lookup(b)  # generated on the first event: `scan` may need none
        return b

    def candidates(self, ev: Event) -> Sequence[Rule]:
        """The rules that could match `ev`, in file order."""
        b = self._buckets.get(ev.kind)
        if b is None:
            return ()
        return (b.lookup(ev) if b.lookup is not None else self._candidate_set(b, ev)).rules

    @staticmethod
    def _candidate_set(b: _Bucket, ev: Event) -> _Set:
        """`b.lookup` as a loop over the tables."""
        if not b.indexed:
            return b.always
        hits: list[_Set] = []
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
        b.text_hits(p, hits)
        if not hits:
            return b.always
        first = hits[0]
        if len(hits) == 1 or all(h is first for h in hits):
            return first
        return b.union(hits)

    def evaluate(self, ev: Event) -> list[Match]:
        """Every rule that fires on `ev`."""
        b = self._buckets.get(ev.kind)
        if b is None:
            return []
        fired = b.fired(ev)
        if not fired:
            return []
        return [Match(rule, ev, rule.message(ev)) for rule in fired]

    def remembered(self) -> list[verdicts.Store]:
        """The stores of remembered answers, one per kind that has one (cache metrics)."""
        return [b.verdicts for b in self._buckets.values() if b.verdicts is not None]

    def reset_windows(self) -> None:
        """Forget the state of every window (a fresh start for `rules test`)."""
        for r in self.all_rules:
            if r.window is not None:
                r.window.reset()

    def __len__(self) -> int:
        return len(self.rules)


# the Process attributes an index may key (the schema's indexed fields)
_INDEX_ATTRS = frozenset({"comm", "exe_name", "argv0"})


def _merged(b: _Bucket, table: dict[str, set[Rule]], always: tuple[Rule, ...]
            ) -> dict[str, _Set]:
    """Each key's rules with the always-run ones, in file order, as `b`'s shared sets; the
    many keys of one list (names of miners, shells) share one set, sorted once."""
    by_rules: dict[frozenset[Rule], _Set] = {}
    merged: dict[str, _Set] = {}
    for key, hits in table.items():
        rules = frozenset(hits)
        found = by_rules.get(rules)
        if found is None:
            found = by_rules[rules] = b.set_of(tuple(sorted(rules.union(always), key=_order)))
        merged[key] = found
    return merged


def _looked_up(b: _Bucket, ev: Event) -> _Set:
    return b.lookup(ev) if b.lookup is not None else RuleSet._candidate_set(b, ev)


def _first_lookup(b: _Bucket) -> Callable[[Event], _Set]:
    """`b.lookup` until the first event of its kind: makes the generated function (or None:
    the loop serves from then on), puts it in place and answers with it. Compiling it is
    most of what building the index costs, and a command that judges nothing of a kind
    (`scan` of an empty procfs, `rules check`) never pays it. Two threads racing here both
    make the same function; either is right."""

    def first(ev: Event) -> _Set:
        b.lookup = lookup = _lookup_function(b)
        return lookup(ev) if lookup is not None else RuleSet._candidate_set(b, ev)

    return first


def _lookup_function(b: _Bucket) -> Callable[[Event], _Set] | None:
    """`RuleSet._candidate_set` for bucket `b` as one function (codegen.py): its tables,
    prefixes and needles unrolled, each a constant by generated name; attribute names
    only from _INDEX_ATTRS. None when it cannot be (the loop serves)."""
    attrs = [a for a, _ in (*b.proc_tables, *b.parent_tables)]
    if not all(a in _INDEX_ATTRS for a in attrs):
        return None
    consts: dict[str, Any] = {"_always": b.always, "_union": b.union,
                              "_prefix_hits": b.prefix_hits, "_norm": cmdline_norm,
                              "_truncated": b.truncated}
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
    if b.truncated is not None:
        body.append("if p.cmdline_cut: hits.append(_truncated)")
    body += ["if not hits: return _always", "if len(hits) == 1: return hits[0]",
             "return _union(hits)"]
    from agent.engine import codegen
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
