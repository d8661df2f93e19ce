"""The rules an event's index hits leave to run are judged in one generated function
(ruleset._Set, codegen.set_function) that says what each rule's own check says, computing
what the rules share once; the index keys that choose them (names, executable prefixes,
command-line needles, a cut command line) rule out only rules that cannot match."""

from __future__ import annotations

from typing import Any

import pytest

from agent.codec import event_from_json
from agent.engine import codegen, ruleset
from agent.engine.ruleset import naive_evaluate
from agent.model import Event


def ev(**obj: Any) -> Event:
    return event_from_json(obj)


@pytest.fixture
def compile_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every candidate set runs its generated function from its first event."""
    monkeypatch.setattr(ruleset, "COMPILE_AFTER", 1)


def _ids(rs: ruleset.RuleSet, e: Event) -> list[str]:
    return [m.rule.id for m in rs.evaluate(e)]


def _candidates(rs: ruleset.RuleSet, **p: Any) -> list[str]:
    return [r.id for r in rs.candidates(ev(process=p))]


def test_a_case_sensitive_command_line_needle_indexes_by_its_normal_form(rules_from,
                                                                        compile_at_once) -> None:
    rs = rules_from("""
rules:
  - id: preload
    match: {proc.cmdline: {contains: LD_PRELOAD=}}
  - id: by-arg
    match: {proc.args: {contains: [--Token=]}}
  - id: accented
    match: {proc.cmdline: {contains: "café"}}
""")
    preload, by_arg, accented = rs.rules
    assert preload.requirement == {"cmdline_norm_contains": frozenset({"ld_preload="})}
    assert by_arg.requirement == {"cmdline_norm_contains": frozenset({"--token="})}
    assert accented.requirement is None  # lower case may change a non-ASCII value
    assert _candidates(rs, exe="/usr/bin/ls", cmdline=["ls", "-la"]) == ["accented"]
    # the needle is looked for in the normal form: quotes and case do not hide it
    assert _candidates(rs, cmdline=["env", 'ld_pre"load=/x', "sh"]) == ["preload", "accented"]
    for cmd in (["env", "LD_PRELOAD=/tmp/x.so", "sh"], ["env", "ld_preload=/tmp/x.so", "sh"],
                ["x", "--token=1"], ["x", "--Token=1"], ["x", "-- Token="], ["café"]):
        e = ev(process={"cmdline": cmd})
        assert _ids(rs, e) == [m.rule.id for m in naive_evaluate(rs.rules, e)], cmd
    assert _ids(rs, ev(process={"cmdline": ["env", "LD_PRELOAD=/x"]})) == ["preload"]


def test_a_rule_is_indexed_by_a_name_rather_than_by_a_needle(rules_from) -> None:
    # a name costs one lookup per event however many names; each needle is a search
    rs = rules_from("""
rules:
  - id: shells-reading-shadow
    match: {proc.name: [bash, sh, dash, zsh, ksh], proc.cmdline: {contains: /etc/shadow}}
""")
    assert rs.rules[0].requirement == {"comm": frozenset({"bash", "sh", "dash", "zsh", "ksh"})}


def test_a_cut_command_line_is_an_index_key(rules_from, compile_at_once) -> None:
    rs = rules_from("""
rules:
  - id: cut
    match: {proc.cmdline_truncated: true, workspace.id: {exists: true}}
""")
    assert rs.rules[0].requirement == {"cmdline_truncated": frozenset({"true"})}
    whole = {"exe": "/usr/bin/java", "cmdline": ["java", "-cp", "a.jar", "Main"]}
    assert _candidates(rs, **whole) == []
    assert _candidates(rs, **whole, cmdline_truncated=True) == ["cut"]
    e = ev(process={**whole, "cmdline_truncated": True}, workspace={"id": "ws-1"})
    assert _ids(rs, e) == ["cut"]
    assert _ids(rs, ev(process={**whole, "cmdline_truncated": True})) == []


def test_a_set_judges_its_rules_in_order_with_exceptions_and_windows(rules_from,
                                                                     compile_at_once) -> None:
    rs = rules_from("""
macros:
  miner: {proc.name: [xmrig, minerd]}
rules:
  - id: miner
    match: {macro: miner}
    except:
      - {workspace.id: ws-trusted}
  - id: miner-burst
    match: {macro: miner}
    window: {seconds: 60, threshold: 1, by: [workspace.id]}
  - id: miner-root
    match: {macro: miner, proc.uid: 0}
""")
    def fired(t: float, ws: str, uid: int = 1000) -> list[str]:
        return _ids(rs, ev(time=t, workspace={"id": ws},
                           process={"comm": "xmrig", "exe": "/tmp/xmrig", "uid": uid}))

    assert fired(1.0, "ws-1") == ["miner"]
    assert fired(2.0, "ws-1", uid=0) == ["miner", "miner-burst", "miner-root"]
    assert fired(3.0, "ws-trusted") == []  # counted by the window all the same
    assert fired(4.0, "ws-trusted") == ["miner-burst"]


def test_a_shared_condition_runs_once_per_event() -> None:
    calls: list[Event] = []

    def dear(e: Event) -> bool:
        calls.append(e)
        return True

    shared = codegen.Call(dear)
    cheap_no = codegen.Test("ev.process.comm", "in", frozenset({"nope"}))
    forms = [codegen.RuleForm("a", shared, None, None, lambda e: True),
             codegen.RuleForm("b", codegen.all_of([shared, cheap_no]), None, None,
                              lambda e: True),
             codegen.RuleForm("c", codegen.all_of([shared, codegen.Not(cheap_no)]), None,
                              None, lambda e: True)]
    judge = codegen.set_function(forms)
    assert judge is not None
    e = ev(process={"comm": "sh"})
    assert judge(e) == ["a", "c"]
    assert calls == [e]


def test_dear_tests_run_after_cheap_ones_that_settle_the_answer() -> None:
    calls: list[Event] = []

    def dear(e: Event) -> bool:
        calls.append(e)
        return True

    cheap_no = codegen.Test("ev.process.comm", "in", frozenset({"nope"}))
    check = codegen.function(codegen.all_of([codegen.Call(dear), cheap_no]), lambda e: False)
    assert not check(ev(process={"comm": "sh"}))
    assert calls == []


def test_few_distinct_unions_get_a_function(rules_from, compile_at_once,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[int] = []
    real = codegen.set_function

    def counted(forms: list[codegen.RuleForm]) -> Any:
        made.append(len(forms))
        return real(forms)

    monkeypatch.setattr(codegen, "set_function", counted)
    monkeypatch.setattr(ruleset, "MAX_UNION_FUNCTIONS", 1)
    rs = rules_from("""
rules:
  - id: a
    match: {proc.name: a}
  - id: b
    match: {proc.cmdline_norm: {contains: needle-b}}
  - id: c
    match: {proc.cmdline_norm: {contains: needle-c}}
""")
    both_b = ev(process={"comm": "a", "cmdline": ["a", "needle-b"]})
    both_c = ev(process={"comm": "a", "cmdline": ["a", "needle-c"]})
    assert _ids(rs, both_b) == ["a", "b"]
    assert _ids(rs, both_c) == ["a", "c"]  # judged rule by rule: the budget is spent
    assert made == [2]
    assert _ids(rs, both_c) == ["a", "c"]
