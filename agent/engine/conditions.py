"""Conditions to predicates: `all`, `any`, `not`, macros and field tests, and what the rule
index may use.

Each condition compiles, once, into a predicate `Event -> bool` and a requirement: the
index keys (comm, exe basename, executable directory, ...) one of which an event must have
for the condition to hold, or None when the index cannot rule anything out. Combinators
are the innermost loop of the engine: short ones are unrolled lambdas, which cost a
fraction of a generator passed to all()/any().
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import methodcaller
from typing import Any

from agent.engine import codegen, yamlsrc
from agent.engine.codegen import Expr
from agent.engine.definitions import Definitions
from agent.engine.operators import Members, form_of, value_test
from agent.engine.problems import Problems, Skip, suggest, type_name
from agent.engine.ruleset import Predicate, Requirement
from agent.engine.schema import (
    EXE_PREFIX_INDEX,
    NORM_NEEDLE_INDEX,
    OPERATORS,
    TRUNCATED,
    TRUNCATED_INDEX,
    Field,
    field,
    field_names,
    normalise,
)
from agent.model import COMM_LEN, Event

COMBINATORS = ("all", "any", "not", "macro")

# a condition's closure, what the index may use, and its form for codegen.py
Compiled = tuple[Predicate, Requirement, Expr]


def _never(ev: Event) -> bool:
    return False


_BROKEN: Compiled = (_never, None, codegen.Call(_never, reads=()))


class ConditionCompiler:
    """Compiles the conditions of one rule set; macros are compiled once and shared."""

    def __init__(self, problems: Problems, defs: Definitions) -> None:
        self.problems = problems
        self.defs = defs
        self._macros: dict[str, Compiled] = {}

    def condition(self, node: Any, line: int, macro_stack: tuple[str, ...] = ()) -> Compiled:
        """Compile a condition mapping: every key is a term, and the mapping is their AND."""
        if not isinstance(node, yamlsrc.Node) or not node:
            raise self.problems.fail(getattr(node, "line", line),
                                     "a condition must be a non-empty mapping such as "
                                     "{proc.name: {in: [xmrig]}} or {any: [...]}, not "
                                     + type_name(node))
        terms: list[Compiled] = []
        skipped = False
        for key, value in node.items():
            try:
                terms.append(self._term(str(key), value, node.line_of(key), macro_stack))
            except Skip:
                skipped = True
        if skipped:
            raise Skip()
        return all_of(terms)

    def conditions(self, block: yamlsrc.Seq, macro_stack: tuple[str, ...] = ()) -> list[Compiled]:
        """Each condition of a list, every one reported before a Skip is raised."""
        out: list[Compiled] = []
        bad = False
        for i, sub in enumerate(block):
            try:
                out.append(self.condition(sub, block.line_of(i), macro_stack))
            except Skip:
                bad = True
        if bad:
            raise Skip()
        return out

    def _term(self, key: str, value: Any, line: int, macro_stack: tuple[str, ...]) -> Compiled:
        if key in ("all", "any"):
            if not isinstance(value, yamlsrc.Seq) or not value:
                raise self.problems.fail(line, f"'{key}' takes a non-empty list of conditions")
            subs = self.conditions(value, macro_stack)
            return all_of(subs) if key == "all" else any_of(subs)
        if key == "not":
            pred, _, expr = self.condition(value, line, macro_stack)
            return (lambda ev: not pred(ev)), None, codegen.Not(expr)
        if key == "macro":
            return self.macro(value, line, macro_stack)
        fld = field(key)
        if fld is None:
            raise self.problems.fail(line, f"unknown field '{key}'"
                                           f"{suggest(key, [*field_names(), *COMBINATORS])}; "
                                           f"fields are listed in rules/README.md")
        return self._field_test(fld, value, line)

    def check_macros(self) -> None:
        """Compile every macro once, so a broken macro is reported even if no rule uses it."""
        for name, (_, _, line) in list(self.defs.macros.items()):
            self.problems.rule_id = ""
            try:
                self.macro(name, line, ())
            except Skip:
                self._macros[name] = _BROKEN

    def macro(self, name: Any, line: int, stack: tuple[str, ...]) -> Compiled:
        """The compiled condition of macro `name` (compiled at its own file and line)."""
        macros = self.defs.macros
        if not isinstance(name, str):
            raise self.problems.fail(line, "'macro' takes the name of a macro")
        if name not in macros:
            raise self.problems.fail(line, f"unknown macro '{name}'{suggest(name, macros)}; "
                                           f"define it under 'macros:'")
        if name in stack:
            raise self.problems.fail(line, f"macro cycle: {' -> '.join((*stack, name))}; a "
                                           f"macro cannot use itself")
        cached = self._macros.get(name)
        if cached is not None:
            if cached is _BROKEN:
                raise Skip()  # already reported where the macro is defined
            return cached
        node, mfile, mline = macros[name]
        saved = self.problems.file
        self.problems.file = mfile
        try:
            compiled = self.condition(node, mline, (*stack, name))
        finally:
            self.problems.file = saved
        self._macros[name] = compiled
        return compiled

    def _field_test(self, fld: Field, spec: Any, line: int) -> Compiled:
        if isinstance(spec, yamlsrc.Node):
            if not spec:
                raise self.problems.fail(line, f"'{fld.name}' needs an operator, e.g. "
                                               f"{{equals: ...}}")
            ops = list(spec.items())
        elif isinstance(spec, list) or (isinstance(spec, str) and spec.startswith("$")):
            ops = [("in", spec)]
        else:
            ops = [("equals", spec)]
        valid = OPERATORS[fld.type]
        terms: list[Compiled] = []
        for op, arg in ops:
            op = str(op)
            if op not in valid:
                raise self.problems.fail(line, f"operator '{op}' does not apply to {fld.name} "
                                               f"({fld.type}){suggest(op, valid)}; use one of "
                                               f"{', '.join(valid)}")
            pred, expr = self._predicate(fld, op, arg, line)
            terms.append((pred, self._requirement(fld, op, arg, line), expr))
        return all_of(terms)

    def _predicate(self, fld: Field, op: str, arg: Any, line: int) -> tuple[Predicate, Expr]:
        if op == "exists":
            if not isinstance(arg, bool):
                raise self.problems.fail(line, f"'exists' on {fld.name} takes true or false")
            pred = _exists(fld, arg)
            if fld.expr is None:
                return pred, codegen.Call(pred, reads=(fld.name,))
            return pred, codegen.Test(fld.expr, "exists", arg)
        test = value_test(fld, op, self.defs.expand(arg, line), line, self.problems)
        pred = _lift(fld, test)
        return pred, _test_expr(fld, test, pred)

    def _requirement(self, fld: Field, op: str, arg: Any, line: int) -> Requirement:
        """The index keys one of which an event must have for this test to pass, if any."""
        if fld.name == "proc.exe" and op == "prefix":
            prefixes = self.defs.expand(arg, line)
            if prefixes and all(isinstance(v, str) and v for v in prefixes):
                return {EXE_PREFIX_INDEX: frozenset(prefixes)}
            return None
        if fld.name in _NEEDLE_FIELDS and op == "contains":
            return _needles(self.defs.expand(arg, line), normal=fld.name in _NORMAL_FIELDS)
        if fld.name == "proc.cmdline_truncated" and op == "equals" and arg is True:
            return {TRUNCATED_INDEX: frozenset({TRUNCATED})}
        if fld.index is None or op not in ("equals", "in"):
            return None
        values = self.defs.expand(arg, line)
        if fld.comm:
            values = [str(v)[:COMM_LEN] for v in values]
        return {fld.index: frozenset(str(v) for v in values)}


# fields whose text, where it contains a value, makes `proc.cmdline_norm` contain that
# value normalised: the command line, its arguments, and their normal forms
_NEEDLE_FIELDS = frozenset({"proc.cmdline", "proc.args", "proc.argv", "proc.cmdline_norm",
                            "proc.args_norm"})
_NORMAL_FIELDS = frozenset({"proc.cmdline_norm", "proc.args_norm"})


def _needles(values: list[Any], normal: bool) -> Requirement:
    """The needles of the normalised command line one of which an event must contain for
    `contains: values` to hold on a needle field. Quotes and backslashes removed from the
    text remove the same ones from a value found in it, and lower case keeps an ASCII
    value where it was (a non-ASCII one may change length or sigma's form: not used); so
    `v in cmdline` implies `normalise(v) in cmdline_norm`, and each argument is a piece of
    the command line (its normal form a piece of the normal form: arguments are joined
    with a space, which no case rule looks across). None when a value cannot serve (the
    index rules nothing out)."""
    if not values or not all(isinstance(v, str) and (normal or v.isascii()) for v in values):
        return None
    needles = frozenset(v if normal else normalise(v) for v in values)
    return {NORM_NEEDLE_INDEX: needles} if all(needles) else None


def _exists(fld: Field, want: bool) -> Predicate:
    get = fld.get
    return lambda ev: (get(ev) not in codegen.EMPTY) == want


def _lift(fld: Field, test: Callable[[Any], bool]) -> Predicate:
    """Turn a value test into an event predicate, handling missing values and lists."""
    get = fld.get
    if fld.many:
        if isinstance(test, Members):
            # equals/in on a list: a set intersection instead of a test per element
            isdisjoint = test.isdisjoint
            return lambda ev: (v := get(ev)) is not None and not isdisjoint(v)

        def any_element(ev: Event) -> bool:
            v = get(ev)
            if v is None:
                return False
            for x in v:  # noqa: SIM110 (a generator costs more, per event)
                if test(x):
                    return True
            return False

        return any_element
    return lambda ev: (v := get(ev)) is not None and test(v)


def _test_expr(fld: Field, test: Callable[[Any], bool], pred: Predicate) -> Expr:
    """The codegen form of `_lift(fld, test)`: the same test of the same value."""
    if fld.expr is None:
        return codegen.Call(pred, reads=(fld.name,))
    form = form_of(test)
    if fld.many:
        if isinstance(test, Members):
            return codegen.Test(fld.expr, "disjoint", test)
        # any element: `any(map(f, v))` runs in C; f a C method call where it can be
        if form is not None and form[0] in ("startswith", "endswith"):
            return codegen.Test(fld.expr, "any", methodcaller(form[0], form[1]))
        if form is not None and form[0] == "contains" and len(form[1]) == 1:
            return codegen.Test(fld.expr, "any", methodcaller("__contains__", form[1][0]))
        return codegen.Test(fld.expr, "any", test)
    if form is None:
        return codegen.Test(fld.expr, "call", test)
    op, value = form
    if op == "contains" and len(value) > _INLINE_NEEDLES:
        return codegen.Test(fld.expr, "call", test)
    return codegen.Test(fld.expr, op, value)


_INLINE_NEEDLES = 12


def all_of(terms: Sequence[Compiled]) -> Compiled:
    """The AND of compiled terms; it requires what its cheapest term requires (`_cost`)."""
    preds = tuple(p for p, _, _ in terms)
    reqs = [r for _, r, _ in terms if r]
    req = min(reqs, key=_cost) if reqs else None
    return conjunction(preds), req, codegen.all_of([e for _, _, e in terms])


def _cost(req: dict[str, frozenset[str]]) -> tuple[int, int]:
    """How dear a requirement is to the index: first the needles it adds (each one more
    substring search on every event of the kind; a name or a prefix costs one lookup
    however many values it has), then its values (the fewer, the fewer events it lets
    through)."""
    return len(req.get(NORM_NEEDLE_INDEX, ())), sum(len(v) for v in req.values())


def any_of(terms: Sequence[Compiled]) -> Compiled:
    """The OR of compiled terms; it requires something only when every branch does."""
    preds = tuple(p for p, _, _ in terms)
    req: Requirement = None
    if all(r for _, r, _ in terms):
        merged: dict[str, set[str]] = {}
        for _, r, _ in terms:
            for attr, vals in (r or {}).items():
                merged.setdefault(attr, set()).update(vals)
        req = {a: frozenset(v) for a, v in merged.items()}
    return disjunction(preds), req, codegen.some_of([e for _, _, e in terms])


def conjunction(preds: Sequence[Predicate]) -> Predicate:
    """All of `preds`, in order, stopping at the first false."""
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds
        return lambda ev: a(ev) and b(ev)
    if len(preds) == 3:
        a, b, c = preds
        return lambda ev: a(ev) and b(ev) and c(ev)
    ps = tuple(preds)

    def every(ev: Event) -> bool:
        for p in ps:  # noqa: SIM110 (a generator costs more, per event)
            if not p(ev):
                return False
        return True

    return every


def disjunction(preds: Sequence[Predicate]) -> Predicate:
    """Any of `preds`, in order, stopping at the first true."""
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds
        return lambda ev: a(ev) or b(ev)
    if len(preds) == 3:
        a, b, c = preds
        return lambda ev: a(ev) or b(ev) or c(ev)
    ps = tuple(preds)

    def some(ev: Event) -> bool:
        for p in ps:  # noqa: SIM110 (a generator costs more, per event)
            if p(ev):
                return True
        return False

    return some
