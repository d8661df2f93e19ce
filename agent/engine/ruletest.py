"""`nodewarden rules test`: run every rule's examples through the real evaluator.

Each example is judged by a rule set holding only its rule (enabled, windows reset), so the
index, the kinds, the exceptions and the window are all exercised exactly as in the agent.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from agent.engine.ruleset import Rule, RuleSet


@dataclass(frozen=True)
class ExampleResult:
    """One example of one rule, judged: what it should do and what it did."""

    rule: str
    file: str
    line: int
    should_match: bool
    matched: bool

    @property
    def ok(self) -> bool:
        """Whether the rule did what the example says it should."""
        return self.should_match == self.matched

    def __str__(self) -> str:
        want = "should match" if self.should_match else "should not match"
        got = "it did" if self.matched else "it did not"
        return f"{self.file}:{self.line}: rule '{self.rule}': example {want}, but {got}"


def run_examples(rules: list[Rule]) -> list[ExampleResult]:
    """Results of every example of every rule, in file order."""
    results = []
    for rule in rules:
        if not rule.examples:
            continue
        solo = RuleSet([dataclasses.replace(rule, enabled=True)])
        for ex in rule.examples:
            solo.reset_windows()
            matched = any(m.rule.id == rule.id for ev in ex.events for m in solo.evaluate(ev))
            results.append(ExampleResult(rule.id, rule.file, ex.line, ex.should_match, matched))
        solo.reset_windows()
    return results
