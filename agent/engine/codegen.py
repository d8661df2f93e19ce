"""A rule's condition compiled into one Python function.

The condition compiler (conditions.py) gives every condition a closure, and also this
form of it: a tree of `All`/`Some`/`Not` over `Test`s (a field's access, an operator, a
constant) and `Call`s (a closure kept as it is). `function` renders the tree as one
expression and compiles it, so an event is judged in one frame with direct attribute
access (`ev.process.comm in _k1`) instead of a chain of lambdas, getters and tests, each
a Python call (3-6x fewer calls per rule).

What goes into the source text: the schema's access expressions (schema.Field.expr: fixed
text over `ev`), the operator templates below, and generated names `_k<n>` for the
constants. Nothing of a rule file's text is ever in it: values (names, prefixes,
compiled regexes, closures) are bound in the function's globals under those names.
Anything the generator cannot render, or a source too large to compile, keeps its
closure: the function is a speed-up, never a second meaning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.engine.schema import EXPR_GLOBALS
from agent.model import Event

Predicate = Callable[[Event], bool]

# the values `exists: false` holds for
EMPTY: tuple[Any, ...] = (None, "", (), [])

# a rendered source longer than this is not compiled (its closure serves)
_MAX_SOURCE = 200_000


class Expr:
    """A condition in the form the generator renders."""

    __slots__ = ()


@dataclass(frozen=True, eq=False)
class Call(Expr):
    """A compiled predicate, called as it is: `_k(ev)`. `reads`: the names of the fields
    it tests (verdicts.py keys remembered answers by them); None when not known."""

    fn: Predicate
    reads: tuple[str, ...] | None = None


@dataclass(frozen=True, eq=False)
class Test(Expr):
    """A value test of one field: `access` is the schema's expression of the field's
    value (None when it has none), `op` one of the templates of `_render_test`."""

    access: str
    op: str
    value: Any


@dataclass(frozen=True, eq=False)
class All(Expr):
    """Every part holds (stops at the first that does not)."""

    parts: tuple[Expr, ...]


@dataclass(frozen=True, eq=False)
class Some(Expr):
    """One of the parts holds (stops at the first that does)."""

    parts: tuple[Expr, ...]


@dataclass(frozen=True, eq=False)
class Not(Expr):
    """The part does not hold."""

    part: Expr


def all_of(parts: list[Expr]) -> Expr:
    """The AND of `parts`, nested ANDs flattened, dear parts last (`_dear_last`)."""
    flat: list[Expr] = []
    for p in parts:
        flat.extend(p.parts if isinstance(p, All) else (p,))
    return flat[0] if len(flat) == 1 else All(_dear_last(flat))


def some_of(parts: list[Expr]) -> Expr:
    """The OR of `parts`, nested ORs flattened, dear parts last (`_dear_last`)."""
    flat: list[Expr] = []
    for p in parts:
        flat.extend(p.parts if isinstance(p, Some) else (p,))
    return flat[0] if len(flat) == 1 else Some(_dear_last(flat))


# what a test costs, roughly, by template: one C-level lookup is 1; a test of each element
# of a list, a regex or a closure's calls cost more
_OP_COST = {"in": 1.0, "is": 1.0, "exists": 1.0, "startswith": 2.0, "endswith": 2.0,
            "disjoint": 3.0, "contains": 1.0, "any": 6.0, "call": 8.0}
# field values made on demand (a join, a normal form, a slice): their making costs too
_DEAR_ACCESS = ("cmdline_str", "_d_", ".args", "ev.ancestors")


# a part costing this much or more runs after the cheaper parts of its AND or OR
_DEAR = 6.0


def _dear_last(parts: list[Expr]) -> tuple[Expr, ...]:
    """`parts` with the dear ones (a test of every element of a list, a regex, a closure)
    moved after the others, each group in the rule's order. The parts of an AND or an OR
    are pure tests of one event, so the order they run in changes no answer, only its
    cost; the rule's own order is kept otherwise, as it says which test is selective."""
    return (*(p for p in parts if cost(p) < _DEAR), *(p for p in parts if cost(p) >= _DEAR))


def cost(e: Expr) -> float:
    """A rough cost of evaluating `e` once."""
    if isinstance(e, Test):
        c = _OP_COST.get(e.op, 8.0)
        if e.op == "contains":
            c += 0.5 * len(e.value)
        return c + (1.0 if any(d in e.access for d in _DEAR_ACCESS) else 0.0)
    if isinstance(e, (All, Some)):
        return sum(cost(p) for p in e.parts)
    if isinstance(e, Not):
        return cost(e.part)
    return 10.0  # a Call: a closure, with its own calls inside


class _Names:
    """Constants by generated name (each distinct object once)."""

    def __init__(self) -> None:
        self.ns: dict[str, Any] = dict(EXPR_GLOBALS)
        self._by_id: dict[int, str] = {}

    def of(self, value: Any) -> str:
        name = self._by_id.get(id(value))
        if name is None:
            name = f"_k{len(self._by_id)}"
            self._by_id[id(value)] = name
            self.ns[name] = value
        return name

    def access(self, text: str) -> str:
        """How the source reads a field's value (`_Shared`: at most once per event)."""
        return text

    def shared(self, e: Expr) -> str | None:
        """The local that holds `e`'s answer once known, if several rules ask it."""
        return None


def _render_test(t: Test, names: _Names) -> str:
    a = names.access(t.access)
    if t.op == "in":  # Members: `None in` a set of strings or integers is False
        return f"({a} in {names.of(t.value)})"
    if t.op == "is":  # a boolean: `None is True` is False
        return f"({a} is {names.of(t.value)})"
    if t.op == "disjoint":  # a list field against Members
        return f"((_v := {a}) is not None and not {names.of(t.value)}.isdisjoint(_v))"
    if t.op == "contains":
        needles = " or ".join(f"{names.of(n)} in _v" for n in t.value)
        return f"((_v := {a}) is not None and ({needles}))"
    if t.op in ("startswith", "endswith"):
        return f"((_v := {a}) is not None and _v.{t.op}({names.of(t.value)}))"
    if t.op == "exists":  # value is the wanted bool
        return f"(({a} not in {names.of(EMPTY)}) == {names.of(t.value)})"
    if t.op == "any":  # a list field: any element passes (the test in C via map)
        return f"((_v := {a}) is not None and any(map({names.of(t.value)}, _v)))"
    if t.op == "call":
        return f"((_v := {a}) is not None and {names.of(t.value)}(_v))"
    raise ValueError(f"no template for {t.op!r}")  # pragma: no cover


def _render(e: Expr, names: _Names) -> str:
    memo = names.shared(e)
    if memo is not None:
        return _once(memo, _render_part(e, names))
    return _render_part(e, names)


def _once(local: str, text: str) -> str:
    """`text`'s value, computed on the first use in a call and kept in `local` (which starts
    as _U, a value no field or test gives)."""
    return f"({local} if {local} is not _U else ({local} := {text}))"


def _render_part(e: Expr, names: _Names) -> str:
    if isinstance(e, Test):
        return _render_test(e, names)
    if isinstance(e, All):
        return "(" + " and ".join(_render(p, names) for p in e.parts) + ")"
    if isinstance(e, Some):
        return "(" + " or ".join(_render(p, names) for p in e.parts) + ")"
    if isinstance(e, Not):
        return f"(not {_render(e.part, names)})"
    assert isinstance(e, Call)
    return f"{names.of(e.fn)}(ev)"


def _compile(body: list[str], names: _Names) -> Callable[[Event], Any] | None:
    src = "def check(ev):\n" + "".join(f"    {line}\n" for line in body)
    if len(src) > _MAX_SOURCE:
        return None
    try:
        code = compile(src, "<nodewarden rule>", "exec")
        exec(code, names.ns)  # noqa: S102 (schema text and generated names only)
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return None  # too deeply nested for the parser: the closures serve
    fn: Callable[[Event], Any] = names.ns["check"]
    return fn


def source_function(body: list[str], consts: dict[str, Any]) -> Callable[..., Any] | None:
    """`def check(ev): BODY` compiled with `consts` as its globals (generated names only);
    None when it cannot be."""
    names = _Names()
    names.ns.update(consts)
    return _compile(body, names)


def function(e: Expr, fallback: Predicate) -> Predicate:
    """`e` as one compiled function, or `fallback` (its closure) if it cannot be."""
    if isinstance(e, Call):
        return e.fn
    names = _Names()
    try:
        text = _render(e, names)
    except RecursionError:
        return fallback
    return _compile([f"return {text}"], names) or fallback


def rule_check(match: Expr, exceptions: Expr | None,
               observe: Callable[[Event], Any] | None) -> Predicate | None:
    """What `Rule.fires` does, as one function: the match, then no exception, then the
    window's count (`observe` is the window's, None without one). None when it cannot be
    compiled (`fires` serves)."""
    names = _Names()
    try:
        body = [f"if not {_render(match, names)}: return False"]
        if exceptions is not None:
            body.append(f"if {_render(exceptions, names)}: return False")
    except RecursionError:
        return None
    body.append(f"return {names.of(observe)}(ev) is not None" if observe is not None
                else "return True")
    return _compile(body, names)


# -- the rules of one candidate set in one function ---------------------------------------

# what a shared local holds until its value is known (no field or test gives it)
_UNKNOWN = object()
# tests cheaper to repeat than to keep (one C-level membership or identity test)
_CHEAP_OPS = frozenset({"in", "is", "exists"})


@dataclass(frozen=True, eq=False)
class RuleForm:
    """One rule as `set_function` judges it: what a firing appends (the rule), its match
    and exceptions as Exprs (match None: `check` serves), its window's `observe`, and its
    own check (for a rule whose form cannot be rendered)."""

    rule: Any
    match: Expr | None
    exceptions: Expr | None
    observe: Callable[[Event], Any] | None
    check: Predicate


class _Shared(_Names):
    """Names for the rules of one set judged in one function: the event's process in a
    local, and each field value and sub-condition that several of them use (a macro is
    one Expr object shared by the rules that use it) computed at most once per event."""

    def __init__(self, exprs: list[Expr]) -> None:
        super().__init__()
        self.ns["_U"] = _UNKNOWN
        accesses: dict[str, int] = {}
        nodes: dict[int, int] = {}
        seen: dict[int, Expr] = {}
        for e in exprs:
            _count(e, accesses, nodes, seen)
        self._access = {a: f"_f{i}" for i, a in
                        enumerate(a for a, n in accesses.items() if n > 1)}
        self._nodes = {i: f"_m{n}" for n, i in
                       enumerate(i for i, n in nodes.items() if n > 1)}
        self.locals = [*self._access.values(), *self._nodes.values()]

    def access(self, text: str) -> str:
        text = _local_process(text)
        local = self._access.get(text)
        return _once(local, text) if local is not None else text

    def shared(self, e: Expr) -> str | None:
        return self._nodes.get(id(e))


def _local_process(access: str) -> str:
    """A schema access expression over the local `_p` (the event's process) instead of
    `ev.process` (fixed schema text, rewritten the same way every time)."""
    return access.replace("ev.process", "_p")


def _count(e: Expr, accesses: dict[str, int], nodes: dict[int, int],
           seen: dict[int, Expr]) -> None:
    """Count the uses of each sub-condition (by identity) and of each field access. A node
    met again is counted, not walked again: its parts run once inside its shared answer."""
    key = id(e)
    if key in seen:
        if key in nodes:
            nodes[key] += 1
        return
    seen[key] = e
    if not (isinstance(e, Test) and e.op in _CHEAP_OPS):
        nodes[key] = 1
    if isinstance(e, Test):
        a = _local_process(e.access)
        accesses[a] = accesses.get(a, 0) + 1
    elif isinstance(e, (All, Some)):
        for p in e.parts:
            _count(p, accesses, nodes, seen)
    elif isinstance(e, Not):
        _count(e.part, accesses, nodes, seen)


def set_function(forms: list[RuleForm]) -> Callable[[Event], list[Any]] | None:
    """One function judging every rule of `forms` in their order, returning the `rule` of
    each that fires: each rule's match, then its exceptions, then its window, as `fires`
    does, with what the rules share computed once. None when it cannot be compiled (the
    rules' own checks serve)."""
    names = _Shared([x for f in forms for x in (f.match, f.exceptions) if x is not None])
    body = ["_p = ev.process", "_out = []"]
    if names.locals:
        body.insert(1, " = ".join([*names.locals, "_U"]))
    for f in forms:
        try:
            cond = _rule_condition(f, names)
        except RecursionError:
            cond = f"{names.of(f.check)}(ev)"
        body.append(f"if {cond}: _out.append({names.of(f.rule)})")
    body.append("return _out")
    return _compile(body, names)


def _rule_condition(f: RuleForm, names: _Names) -> str:
    if f.match is None:
        return f"{names.of(f.check)}(ev)"
    cond = _render(f.match, names)
    if f.exceptions is not None:
        cond += f" and not {_render(f.exceptions, names)}"
    if f.observe is not None:
        cond += f" and {names.of(f.observe)}(ev) is not None"
    return cond
