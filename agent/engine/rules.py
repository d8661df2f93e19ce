"""One rule's YAML to a compiled Rule: its header (id, severity, action, mode, enabled,
tags, description), its condition, exceptions, kinds, window and message, and the kernel's
form of it when the kernel can enforce it (its examples: examples.py, when asked for).

Every problem of a rule is reported before the rule is dropped, so a user fixes a file in
one pass; the other rules of the file still compile.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from agent.details import BY_FAMILY as DETAIL_PREFIXES
from agent.engine import codegen, yamlsrc
from agent.engine.codegen import Expr
from agent.engine.conditions import ConditionCompiler, disjunction
from agent.engine.definitions import Definitions
from agent.engine.files import RuleFile
from agent.engine.filewatch import Watch, WatchError, rule_watches
from agent.engine.kernel import KernelConnectSpec, KernelExecSpec, connect_spec, exec_spec
from agent.engine.messages import compile_message
from agent.engine.problems import Problems, Skip, suggest, type_name
from agent.engine.ruleset import Compiled, Predicate, Rule
from agent.engine.schema import ACTIONS, MODES
from agent.engine.windows import Window, compile_window
from agent.model import (
    CONNECTION_KINDS,
    PROCESS_KINDS,
    RULE_KINDS,
    SEVERITIES,
    EventKind,
    Severity,
)

T = TypeVar("T")

RULE_KEYS = ("id", "description", "severity", "action", "mode", "enabled", "tags", "on",
             "match", "except", "message", "window", "examples")
_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")


@dataclass
class _Header:
    """What a rule says about itself, before its condition."""

    id: str
    severity: Severity
    action: str
    mode: str | None
    enabled: bool
    tags: tuple[str, ...]
    description: str


class RuleCompiler:
    """Compiles the rules of the files of one rule set, in file order."""

    def __init__(self, problems: Problems, defs: Definitions) -> None:
        self.problems = problems
        self.defs = defs
        self.conditions = ConditionCompiler(problems, defs)

    def rules(self, src: RuleFile, order_start: int) -> list[Rule]:
        """The rules of one file that compiled; the problems of the others are recorded."""
        self.problems.file = src.file
        block = src.data.get("rules")
        if block is None:
            return []
        if not isinstance(block, yamlsrc.Seq):
            self.problems.add(src.data.line_of("rules"), "'rules' must be a list of rules")
            return []
        out: list[Rule] = []
        for i, node in enumerate(block):
            self.problems.rule_id = ""
            with contextlib.suppress(Skip):  # its problems are recorded; the next rule
                out.append(self.rule(node, block.line_of(i), order_start + len(out)))
        self.problems.rule_id = ""
        return out

    def rule(self, node: Any, line: int, order: int) -> Rule:
        """One compiled rule; raises Skip when it has a problem (every one recorded)."""
        if not isinstance(node, yamlsrc.Node):
            raise self.problems.fail(line, f"a rule must be a mapping with at least id and "
                                           f"match, not {type_name(node)}")
        head, ok = self._header(node)
        if "match" not in node:
            raise self.problems.fail(node.line, "rule has no 'match' condition; add one, e.g. "
                                                "match: {proc.name: {in: [xmrig]}}")
        steps = _Steps(ok)
        match = steps.run(lambda: self.conditions.condition(node["match"],
                                                            node.line_of("match")))
        exc = steps.run(lambda: self._exceptions(node))
        kinds = steps.check(self._kinds(node))
        watches = steps.run(lambda: self._file_watches(node, kinds))
        window = steps.run(lambda: compile_window(node, self.problems))
        message = steps.run(lambda: compile_message(node, head.description or head.id,
                                                    self.problems))
        if not steps.ok or match is None or kinds is None or message is None:
            raise Skip()
        rule = Rule(id=head.id, description=head.description, severity=head.severity,
                    action=head.action, mode=head.mode, enabled=head.enabled, tags=head.tags,
                    kinds=kinds, predicate=match[0], exceptions=exc[0] if exc else None,
                    message=message, window=window, file=self.problems.file, line=node.line,
                    order=order, requirement=match[1], file_watches=watches or (),
                    forms=(match[2], exc[1] if exc is not None else None),
                    compile=_compiler(match[0], match[2], exc, window))
        rule.kernel = self._kernel_exec(node, head.action, kinds)
        rule.kernel_connect = self._kernel_connect(node, head.action, kinds)
        return rule

    def _header(self, node: yamlsrc.Node) -> tuple[_Header, bool]:
        """The rule's own fields and whether they were all valid; a bad id raises Skip."""
        rid = node.get("id")
        if not isinstance(rid, str) or not _ID_RE.fullmatch(rid):
            raise self.problems.fail(node.line_of("id"), f"rule needs an 'id' of lowercase "
                                                         f"letters, digits, '.', '_' or '-', "
                                                         f"got {rid!r}")
        self.problems.rule_id = rid
        ok_sev, severity = self._choice(node, "severity", SEVERITIES, Severity.MEDIUM)
        ok_act, action = self._choice(node, "action", ACTIONS, "report")
        ok_mode, mode = self._choice(node, "mode", MODES, None)
        ok = ok_sev and ok_act and ok_mode
        for key in node:
            if key not in RULE_KEYS:
                self.problems.add(node.line_of(key), f"unknown field '{key}'"
                                                     f"{suggest(str(key), RULE_KEYS)}; rule "
                                                     f"fields are {', '.join(RULE_KEYS)}")
                ok = False
        enabled = node.get("enabled", True)
        if not isinstance(enabled, bool):
            self.problems.add(node.line_of("enabled"), f"'enabled' must be true or false, not "
                                                       f"{enabled!r}")
            ok = False
        tags = node.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            self.problems.add(node.line_of("tags"), "'tags' must be a list of strings like "
                                                    "[T1496]")
            ok = False
            tags = []
        description = node.get("description", "")
        if not isinstance(description, str):
            self.problems.add(node.line_of("description"), "'description' must be a string")
            ok = False
        assert severity is not None and action is not None
        return _Header(rid, Severity(severity), action, mode, enabled, tuple(tags),
                       description), ok

    def _choice(self, node: yamlsrc.Node, key: str, allowed: Sequence[str],
                default: str | None) -> tuple[bool, str | None]:
        """(valid, value) of an enumerated rule field."""
        if key not in node:
            return True, default
        v = node[key]
        if v not in allowed:
            self.problems.add(node.line_of(key), f"'{key}' must be one of {', '.join(allowed)}, "
                                                 f"not {v!r}{suggest(str(v), allowed)}")
            return False, default
        return True, v

    def _exceptions(self, node: yamlsrc.Node) -> tuple[Predicate, Expr] | None:
        if "except" not in node:
            return None
        block = node["except"]
        if not isinstance(block, yamlsrc.Seq) or not block:
            raise self.problems.fail(node.line_of("except"), "'except' takes a list of "
                                                             "conditions; any one of them "
                                                             "suppresses the rule")
        terms = self.conditions.conditions(block)
        return (disjunction([p for p, _, _ in terms]),
                codegen.some_of([e for _, _, e in terms]))

    def _kinds(self, node: yamlsrc.Node) -> tuple[EventKind, ...] | None:
        tested = self._prefixes([node.get("match"), node.get("except")], ())
        families = [DETAIL_PREFIXES[p] for p in sorted(tested) if p in DETAIL_PREFIXES]
        if "on" not in node:
            # a rule that tests a detail family's fields is on that family's kinds
            if families:
                return tuple(sorted({k for fam in families for k in fam.kinds}))
            return CONNECTION_KINDS if "conn" in tested else PROCESS_KINDS
        raw = node["on"]
        items = raw if isinstance(raw, list) else [raw]
        for k in items:
            if k not in RULE_KINDS:
                self.problems.add(node.line_of("on"), f"'on' takes event kinds "
                                                      f"({', '.join(RULE_KINDS)}), not {k!r}"
                                                      f"{suggest(str(k), RULE_KINDS)}")
                return None
        kinds = tuple(EventKind(k) for k in items)
        for fam in families:
            if not fam.kinds & set(kinds):
                on = ", ".join(sorted(fam.kinds))
                self.problems.add(node.line_of("on"), f"the rule tests {fam.family}.* fields, "
                                                      f"which only {on} events have, but is "
                                                      f"on {', '.join(kinds)}: add {on} to "
                                                      f"'on' (or drop 'on')")
                return None
        return kinds

    def _file_watches(self, node: yamlsrc.Node,
                      kinds: tuple[EventKind, ...] | None) -> tuple[Watch, ...]:
        """What the kernel watches for a rule on file events (filewatch.py); a file rule
        that names no path or name the kernel can test is refused."""
        if kinds is None or EventKind.FILE not in kinds:
            return ()
        try:
            return rule_watches(node["match"], lambda v: self.defs.expand(v, node.line),
                                self.defs.macro_node)
        except WatchError as e:
            raise self.problems.fail(node.line_of("match"), str(e)) from None

    def _prefixes(self, node: Any, stack: tuple[str, ...]) -> set[str]:
        """The field families (`conn`, `file`, ...) a condition tests, through its macros."""
        out: set[str] = set()
        if isinstance(node, list):
            for v in node:
                out |= self._prefixes(v, stack)
            return out
        if not isinstance(node, dict):
            return out
        macros = self.defs.macros
        for k, v in node.items():
            key = str(k)
            if "." in key:
                out.add(key.partition(".")[0])
            if k == "macro" and isinstance(v, str) and v in macros and v not in stack:
                out |= self._prefixes(macros[v][0], (*stack, v))
            else:
                out |= self._prefixes(v, stack)
        return out

    def _kernel_exec(self, node: yamlsrc.Node, action: str,
                     kinds: tuple[EventKind, ...]) -> KernelExecSpec | None:
        """The in-kernel form of an exec kill rule, when it is only names or paths."""
        if action != "kill" or "except" in node or "window" in node:
            return None
        if not set(kinds) <= set(PROCESS_KINDS) or EventKind.EXEC not in kinds:
            return None
        try:
            return exec_spec(node["match"], lambda v: self.defs.expand(v, node.line),
                             self.defs.macro_node)
        except Skip:
            return None

    def _kernel_connect(self, node: yamlsrc.Node, action: str,
                        kinds: tuple[EventKind, ...]) -> KernelConnectSpec | None:
        """The in-kernel form of a connect kill rule: destination networks and ports only."""
        if action != "kill" or "except" in node or "window" in node:
            return None
        if tuple(kinds) != (EventKind.CONNECT,):
            return None
        try:
            return connect_spec(node["match"], lambda v: self.defs.expand(v, node.line),
                                self.defs.macro_node)
        except (Skip, ValueError):
            return None


def _compiler(pred: Predicate, expr: Expr, exc: tuple[Predicate, Expr] | None,
              window: Window | None) -> Callable[[], Compiled]:
    """What makes a rule's (predicate, exceptions, check) single functions (codegen.py)."""
    def compile_rule() -> Compiled:
        predicate = codegen.function(expr, pred)
        exceptions = codegen.function(exc[1], exc[0]) if exc is not None else None
        if exc is None and window is None:
            return predicate, exceptions, predicate
        check = codegen.rule_check(expr, exc[1] if exc is not None else None,
                                   window.observe if window is not None else None)
        return predicate, exceptions, check

    return compile_rule


class _Steps:
    """Runs the compile steps of one rule, each reporting its own problems, and remembers
    whether any failed, so every problem of the rule is found before it is dropped."""

    def __init__(self, ok: bool) -> None:
        self.ok = ok

    def run(self, step: Callable[[], T]) -> T | None:
        """The step's result, or None when it raised Skip."""
        try:
            return step()
        except Skip:
            self.ok = False
            return None

    def check(self, value: T | None) -> T | None:
        """A result that is None when its step failed."""
        if value is None:
            self.ok = False
        return value
