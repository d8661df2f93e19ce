"""Operators: one operator and its values compiled into a test of one field value.

`value_test` is called once per condition at load time; the test it returns runs on every
event, so each is the cheapest form of its check (a frozenset's `__contains__`, a bound
`str.startswith` over a tuple, one RE2 alternation). Values arrive expanded (`$lists`
resolved); a wrong value is a problem at the condition's line.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Sequence
from typing import Any

import re2

from agent.engine.problems import Problems
from agent.engine.schema import BOOL, INT, IP, PORT, STR, Field
from agent.model import COMM_LEN, _ip_int
from agent.text import escape_surrogates

ValueTest = Callable[[Any], bool]

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # errors are reported as rule problems, not on stderr
_EQUALITY = ("equals", "in")
# a port set this small is a frozenset lookup; larger ranges are compared as ranges
_PORT_SET_MAX = 4096


class Members(frozenset):  # type: ignore[type-arg]
    """A set of values that is also the test `v in values`, so list fields can intersect
    sets instead of testing element by element."""

    __slots__ = ()
    __call__ = frozenset.__contains__


def _with_form(test: ValueTest, op: str, value: Any) -> ValueTest:
    """`test`, marked with the template codegen.py may write instead of calling it."""
    setattr(test, "_nw_form", (op, value))  # noqa: B010 (a function's attribute)
    return test


def form_of(test: ValueTest) -> tuple[str, Any] | None:
    """How codegen.py may write `test(v)` inline: ("in", set) for `v in set`, ("is", b),
    ("startswith"/"endswith", tuple), ("contains", needles); None: it calls the test."""
    if isinstance(test, Members):
        return "in", test
    owner = getattr(test, "__self__", None)
    if type(owner) is frozenset and getattr(test, "__name__", "") == "__contains__":
        return "in", owner
    form: tuple[str, Any] | None = getattr(test, "_nw_form", None)
    return form


def value_test(fld: Field, op: str, values: list[Any], line: int,
               problems: Problems) -> ValueTest:
    """The test for `fld {op: values}` (any operator but `exists`)."""
    name, typ = fld.name, fld.type
    if not values:
        raise problems.fail(line, f"'{op}' on {name} needs at least one value")
    if typ == IP and op in _EQUALITY:
        return frozenset(_ip(v, name, line, problems) for v in values).__contains__
    if typ == BOOL:
        if len(values) != 1 or not isinstance(values[0], bool):
            raise problems.fail(line, f"{name} is a boolean: 'equals' takes true or false")
        want = values[0]
        return _with_form(lambda v: v is want, "is", want)
    if typ in (INT, PORT) and op in _EQUALITY:
        return _integers(fld, op, values, line, problems)
    if op == "ports":
        return _port_ranges(values, name, line, problems)
    if op == "cidr":
        return _in_networks(tuple(_cidr(v, name, line, problems) for v in values))
    return _string_test(fld, op, values, line, problems)


def _in_networks(nets: tuple[tuple[int, int], ...]) -> ValueTest:
    """Whether an address (its integer) is in one of the (network, mask) pairs."""
    def test(v: int) -> bool:
        for net, mask in nets:  # noqa: SIM110 (a generator costs more, per event)
            if (v & mask) == net:
                return True
        return False

    return test


def _integers(fld: Field, op: str, values: list[Any], line: int,
              problems: Problems) -> ValueTest:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise problems.fail(line, f"{fld.name} is {fld.type}: '{op}' needs integers, got "
                                      f"{v!r}; remove the quotes")
    if op == "equals" and len(values) > 1:
        raise problems.fail(line, "'equals' takes one value; use 'in' for several")
    return frozenset(values).__contains__


def _contains_any(needles: tuple[str, ...]) -> ValueTest:
    if len(needles) == 1:
        needle = needles[0]
        return _with_form(lambda v: needle in v, "contains", needles)

    def contains(v: str) -> bool:
        for n in needles:  # noqa: SIM110 (a generator costs more, per event)
            if n in v:
                return True
        return False

    return _with_form(contains, "contains", needles)


def _string_test(fld: Field, op: str, values: list[Any], line: int,
                 problems: Problems) -> ValueTest:
    """Operators of string and list-of-string fields."""
    if fld.comm and op in _EQUALITY:
        # a name is whole when known (schema.whole_name); a 15-byte one may be a comm the
        # kernel cut, so it also matches a longer value's first 15 bytes
        values = [*values, *(v[:COMM_LEN] for v in values
                             if isinstance(v, str) and len(v) > COMM_LEN)]
    for v in values:
        if not isinstance(v, str):
            kind = "string" if fld.type == STR else "list of strings"
            raise problems.fail(line, f"{fld.name} is a {kind}: '{op}' needs strings, got "
                                      f"{v!r}; quote it")
    if op in _EQUALITY:
        if op == "equals" and len(values) > 1:
            raise problems.fail(line, "'equals' takes one value; use 'in' for several")
        return Members(values)
    if op == "prefix":
        t = tuple(values)
        return _with_form(lambda v: v.startswith(t), "startswith", t)
    if op == "suffix":
        t = tuple(values)
        return _with_form(lambda v: v.endswith(t), "endswith", t)
    if op == "contains":
        return _contains_any(tuple(values))
    if op == "glob":
        rx = re.compile("|".join(fnmatch.translate(g) for g in values))
        return lambda v: rx.match(v) is not None
    if op == "regex":
        return _regex(values, fld.name, line, problems)
    raise problems.fail(line, f"operator '{op}' is not supported")  # pragma: no cover


def _regex(patterns: Sequence[str], name: str, line: int, problems: Problems) -> ValueTest:
    # RE2: linear time whatever the pattern or the (attacker-controlled) cmdline.
    for p in patterns:
        if p in KNOWN_VALID:
            continue
        try:
            re2.compile(p, _RE2_OPTIONS)
            KNOWN_VALID.add(p)
        except re2.error as e:
            arg = e.args[0] if e.args else None
            why = arg.decode(errors="replace") if isinstance(arg, bytes) else str(e)
            raise problems.fail(line, f"bad regex {p!r} for {name}: {why}; RE2 syntax has no "
                                      f"backreferences or lookaround") from None
    key = tuple(patterns)
    test = _REGEX_TESTS.get(key)
    if test is None:
        if len(_REGEX_TESTS) >= _REGEX_TESTS_MAX:
            _REGEX_TESTS.clear()
        test = _REGEX_TESTS[key] = _regex_test(key)
    return test


# Patterns that compiled, here or in an earlier command (regexmemo.py): not compiled again
# only to be checked
KNOWN_VALID: set[str] = set()

# One test per distinct pattern list, shared by every rule that uses it (the same regex
# in one rule's match and another's exception runs once per value: see the memo below).
_REGEX_TESTS: dict[tuple[str, ...], ValueTest] = {}
_REGEX_TESTS_MAX = 4096
_UNANCHORED = re2._re2.RE2.Anchor.UNANCHORED
_NO_MATCH = (-1, -1)
_NOT_FOUND = [_NO_MATCH]
# RE2's Match(anchor, utf8, start, end): the spans of the match and its groups
_Match = Callable[[Any, bytes, int, int], Sequence[tuple[int, int]]]


def _regex_test(patterns: Sequence[str]) -> ValueTest:
    """Whether any of `patterns` is found in a value (one RE2 alternation of them all), at a
    third of `search`'s cost: the wrapper's `search`
    (Python) maps byte offsets back to characters for a match object this test never uses;
    RE2's own Match over the UTF-8 bytes says the same. The last value tested and its answer
    are kept (one tuple: safe between threads), so a second rule asking about the same
    string (a command line made once per process) does not search it again.

    The alternation is compiled on the first value tested, not at load (each pattern was
    checked then): most of a short command's start-up was compiling regexes it never ran.
    Two threads racing on the first value both compile it; either result is right."""
    match: _Match

    def compile_then_match(anchor: Any, b: bytes, start: int, end: int
                           ) -> Sequence[tuple[int, int]]:
        nonlocal match
        match = _alternation(patterns)
        return match(anchor, b, start, end)

    match = compile_then_match
    memo: tuple[str | None, bool] = (None, False)

    def test(v: str) -> bool:
        nonlocal memo
        last, found = memo
        if v is last:
            return found
        try:
            b = v.encode()
        except UnicodeEncodeError:
            # bytes that were not UTF-8 (lone surrogates, agent/text.py): RE2 takes UTF-8,
            # so it sees them as the `\udcNN` escapes the findings show
            b = escape_surrogates(v).encode()
        found = match(_UNANCHORED, b, 0, len(b))[0] != _NO_MATCH
        memo = (v, found)
        return found

    return test


def _alternation(patterns: Sequence[str]) -> _Match:
    """RE2's Match of `(?:p1)|(?:p2)|...`; should the whole be too large for RE2 (each part
    compiled alone at load), the parts one after another, with the same answer."""
    try:
        return re2.compile("|".join(f"(?:{p})" for p in patterns), _RE2_OPTIONS)._regexp.Match
    except re2.error:
        parts = [re2.compile(p, _RE2_OPTIONS)._regexp.Match for p in patterns]

    def each(anchor: Any, b: bytes, start: int, end: int) -> Sequence[tuple[int, int]]:
        for m in parts:
            spans = m(anchor, b, start, end)
            if spans[0] != _NO_MATCH:
                return spans
        return _NOT_FOUND

    return each


def _ip(v: Any, name: str, line: int, problems: Problems) -> int:
    try:
        addr = ipaddress.ip_address(str(v))
    except ValueError:
        raise problems.fail(line, f"{name}: {v!r} is not an IP address; use 'cidr' for "
                                  f"networks") from None
    return _ip_int(str(addr))


def _cidr(v: Any, name: str, line: int, problems: Problems) -> tuple[int, int]:
    try:
        net = ipaddress.ip_network(str(v), strict=False)
    except ValueError:
        raise problems.fail(line, f"{name}: {v!r} is not a CIDR like 10.0.0.0/8 or "
                                  f"fd00::/8") from None
    if net.version == 4:
        bits = 96 + net.prefixlen
        base = 0xFFFF00000000 | int(net.network_address)
    else:
        bits = net.prefixlen
        base = int(net.network_address)
    mask = ((1 << 128) - 1) ^ ((1 << (128 - bits)) - 1)
    return base & mask, mask


def _port_ranges(values: Sequence[Any], name: str, line: int,
                 problems: Problems) -> ValueTest:
    ranges: list[tuple[int, int]] = []
    for v in values:
        lo: Any
        hi: Any
        if isinstance(v, int) and not isinstance(v, bool):
            lo = hi = v
        elif isinstance(v, str) and re.fullmatch(r"\d+-\d+", v):
            lo, hi = (int(x) for x in v.split("-"))
        else:
            raise problems.fail(line, f"{name}: port range {v!r} must be a port or 'low-high'")
        if not (0 <= lo <= hi <= 65535):
            raise problems.fail(line, f"{name}: port range {v!r} is outside 0-65535 or "
                                      f"reversed")
        ranges.append((lo, hi))
    if sum(hi - lo + 1 for lo, hi in ranges) <= _PORT_SET_MAX:
        ports = frozenset(p for lo, hi in ranges for p in range(lo, hi + 1))
        return ports.__contains__
    return lambda p: any(lo <= p <= hi for lo, hi in ranges)
