"""Rule files to a RuleSet: validation with `file:line` problems, then compilation.

Every problem in every file is collected (not just the first), each naming the rule and
the fix. Lists and macros are shared across the files of one set; `overrides` in a later
file change a shipped rule's severity, mode, action or enabled flag by id.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import re2

from agent.engine import yamlsrc
from agent.engine.kernel import connect_spec, exec_spec
from agent.engine.ruleset import Example, Predicate, Rule, RuleSet
from agent.engine.schema import (
    ACTIONS,
    BOOL,
    CONNECTION_KINDS,
    EXE_DIR_INDEX,
    INDEXED_FIELDS,
    INT,
    IP,
    KINDS,
    MODES,
    OPERATORS,
    PORT,
    PROCESS_KINDS,
    SEVERITIES,
    STR,
    Field,
    field,
    field_names,
)
from agent.engine.windows import Window
from agent.errors import RuleError, RuleProblem
from agent.model import Event
from agent.sources.recorded import EventFormatError, event_from_json
from agent.text import escape_surrogates

TOP_KEYS = ("lists", "macros", "rules", "overrides")
RULE_KEYS = ("id", "description", "severity", "action", "mode", "enabled", "tags", "on",
             "match", "except", "message", "window", "examples")
OVERRIDE_KEYS = ("id", "severity", "action", "mode", "enabled")
WINDOW_KEYS = ("seconds", "threshold", "by", "distinct")
COMBINATORS = ("all", "any", "not", "macro")
# Fields holding the kernel's comm, which is truncated to 15 bytes.
COMM_FIELDS = frozenset({"proc.name", "parent.name", "ancestor.name"})
COMM_LEN = 15
_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
_PLACEHOLDER = re.compile(r"\{([a-z_.]+(?:\.[A-Za-z0-9_./-]+)?)\}")

Requirement = dict[str, frozenset[str]] | None

# Bounds on what a rule set may ask of the agent: a reload compiles while the agent runs,
# and a file of 10**6 list entries stalled it for seconds. The shipped rules are ~15 KB a
# file and expand to a few thousand values in all.
MAX_RULE_FILE_BYTES = 1 << 20
MAX_LIST_VALUES = 10_000   # values of one condition, after $list references are expanded
MAX_VALUES_TOTAL = 200_000  # values of every condition of a rule set

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # errors are reported as rule problems, not on stderr


def _contains_any(needles: tuple[str, ...]) -> Callable[[str], bool]:
    if len(needles) == 1:
        needle = needles[0]
        return lambda v: needle in v

    def contains(v: str) -> bool:
        for n in needles:
            if n in v:
                return True
        return False

    return contains


class _Members(frozenset):  # type: ignore[type-arg]
    """A set of values that is also the test `v in values`, so list fields can intersect
    sets instead of testing element by element."""

    __slots__ = ()
    __call__ = frozenset.__contains__


def _never(ev: Event) -> bool:
    return False


_BROKEN: tuple[Predicate, Requirement] = (_never, None)


class _Skip(Exception):
    """Raised inside compilation after a problem was recorded, to abandon that branch."""


BUNDLED = "bundled"


def rule_files(paths: Iterable[str]) -> list[Path]:
    """The YAML files named by `paths`, directories expanded (sorted, *.yaml and *.yml).

    The entry `bundled` names the rules shipped in the package, so a config can say
    `rules: [bundled, /etc/nodewarden/rules.d]` to add its own rules to them."""
    out: list[Path] = []
    for p in paths:
        path = Path(bundled_rules_dir() if p == BUNDLED else p)
        if path.is_dir():
            out.extend(sorted(q for q in path.iterdir()
                              if q.suffix in (".yaml", ".yml") and q.is_file()))
        else:
            out.append(path)
    return out


def bundled_rules_dir() -> str:
    """The rules shipped inside the package (the repository's rules/)."""
    from importlib.resources import files

    return str(files("agent.rules"))


@dataclass
class _Source:
    file: str
    data: Any
    raw: bytes  # what was parsed: the rule set's digest is of these bytes


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            type(None): "nothing"}.get(type(v), "a list" if isinstance(v, list) else "a mapping")


class _Compiler:
    def __init__(self) -> None:
        self.problems: list[RuleProblem] = []
        self.lists: dict[str, tuple[Any, str, int]] = {}
        self.macros: dict[str, tuple[Any, str, int]] = {}
        self.macro_cache: dict[str, tuple[Predicate, Requirement]] = {}
        self.file = ""
        self.rule_id = ""
        self.expanded = 0  # values of every expanded list so far (MAX_VALUES_TOTAL)

    # -- reporting --------------------------------------------------------------------

    def problem(self, line: int, message: str) -> None:
        where = f"rule '{self.rule_id}': " if self.rule_id else ""
        self.problems.append(RuleProblem(self.file, line, where + message))

    def fail(self, line: int, message: str) -> _Skip:
        self.problem(line, message)
        return _Skip()

    # -- files --------------------------------------------------------------------------

    def parse(self, path: Path) -> _Source | None:
        self.file = str(path)
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_RULE_FILE_BYTES + 1)
            if len(raw) > MAX_RULE_FILE_BYTES:
                self.problem(1, f"the file is larger than {MAX_RULE_FILE_BYTES} bytes, the limit "
                                f"for a rule file; split it, or shorten its lists")
                return None
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            self.problem(1, f"cannot read rule file: {e}")
            return None
        try:
            data, dups = yamlsrc.load(text)
        except yamlsrc.YamlSyntaxError as e:
            self.problem(e.line, f"YAML syntax error: {e}; check indentation and quoting here")
            return None
        for line, key in dups:
            self.problem(line, f"duplicate key '{key}': YAML keeps only the last; remove one")
        if data is None:
            return _Source(str(path), yamlsrc.Node(), raw)
        if not isinstance(data, yamlsrc.Node):
            self.problem(1, f"a rule file must be a mapping with keys {', '.join(TOP_KEYS)}, "
                            f"not {_type_name(data)}")
            return None
        for key in data:
            if key not in TOP_KEYS:
                self.problem(data.line_of(key), f"unknown top-level key '{key}'"
                                                f"{_suggest(str(key), TOP_KEYS)}; expected one of "
                                                f"{', '.join(TOP_KEYS)}")
        return _Source(str(path), data, raw)

    def collect_names(self, src: _Source) -> None:
        self.file = src.file
        for section, store in (("lists", self.lists), ("macros", self.macros)):
            block = src.data.get(section)
            if block is None:
                continue
            if not isinstance(block, yamlsrc.Node):
                self.problem(src.data.line_of(section), f"'{section}' must be a mapping of name to "
                                                        f"{'list' if section == 'lists' else 'condition'}")
                continue
            for name, value in block.items():
                line = block.line_of(name)
                if name in store:
                    _, other_file, other_line = store[name]
                    self.problem(line, f"{section[:-1]} '{name}' is already defined at "
                                       f"{other_file}:{other_line}; rename one")
                    continue
                if section == "lists" and not isinstance(value, list):
                    self.problem(line, f"list '{name}' must be a YAML list, not {_type_name(value)}")
                    continue
                if section == "lists" and len(value) > MAX_LIST_VALUES:
                    self.problem(line, f"list '{name}' has {len(value)} entries; the limit is "
                                       f"{MAX_LIST_VALUES}")
                    value = value[:MAX_LIST_VALUES]  # refused above; users need not fail too
                store[name] = (value, src.file, line)

    # -- lists --------------------------------------------------------------------------

    def expand(self, value: Any, line: int, stack: tuple[str, ...] = ()) -> list[Any]:
        """A value (scalar, list or `$list` reference) as a flat list of scalars."""
        out = self._expand(value, line, stack)
        self.expanded += len(out)
        if len(out) > MAX_LIST_VALUES or self.expanded > MAX_VALUES_TOTAL:
            raise self.fail(line, f"too many values: {len(out)} here, {self.expanded} in the "
                                  f"rule set so far; the limits are {MAX_LIST_VALUES} per "
                                  f"condition (lists expanded) and {MAX_VALUES_TOTAL} in all")
        return out

    def _expand(self, value: Any, line: int, stack: tuple[str, ...]) -> list[Any]:
        items = value if isinstance(value, list) else [value]
        out: list[Any] = []
        for item in items:
            if isinstance(item, str) and item.startswith("$"):
                name = item[1:]
                if name not in self.lists:
                    raise self.fail(line, f"unknown list '${name}'{_suggest(name, self.lists)}; "
                                          f"define it under 'lists:'")
                if name in stack:
                    raise self.fail(line, f"list cycle: {' -> '.join((*stack, name))}")
                lv, _, lline = self.lists[name]
                out.extend(self._expand(lv, lline, (*stack, name)))
                if len(out) > MAX_LIST_VALUES:
                    break  # `expand` reports it; a list of lists must not grow without end
            elif isinstance(item, (dict, list)):
                raise self.fail(line, f"expected a scalar value, not {_type_name(item)}")
            else:
                out.append(item)
        return out

    # -- conditions -----------------------------------------------------------------------

    def condition(self, node: Any, line: int, macro_stack: tuple[str, ...] = ()) -> tuple[Predicate, Requirement]:
        """Compile a condition mapping: every key is a term, and the mapping is their AND."""
        if not isinstance(node, yamlsrc.Node) or not node:
            raise self.fail(getattr(node, "line", line),
                            "a condition must be a non-empty mapping such as "
                            "{proc.name: {in: [xmrig]}} or {any: [...]}, not " + _type_name(node))
        terms: list[tuple[Predicate, Requirement]] = []
        skipped = False
        for key, value in node.items():
            kline = node.line_of(key)
            try:
                terms.append(self.term(str(key), value, kline, macro_stack))
            except _Skip:
                skipped = True
        if skipped:
            raise _Skip()
        return _all(terms)

    def term(self, key: str, value: Any, line: int, macro_stack: tuple[str, ...]) -> tuple[Predicate, Requirement]:
        if key in ("all", "any"):
            if not isinstance(value, yamlsrc.Seq) or not value:
                raise self.fail(line, f"'{key}' takes a non-empty list of conditions")
            subs = []
            bad = False
            for i, sub in enumerate(value):
                try:
                    subs.append(self.condition(sub, value.line_of(i), macro_stack))
                except _Skip:
                    bad = True
            if bad:
                raise _Skip()
            return _all(subs) if key == "all" else _any(subs)
        if key == "not":
            pred, _ = self.condition(value, line, macro_stack)
            return (lambda ev: not pred(ev)), None
        if key == "macro":
            return self.macro(value, line, macro_stack)
        fld = field(key)
        if fld is None:
            raise self.fail(line, f"unknown field '{key}'{_suggest(key, [*field_names(), *COMBINATORS])}; "
                                  f"fields are listed in rules/README.md")
        return self.field_test(fld, value, line)

    def check_macros(self) -> None:
        """Compile every macro once, so a broken macro is reported even if no rule uses it."""
        for name, (_, _, line) in list(self.macros.items()):
            self.rule_id = ""
            try:
                self.macro(name, line, ())
            except _Skip:
                self.macro_cache[name] = _BROKEN

    def macro(self, name: Any, line: int, stack: tuple[str, ...]) -> tuple[Predicate, Requirement]:
        if not isinstance(name, str):
            raise self.fail(line, "'macro' takes the name of a macro")
        if name not in self.macros:
            raise self.fail(line, f"unknown macro '{name}'{_suggest(name, self.macros)}; "
                                  f"define it under 'macros:'")
        if name in stack:
            raise self.fail(line, f"macro cycle: {' -> '.join((*stack, name))}; a macro cannot "
                                  f"use itself")
        if name in self.macro_cache:
            cached = self.macro_cache[name]
            if cached is _BROKEN:
                raise _Skip()  # already reported where the macro is defined
            return cached
        node, mfile, mline = self.macros[name]
        saved = self.file
        self.file = mfile
        try:
            compiled = self.condition(node, mline, (*stack, name))
        finally:
            self.file = saved
        self.macro_cache[name] = compiled
        return compiled

    def field_test(self, fld: Field, spec: Any, line: int) -> tuple[Predicate, Requirement]:
        if isinstance(spec, yamlsrc.Node):
            if not spec:
                raise self.fail(line, f"'{fld.name}' needs an operator, e.g. {{equals: ...}}")
            ops = list(spec.items())
        elif isinstance(spec, list) or (isinstance(spec, str) and spec.startswith("$")):
            ops = [("in", spec)]
        else:
            ops = [("equals", spec)]
        valid = OPERATORS[fld.type]
        terms: list[tuple[Predicate, Requirement]] = []
        for op, arg in ops:
            op = str(op)
            if op not in valid:
                hint = _suggest(op, valid)
                raise self.fail(line, f"operator '{op}' does not apply to {fld.name} "
                                      f"({fld.type}){hint}; use one of {', '.join(valid)}")
            test = self.operator(fld, op, arg, line)
            terms.append((_lift(fld, test, op == "exists", arg), self.requirement(fld, op, arg, line)))
        return _all(terms)

    def requirement(self, fld: Field, op: str, arg: Any, line: int) -> Requirement:
        """The index keys one of which an event must have for this test to pass, if any."""
        if fld.name == "proc.exe" and op == "prefix":
            dirs = [str(v) for v in self.expand(arg, line)]
            if dirs and all(d.startswith("/") and d.endswith("/") for d in dirs):
                return {EXE_DIR_INDEX: frozenset(dirs)}
            return None
        attr = INDEXED_FIELDS.get(fld.name)
        if attr is None or op not in ("equals", "in"):
            return None
        values = self.expand(arg, line)
        if fld.name in COMM_FIELDS:
            values = [str(v)[:COMM_LEN] for v in values]
        return {attr: frozenset(str(v) for v in values)}

    def operator(self, fld: Field, op: str, arg: Any, line: int) -> Callable[[Any], bool]:
        typ = fld.type
        name = fld.name
        if op == "exists":
            if not isinstance(arg, bool):
                raise self.fail(line, f"'exists' on {name} takes true or false")
            return lambda v: True
        values = self.expand(arg, line)
        if not values:
            raise self.fail(line, f"'{op}' on {name} needs at least one value")
        if typ == IP and op in ("equals", "in"):
            ints = frozenset(self.ip(v, name, line) for v in values)
            return ints.__contains__
        if typ == BOOL:
            if len(values) != 1 or not isinstance(values[0], bool):
                raise self.fail(line, f"{name} is a boolean: 'equals' takes true or false")
            want = values[0]
            return lambda v: v is want
        if typ in (INT, PORT) and op in ("equals", "in"):
            for v in values:
                if isinstance(v, bool) or not isinstance(v, int):
                    raise self.fail(line, f"{name} is {typ}: '{op}' needs integers, got {v!r}; "
                                          f"remove the quotes")
            if op == "equals" and len(values) > 1:
                raise self.fail(line, "'equals' takes one value; use 'in' for several")
            return frozenset(values).__contains__
        if op == "ports":
            return self.port_ranges(values, name, line)
        if op == "cidr":
            nets = [self.cidr(v, name, line) for v in values]
            return lambda v: any((v & mask) == net for net, mask in nets)
        if fld.name in COMM_FIELDS and op in ("equals", "in"):
            # a name is whole when known (schema.whole_name); a 15-byte one may be a comm
            # the kernel cut, so it also matches a longer value's first 15 bytes
            values = [*values, *(v[:COMM_LEN] for v in values
                                 if isinstance(v, str) and len(v) > COMM_LEN)]
        # string operators (string and list-of-string fields)
        for v in values:
            if not isinstance(v, str):
                raise self.fail(line, f"{name} is a {'string' if typ == STR else 'list of strings'}: "
                                      f"'{op}' needs strings, got {v!r}; quote it")
        if op in ("equals", "in"):
            if op == "equals" and len(values) > 1:
                raise self.fail(line, "'equals' takes one value; use 'in' for several")
            return _Members(values)
        if op == "prefix":
            t = tuple(values)
            return lambda v: v.startswith(t)
        if op == "suffix":
            t = tuple(values)
            return lambda v: v.endswith(t)
        if op == "contains":
            return _contains_any(tuple(values))
        if op == "glob":
            rx = re.compile("|".join(fnmatch.translate(g) for g in values))
            return lambda v: rx.match(v) is not None
        if op == "regex":
            return self.regex(values, name, line)
        raise self.fail(line, f"operator '{op}' is not supported")  # pragma: no cover

    def regex(self, patterns: Sequence[str], name: str, line: int) -> Callable[[Any], bool]:
        # RE2: linear time whatever the pattern or the (attacker-controlled) cmdline.
        for p in patterns:
            try:
                re2.compile(p, _RE2_OPTIONS)
            except re2.error as e:
                why = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
                raise self.fail(line, f"bad regex {p!r} for {name}: {why}; RE2 syntax has no "
                                      f"backreferences or lookaround") from None
        rx = re2.compile("|".join(f"(?:{p})" for p in patterns), _RE2_OPTIONS)
        search = rx.search

        def test(v: str) -> bool:
            try:
                return search(v) is not None
            except UnicodeEncodeError:
                # bytes that were not UTF-8 (lone surrogates, agent/text.py): RE2 takes
                # UTF-8, so it sees them as the `\udcNN` escapes the findings show
                return search(escape_surrogates(v)) is not None

        return test

    def ip(self, v: Any, name: str, line: int) -> int:
        try:
            addr = ipaddress.ip_address(str(v))
        except ValueError:
            raise self.fail(line, f"{name}: {v!r} is not an IP address; use 'cidr' for networks") from None
        from agent.model import _ip_int

        return _ip_int(str(addr))

    def cidr(self, v: Any, name: str, line: int) -> tuple[int, int]:
        try:
            net = ipaddress.ip_network(str(v), strict=False)
        except ValueError:
            raise self.fail(line, f"{name}: {v!r} is not a CIDR like 10.0.0.0/8 or fd00::/8") from None
        if net.version == 4:
            bits = 96 + net.prefixlen
            base = 0xFFFF00000000 | int(net.network_address)
        else:
            bits = net.prefixlen
            base = int(net.network_address)
        mask = ((1 << 128) - 1) ^ ((1 << (128 - bits)) - 1)
        return base & mask, mask

    def port_ranges(self, values: Sequence[Any], name: str, line: int) -> Callable[[Any], bool]:
        ranges: list[tuple[int, int]] = []
        for v in values:
            lo: Any
            hi: Any
            if isinstance(v, int) and not isinstance(v, bool):
                lo = hi = v
            elif isinstance(v, str) and re.fullmatch(r"\d+-\d+", v):
                lo, hi = (int(x) for x in v.split("-"))
            else:
                raise self.fail(line, f"{name}: port range {v!r} must be a port or 'low-high'")
            if not (0 <= lo <= hi <= 65535):
                raise self.fail(line, f"{name}: port range {v!r} is outside 0-65535 or reversed")
            ranges.append((lo, hi))
        if sum(hi - lo + 1 for lo, hi in ranges) <= 4096:
            ports = frozenset(p for lo, hi in ranges for p in range(lo, hi + 1))
            return ports.__contains__
        return lambda p: any(lo <= p <= hi for lo, hi in ranges)

    # -- rules ----------------------------------------------------------------------------

    def rules(self, src: _Source, order_start: int) -> list[Rule]:
        self.file = src.file
        block = src.data.get("rules")
        if block is None:
            return []
        if not isinstance(block, yamlsrc.Seq):
            self.problem(src.data.line_of("rules"), "'rules' must be a list of rules")
            return []
        out: list[Rule] = []
        for i, node in enumerate(block):
            self.rule_id = ""
            try:
                out.append(self.rule(node, block.line_of(i), order_start + len(out)))
            except _Skip:
                pass
        self.rule_id = ""
        return out

    def rule(self, node: Any, line: int, order: int) -> Rule:
        if not isinstance(node, yamlsrc.Node):
            raise self.fail(line, f"a rule must be a mapping with at least id and match, not "
                                  f"{_type_name(node)}")
        rid = node.get("id")
        if not isinstance(rid, str) or not _ID_RE.fullmatch(rid):
            raise self.fail(node.line_of("id"), f"rule needs an 'id' of lowercase letters, digits, "
                                                f"'.', '_' or '-', got {rid!r}")
        self.rule_id = rid
        ok_sev, severity = self.choice(node, "severity", SEVERITIES, "medium")
        ok_act, action = self.choice(node, "action", ACTIONS, "report")
        ok_mode, mode = self.choice(node, "mode", MODES, None)
        bad = not (ok_sev and ok_act and ok_mode)
        for key in node:
            if key not in RULE_KEYS:
                self.problem(node.line_of(key), f"unknown field '{key}'{_suggest(str(key), RULE_KEYS)}; "
                                                f"rule fields are {', '.join(RULE_KEYS)}")
                bad = True
        enabled = node.get("enabled", True)
        if not isinstance(enabled, bool):
            self.problem(node.line_of("enabled"), f"'enabled' must be true or false, not {enabled!r}")
            bad = True
        tags = node.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            self.problem(node.line_of("tags"), "'tags' must be a list of strings like [T1496]")
            bad = True
            tags = []
        description = node.get("description", "")
        if not isinstance(description, str):
            self.problem(node.line_of("description"), "'description' must be a string")
            bad = True
        if "match" not in node:
            raise self.fail(node.line, "rule has no 'match' condition; add one, e.g. "
                                       "match: {proc.name: {in: [xmrig]}}")
        pred = req = exc = None
        try:
            pred, req = self.condition(node["match"], node.line_of("match"))
        except _Skip:
            bad = True
        try:
            exc = self.exceptions(node)
        except _Skip:
            bad = True
        kinds = self.kinds(node)
        window = None
        try:
            window = self.window(node)
        except _Skip:
            bad = True
        try:
            message = self.message(node, description or rid)
        except _Skip:
            bad = True
        if bad or kinds is None or pred is None:
            raise _Skip()
        assert severity is not None and action is not None
        rule = Rule(id=rid, description=description, severity=severity, action=action,
                    mode=mode, enabled=enabled, tags=tuple(tags), kinds=kinds,
                    predicate=pred, exceptions=exc, message=message, window=window,
                    file=self.file, line=node.line, order=order, requirement=req)
        rule.examples = self.examples(node)
        rule.kernel = self.kernel_form(node, action, kinds)
        rule.kernel_connect = self.kernel_connect_form(node, action, kinds)
        return rule

    def kernel_connect_form(self, node: yamlsrc.Node, action: str, kinds: tuple[str, ...]) -> Any:
        """The in-kernel form of a connect kill rule: destination networks and ports only."""
        if action != "kill" or "except" in node or "window" in node or tuple(kinds) != ("connect",):
            return None
        try:
            return connect_spec(node["match"], lambda v: self.expand(v, node.line),
                                lambda name: self.macros.get(name, (None,))[0])
        except (_Skip, ValueError):
            return None

    def kernel_form(self, node: yamlsrc.Node, action: str, kinds: tuple[str, ...]) -> Any:
        """The in-kernel form of an exec kill rule, when it is only names or paths."""
        if action != "kill" or "except" in node or "window" in node:
            return None
        if not set(kinds) <= {"exec", "scan"} or "exec" not in kinds:
            return None
        try:
            return exec_spec(node["match"], lambda v: self.expand(v, node.line),
                             lambda name: self.macros.get(name, (None,))[0])
        except _Skip:
            return None

    def choice(self, node: yamlsrc.Node, key: str, allowed: Sequence[str],
               default: str | None) -> tuple[bool, str | None]:
        """(valid, value) of an enumerated rule field."""
        if key not in node:
            return True, default
        v = node[key]
        if v not in allowed:
            self.problem(node.line_of(key), f"'{key}' must be one of {', '.join(allowed)}, not "
                                            f"{v!r}{_suggest(str(v), allowed)}")
            return False, default
        return True, v

    def exceptions(self, node: yamlsrc.Node) -> Predicate | None:
        if "except" not in node:
            return None
        block = node["except"]
        if not isinstance(block, yamlsrc.Seq) or not block:
            raise self.fail(node.line_of("except"), "'except' takes a list of conditions; any one "
                                                    "of them suppresses the rule")
        preds = []
        bad = False
        for i, c in enumerate(block):
            try:
                preds.append(self.condition(c, block.line_of(i)))
            except _Skip:
                bad = True
        if bad:
            raise _Skip()
        return _disjunction([p for p, _ in preds])

    def kinds(self, node: yamlsrc.Node) -> tuple[str, ...] | None:
        if "on" not in node:
            uses_conn = self.mentions_connection([node.get("match"), node.get("except")], ())
            return CONNECTION_KINDS if uses_conn else PROCESS_KINDS
        raw = node["on"]
        items = raw if isinstance(raw, list) else [raw]
        for k in items:
            if k not in KINDS:
                self.problem(node.line_of("on"), f"'on' takes event kinds ({', '.join(KINDS)}), "
                                                 f"not {k!r}{_suggest(str(k), KINDS)}")
                return None
        return tuple(items)

    def mentions_connection(self, node: Any, stack: tuple[str, ...]) -> bool:
        """Whether a condition (through its macros) tests a conn.* field."""
        if isinstance(node, dict):
            for k, v in node.items():
                if str(k).startswith("conn."):
                    return True
                if k == "macro" and isinstance(v, str) and v in self.macros and v not in stack:
                    if self.mentions_connection(self.macros[v][0], (*stack, v)):
                        return True
                elif self.mentions_connection(v, stack):
                    return True
        elif isinstance(node, list):
            return any(self.mentions_connection(v, stack) for v in node)
        return False

    def window(self, node: yamlsrc.Node) -> Window | None:
        if "window" not in node:
            return None
        w = node["window"]
        line = node.line_of("window")
        if not isinstance(w, yamlsrc.Node):
            raise self.fail(line, "'window' must be a mapping: {seconds: 10, threshold: 50, "
                                  "distinct: conn.dport, by: [workspace.id]}")
        for key in w:
            if key not in WINDOW_KEYS:
                raise self.fail(w.line_of(key), f"unknown window field '{key}'"
                                                f"{_suggest(str(key), WINDOW_KEYS)}")
        seconds = w.get("seconds")
        threshold = w.get("threshold")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
            raise self.fail(w.line_of("seconds"), "window 'seconds' must be a positive number")
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise self.fail(w.line_of("threshold"), "window 'threshold' must be a positive integer")
        by_raw = w.get("by", [])
        by_list = by_raw if isinstance(by_raw, list) else [by_raw]
        by = []
        for name in by_list:
            f = field(str(name))
            if f is None:
                raise self.fail(w.line_of("by"), f"window 'by': unknown field '{name}'"
                                                 f"{_suggest(str(name), field_names())}")
            by.append(f.get)
        distinct = None
        if "distinct" in w:
            f = field(str(w["distinct"]))
            if f is None:
                raise self.fail(w.line_of("distinct"), f"window 'distinct': unknown field "
                                                       f"'{w['distinct']}'"
                                                       f"{_suggest(str(w['distinct']), field_names())}")
            distinct = f.get
        return Window(float(seconds), threshold, by, distinct)

    def message(self, node: yamlsrc.Node, default: str) -> Callable[[Event], str]:
        template = node.get("message", default)
        line = node.line_of("message")
        if not isinstance(template, str):
            raise self.fail(line, "'message' must be a string")
        parts: list[Any] = []
        pos = 0
        for m in _PLACEHOLDER.finditer(template):
            f = field(m.group(1))
            if f is None:
                raise self.fail(line, f"message placeholder '{{{m.group(1)}}}' is not a field"
                                      f"{_suggest(m.group(1), field_names())}")
            parts.append(template[pos : m.start()])
            parts.append(f)
            pos = m.end()
        parts.append(template[pos:])
        if len(parts) == 1:
            return lambda ev: template

        def render(ev: Event) -> str:
            out = []
            for p in parts:
                if isinstance(p, str):
                    out.append(p)
                else:
                    v = p.get(ev)
                    if p.type == IP and v is not None:
                        v = _ip_text(ev, p.name)
                    out.append("-" if v is None or v == "" else
                               " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v))
            return "".join(out)

        return render

    def examples(self, node: yamlsrc.Node) -> list[Example]:
        if "examples" not in node:
            return []
        block = node["examples"]
        line = node.line_of("examples")
        if not isinstance(block, yamlsrc.Node):
            self.problem(line, "'examples' must be a mapping with 'match' and/or 'no_match' lists")
            return []
        out = []
        for key in block:
            if key not in ("match", "no_match"):
                self.problem(block.line_of(key), f"unknown examples key '{key}'"
                                                 f"{_suggest(str(key), ('match', 'no_match'))}")
                continue
            items = block[key]
            if not isinstance(items, yamlsrc.Seq):
                self.problem(block.line_of(key), f"examples '{key}' must be a list of events")
                continue
            for i, item in enumerate(items):
                iline = items.line_of(i)
                try:
                    out.append(Example(iline, key == "match", _example_events(item)))
                except EventFormatError as e:
                    self.problem(iline, f"example event: {e}")
        return out


def _ip_text(ev: Event, name: str) -> str:
    c = ev.connection
    if c is None:
        return "-"
    return c.src if name.endswith("src") else c.dst


def _example_events(item: Any) -> list[Event]:
    """One example: an event, or with `repeat: {count: N, increment: connection.dport}`
    a sequence of N events (for window rules), 10 ms apart."""
    if not isinstance(item, dict):
        raise EventFormatError("an example must be a mapping in the recorded-event format")
    repeat = item.get("repeat")
    if repeat is None:
        return [event_from_json(item)]
    if not isinstance(repeat, dict) or not isinstance(repeat.get("count"), int):
        raise EventFormatError("'repeat' must be {count: N} with an optional increment: "
                               "connection.dport")
    count = repeat["count"]
    if not 1 <= count <= 10_000:
        raise EventFormatError("'repeat' count must be between 1 and 10000")
    inc = repeat.get("increment")
    base = {k: v for k, v in item.items() if k != "repeat"}
    events = []
    for n in range(count):
        obj = _deep_copy(base)
        obj["time"] = float(base.get("time", 0.0)) + n * 0.01
        if inc is not None:
            parts = str(inc).split(".")
            target = obj
            for p in parts[:-1]:
                target = target.setdefault(p, {})
            if not isinstance(target.get(parts[-1], 0), int):
                raise EventFormatError(f"'increment' {inc} must name an integer field")
            target[parts[-1]] = target.get(parts[-1], 0) + n
        events.append(event_from_json(obj))
    return events


def _deep_copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _deep_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deep_copy(v) for v in obj]
    return obj


def _lift(fld: Field, test: Callable[[Any], bool], is_exists: bool, arg: Any) -> Predicate:
    """Turn a value test into an event predicate, handling missing values and lists."""
    get = fld.get
    if is_exists:
        want = bool(arg)
        return lambda ev: (get(ev) not in (None, "", (), [])) == want
    if fld.many:
        if isinstance(test, _Members):
            # equals/in on a list: a set intersection instead of a test per element
            isdisjoint = test.isdisjoint
            return lambda ev: (v := get(ev)) is not None and not isdisjoint(v)

        def any_element(ev: Event) -> bool:
            v = get(ev)
            if v is None:
                return False
            for x in v:
                if test(x):
                    return True
            return False

        return any_element
    return lambda ev: (v := get(ev)) is not None and test(v)


def _all(terms: Sequence[tuple[Predicate, Requirement]]) -> tuple[Predicate, Requirement]:
    preds = tuple(p for p, _ in terms)
    reqs = [r for _, r in terms if r]
    req = min(reqs, key=lambda r: sum(len(v) for v in r.values())) if reqs else None
    return _conjunction(preds), req


def _any(terms: Sequence[tuple[Predicate, Requirement]]) -> tuple[Predicate, Requirement]:
    preds = tuple(p for p, _ in terms)
    req: Requirement = None
    if all(r for _, r in terms):
        merged: dict[str, set[str]] = {}
        for _, r in terms:
            for attr, vals in (r or {}).items():
                merged.setdefault(attr, set()).update(vals)
        req = {a: frozenset(v) for a, v in merged.items()}
    return _disjunction(preds), req


# Combinators are the innermost loop of the engine: short ones are unrolled lambdas, which
# cost a fraction of a generator passed to all()/any().

def _conjunction(preds: Sequence[Predicate]) -> Predicate:
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
        for p in ps:
            if not p(ev):
                return False
        return True

    return every


def _disjunction(preds: Sequence[Predicate]) -> Predicate:
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
        for p in ps:
            if p(ev):
                return True
        return False

    return some


def check(paths: Sequence[str]) -> tuple[RuleSet | None, list[RuleProblem]]:
    """Load the rule files under `paths`; returns (rule set or None, problems)."""
    comp = _Compiler()
    files = rule_files(paths)
    if not files:
        return None, [RuleProblem(", ".join(paths) or "-", 0,
                                  "no rule files (*.yaml) found; pass a file or a directory")]
    sources = []
    digest = hashlib.sha256()
    for f in files:
        src = comp.parse(f)
        if src is not None:
            sources.append(src)
            digest.update(str(f.name).encode() + b"\0" + src.raw + b"\0")
    for src in sources:
        comp.collect_names(src)
    comp.check_macros()
    rules: list[Rule] = []
    seen: dict[str, Rule] = {}
    for src in sources:
        for r in comp.rules(src, len(rules)):
            if r.id in seen:
                comp.file = r.file
                comp.problem(r.line, f"rule id '{r.id}' is already defined at {seen[r.id].file}:"
                                     f"{seen[r.id].line}; to change a shipped rule use 'overrides'")
                continue
            seen[r.id] = r
            rules.append(r)
    for src in sources:
        _apply_overrides(comp, src, seen)
    problems = sorted(comp.problems, key=lambda p: (p.file, p.line))
    if problems:
        return None, problems
    return RuleSet(rules, digest.hexdigest()[:16], [str(f) for f in files]), []


def _apply_overrides(comp: _Compiler, src: _Source, rules: dict[str, Rule]) -> None:
    block = src.data.get("overrides")
    if block is None:
        return
    comp.file = src.file
    comp.rule_id = ""
    if not isinstance(block, yamlsrc.Seq):
        comp.problem(src.data.line_of("overrides"), "'overrides' must be a list of {id: ..., "
                                                    "severity|mode|action|enabled: ...}")
        return
    for i, node in enumerate(block):
        line = block.line_of(i)
        if not isinstance(node, yamlsrc.Node) or "id" not in node:
            comp.problem(line, "an override needs the 'id' of the rule it changes")
            continue
        rid = node["id"]
        if rid not in rules:
            comp.problem(node.line_of("id"), f"override of unknown rule '{rid}'"
                                             f"{_suggest(str(rid), rules)}")
            continue
        rule = rules[rid]
        for key, value in node.items():
            kline = node.line_of(key)
            if key == "id":
                continue
            allowed: Sequence[Any] | None = {"severity": SEVERITIES, "action": ACTIONS,
                                             "mode": MODES, "enabled": (True, False)}.get(key)
            if allowed is None:
                comp.problem(kline, f"override of '{rid}': '{key}' cannot be overridden"
                                    f"{_suggest(str(key), OVERRIDE_KEYS)}; only "
                                    f"{', '.join(OVERRIDE_KEYS[1:])} can")
                continue
            if value not in allowed or (key == "enabled" and not isinstance(value, bool)):
                comp.problem(kline, f"override of '{rid}': '{key}' must be one of "
                                    f"{', '.join(map(str, allowed))}, not {value!r}")
                continue
            setattr(rule, key, value)


def load(paths: Sequence[str]) -> RuleSet:
    """Load and compile a rule set; raises RuleError with every problem found."""
    ruleset, problems = check(paths)
    if ruleset is None:
        raise RuleError(problems)
    return ruleset
