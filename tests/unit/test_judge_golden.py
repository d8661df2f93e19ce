"""The compiled rule evaluator gives every event the same matches and messages as the one
before issue 10 (commit c1ea01f), on the shipped rules: tests/fixtures/judge/golden.jsonl.gz
holds 5,403 events (every rule example, the benchmark mixes, seeded random events and port
scans) and what that evaluator said of each, in order, windows included
(tests/fixtures/judge/make_golden.py made it). The answers are those of the rules shipped
then, kept in tests/fixtures/judge/rules-c1ea01f/; the rules shipped now (issue 11 added
many) are held to the naive loop on the same events."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from agent.codec import event_from_line
from agent.engine import loader
from agent.engine.ruleset import naive_evaluate

GOLDEN = Path(__file__).parent.parent / "fixtures" / "judge" / "golden.jsonl.gz"
RULES_THEN = Path(__file__).parent.parent / "fixtures" / "judge" / "rules-c1ea01f"


def _golden() -> list[tuple[str, list[list[str]]]]:
    with gzip.open(GOLDEN, "rt", encoding="utf-8") as f:
        return [(d["event"], d["matches"]) for d in map(json.loads, f)]


def test_every_event_matches_as_before() -> None:
    ruleset = loader.load([str(RULES_THEN)])
    cases = _golden()
    assert len(cases) > 5000
    wrong = []
    for line, want in cases:
        got = [[m.rule.id, m.message] for m in ruleset.evaluate(event_from_line(line))]
        if got != want:
            wrong.append((line[:200], want, got))
    assert not wrong[:5]
    # the corpus fires every rule at least once, so none is tested by silence alone
    fired = {rid for _, want in cases for rid, _ in want}
    assert fired == {r.id for r in ruleset.rules}


def test_the_shipped_rules_match_as_the_naive_loop_does() -> None:
    # two loads: each keeps its own windows (port scans count per rule set)
    ruleset = loader.load([loader.bundled_rules_dir()])
    naive = loader.load([loader.bundled_rules_dir()])
    for line, _ in _golden():
        want = [[m.rule.id, m.message] for m in naive_evaluate(naive.rules, event_from_line(line))]
        got = [[m.rule.id, m.message] for m in ruleset.evaluate(event_from_line(line))]
        assert got == want, line[:200]


def test_naive_loop_agrees_with_the_golden_answers() -> None:
    ruleset = loader.load([str(RULES_THEN)])
    for line, want in _golden():
        got = [[m.rule.id, m.message] for m in naive_evaluate(ruleset.rules, event_from_line(line))]
        assert got == want, line[:200]


def test_candidate_sets_judged_in_one_function_from_the_first_event_match_as_before(
        monkeypatch) -> None:
    # each set of candidate rules runs its generated function (codegen.set_function) from
    # its first event on, rather than rule by rule for its first few: the same answers
    from agent.engine import ruleset as rulesets

    monkeypatch.setattr(rulesets, "COMPILE_AFTER", 1)
    then = loader.load([str(RULES_THEN)])
    now = loader.load([loader.bundled_rules_dir()])
    naive = loader.load([loader.bundled_rules_dir()])
    for line, want in _golden():
        got = [[m.rule.id, m.message] for m in then.evaluate(event_from_line(line))]
        assert got == want, line[:200]
        want_now = [[m.rule.id, m.message]
                    for m in naive_evaluate(naive.rules, event_from_line(line))]
        got_now = [[m.rule.id, m.message] for m in now.evaluate(event_from_line(line))]
        assert got_now == want_now, line[:200]
