"""Where rule problems are collected: every compile step reports here, with `file:line`.

A rule set is checked whole: each problem is recorded and compilation goes on with the next
rule, so a user sees every mistake of every file at once. A step that cannot go on raises
`Skip` after recording why; the caller drops that branch (a rule, a condition) and moves on.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from agent.errors import RuleProblem


class Skip(Exception):
    """Raised inside compilation after a problem was recorded, to abandon that branch."""


class Problems:
    """The problems found so far, and where compilation stands (file, rule) to name them."""

    def __init__(self) -> None:
        self.found: list[RuleProblem] = []
        self.file = ""
        self.rule_id = ""

    def add(self, line: int, message: str) -> None:
        """Record a problem at `line` of the current file, naming the current rule."""
        where = f"rule '{self.rule_id}': " if self.rule_id else ""
        self.found.append(RuleProblem(self.file, line, where + message))

    def fail(self, line: int, message: str) -> Skip:
        """Record a problem and return the `Skip` to raise: `raise problems.fail(...)`."""
        self.add(line, message)
        return Skip()

    def sorted(self) -> list[RuleProblem]:
        """The problems by file and line, as a user reads them."""
        return sorted(self.found, key=lambda p: (p.file, p.line))


def suggest(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest choice, or "" when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def type_name(v: Any) -> str:
    """What a YAML value is, in words: `a string`, `a list`, ..."""
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            type(None): "nothing"}.get(type(v), "a list" if isinstance(v, list) else "a mapping")
