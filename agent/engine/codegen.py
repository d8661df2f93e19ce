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
    """A compiled predicate, called as it is: `_k(ev)`."""

    fn: Predicate


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
    """The AND of `parts`, nested ANDs flattened."""
    flat: list[Expr] = []
    for p in parts:
        flat.extend(p.parts if isinstance(p, All) else (p,))
    return flat[0] if len(flat) == 1 else All(tuple(flat))


def some_of(parts: list[Expr]) -> Expr:
    """The OR of `parts`, nested ORs flattened."""
    flat: list[Expr] = []
    for p in parts:
        flat.extend(p.parts if isinstance(p, Some) else (p,))
    return flat[0] if len(flat) == 1 else Some(tuple(flat))


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


def _render_test(t: Test, names: _Names) -> str:
    a = t.access
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


def _compile(body: list[str], names: _Names) -> Predicate | None:
    src = "def check(ev):\n" + "".join(f"    {line}\n" for line in body)
    if len(src) > _MAX_SOURCE:
        return None
    try:
        code = compile(src, "<nodewarden rule>", "exec")
        exec(code, names.ns)  # noqa: S102 (schema text and generated names only)
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return None  # too deeply nested for the parser: the closures serve
    fn: Predicate = names.ns["check"]
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
