"""`overrides:` in a later file change a shipped rule by id: its severity, mode, action or
enabled flag, without copying the rule (which would fork it from future releases)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.engine import yamlsrc
from agent.engine.files import RuleFile
from agent.engine.problems import Problems, suggest
from agent.engine.ruleset import Rule
from agent.engine.schema import ACTIONS, MODES
from agent.model import SEVERITIES, Severity

OVERRIDE_KEYS = ("id", "severity", "action", "mode", "enabled")
_ALLOWED: dict[str, Sequence[Any]] = {"severity": SEVERITIES, "action": ACTIONS, "mode": MODES,
                                      "enabled": (True, False)}


def apply_overrides(src: RuleFile, rules: dict[str, Rule], problems: Problems) -> None:
    """Apply the overrides of one file to the compiled rules, by id."""
    block = src.data.get("overrides")
    if block is None:
        return
    problems.file = src.file
    problems.rule_id = ""
    if not isinstance(block, yamlsrc.Seq):
        problems.add(src.data.line_of("overrides"), "'overrides' must be a list of {id: ..., "
                                                    "severity|mode|action|enabled: ...}")
        return
    for i, node in enumerate(block):
        line = block.line_of(i)
        if not isinstance(node, yamlsrc.Node) or "id" not in node:
            problems.add(line, "an override needs the 'id' of the rule it changes")
            continue
        rid = node["id"]
        if rid not in rules:
            problems.add(node.line_of("id"), f"override of unknown rule '{rid}'"
                                             f"{suggest(str(rid), rules)}")
            continue
        for key, value in node.items():
            if key != "id":
                _override(rules[rid], str(key), value, node.line_of(key), problems)


def _override(rule: Rule, key: str, value: Any, line: int, problems: Problems) -> None:
    allowed = _ALLOWED.get(key)
    if allowed is None:
        problems.add(line, f"override of '{rule.id}': '{key}' cannot be overridden"
                           f"{suggest(key, OVERRIDE_KEYS)}; only "
                           f"{', '.join(OVERRIDE_KEYS[1:])} can")
        return
    if value not in allowed or (key == "enabled" and not isinstance(value, bool)):
        problems.add(line, f"override of '{rule.id}': '{key}' must be one of "
                           f"{', '.join(map(str, allowed))}, not {value!r}")
        return
    setattr(rule, key, Severity(value) if key == "severity" else value)
