"""Answers remembered by what the rules read (agent/engine/verdicts.py): an exec like one
judged before gets that answer, and an exec that differs in anything a rule of its kind
tests is judged anew; the store stays bounded and is on /metrics."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from agent.codec import event_from_json, event_from_line, read_events
from agent.engine import loader, verdicts
from agent.engine.ruleset import RuleSet, naive_evaluate
from agent.metrics import CacheTotal, Metrics
from agent.model import Event

GOLDEN = Path(__file__).parent.parent / "fixtures" / "judge" / "golden.jsonl.gz"

RULES = """
rules:
  - id: by-ancestor-args
    match: {ancestor.args: {suffix: [/cloud-init]}}
  - id: by-label
    match: {pod.labels.team: red}
  - id: by-parent
    match: {parent.name: go, proc.exe: {prefix: [/tmp/]}}
  - id: root-curl
    match: {proc.name: curl, proc.uid: 0}
  - id: cut
    match: {proc.cmdline_truncated: true}
  - id: outside
    match: {proc.name: nc, workspace.id: {exists: false}}
  - id: by-argument
    match: {proc.args: {contains: [--evil]}}
"""


def ev(**obj: Any) -> Event:
    obj.setdefault("kind", "exec")
    return event_from_json(obj)


def _ids(rs: RuleSet, e: Event) -> list[str]:
    return [m.rule.id for m in rs.evaluate(e)]


def _pairs() -> list[tuple[dict[str, Any], dict[str, Any], str]]:
    """(event that fires nothing, one that differs in one tested value, the rule it fires)."""
    sh = {"exe": "/usr/bin/sh", "cmdline": ["sh", "x"]}
    return [
        ({"process": dict(sh, ancestors=[{"exe": "/usr/bin/python3", "cmdline": ["py", "a"]}])},
         {"process": dict(sh, ancestors=[{"exe": "/usr/bin/python3",
                                          "cmdline": ["py", "/usr/bin/cloud-init"]}])},
         "by-ancestor-args"),
        ({"process": sh, "pod": {"name": "p", "labels": {"team": "blue"}}},
         {"process": sh, "pod": {"name": "p", "labels": {"team": "red"}}}, "by-label"),
        ({"process": {"exe": "/tmp/x", "ancestors": [{"comm": "bash"}]}},
         {"process": {"exe": "/tmp/x", "ancestors": [{"comm": "go"}]}}, "by-parent"),
        ({"process": {"exe": "/usr/bin/curl", "uid": 1000}},
         {"process": {"exe": "/usr/bin/curl", "uid": 0}}, "root-curl"),
        ({"process": {"exe": "/usr/bin/cat", "cmdline": ["cat", "f"]}},
         {"process": {"exe": "/usr/bin/cat", "cmdline": ["cat", "f"], "cmdline_truncated": True,
                      "cmdline_cut_bytes": 100}}, "cut"),
        ({"process": {"exe": "/usr/bin/nc"}, "workspace": {"id": "ws-1"}},
         {"process": {"exe": "/usr/bin/nc"}}, "outside"),
        ({"process": {"exe": "/usr/bin/make", "cmdline": ["make", "--quiet"]}},
         {"process": {"exe": "/usr/bin/make", "cmdline": ["make", "--evil"]}}, "by-argument"),
    ]


def test_an_exec_differing_only_in_what_a_rule_tests_is_judged_anew(rules_from) -> None:
    rs = rules_from(RULES)
    for quiet, loud, rule in _pairs():
        for _ in range(3):  # the second and third answers come from the store
            assert _ids(rs, ev(**quiet)) == [], rule
            assert _ids(rs, ev(**loud)) == [rule]
            # pid, ppid, starttime and time are read by no rule: the same answer
            assert _ids(rs, ev(**dict(loud, time=9.0, process=dict(
                loud["process"], pid=77, ppid=2, starttime=5)))) == [rule]
    (store,) = [s for s in rs.remembered() if len(s)]  # exec; scan saw nothing
    assert len(store) == 2 * len(_pairs())


def test_remembered_answers_are_the_rules_answers_on_the_golden_corpus() -> None:
    rs = loader.load([loader.bundled_rules_dir()])
    naive = loader.load([loader.bundled_rules_dir()])
    with gzip.open(GOLDEN, "rt", encoding="utf-8") as f:
        lines = [json.loads(x)["event"] for x in f]
    for line in lines + lines:  # every exec judged twice: the second from the store
        e = event_from_line(line)
        want = [[m.rule.id, m.message] for m in naive_evaluate(naive.rules, e)]
        assert [[m.rule.id, m.message] for m in rs.evaluate(e)] == want, line[:200]
    assert sum(map(len, rs.remembered())) > 10


def test_kinds_with_a_window_and_kinds_other_than_exec_and_scan_judge_every_event(
        rules_from) -> None:
    rs = rules_from("""
rules:
  - id: scan-like
    on: [exec]
    match: {proc.name: nmap}
    window: {seconds: 60, threshold: 1, by: [proc.pid]}
  - id: metadata
    on: [connect]
    match: {conn.dport: 80}
""")
    assert rs.remembered() == []
    assert [_ids(rs, ev(process={"exe": "/usr/bin/nmap", "pid": 5})) for _ in range(3)] == [
        [], ["scan-like"], []]  # the window counts every event (then is silent for a while)


def test_the_store_is_bounded_by_entries_and_by_characters(rules_from, monkeypatch) -> None:
    rs = rules_from(RULES)
    monkeypatch.setattr(verdicts, "MAX_ENTRIES", 50)
    long_arg = "y" * (verdicts.MAX_KEY_CHARS + 1)
    # too long to be remembered, and still judged right
    assert _ids(rs, ev(process={"exe": "/usr/bin/m", "cmdline": ["m", "--evil", long_arg]})) == [
        "by-argument"]
    assert sum(map(len, rs.remembered())) == 0
    for i in range(500):
        assert _ids(rs, ev(process={"exe": f"/usr/bin/t{i}", "cmdline": [f"t{i}"]})) == []
    (store,) = [s for s in rs.remembered() if len(s)]
    assert 0 < len(store) <= 50
    monkeypatch.setattr(verdicts, "MAX_CHARS", 10_000)
    for i in range(50):
        _ids(rs, ev(process={"exe": "/usr/bin/u", "cmdline": ["u", f"{i:04d}" + "z" * 1000]}))
    assert store.chars <= 10_000


def test_the_stores_are_one_cache_on_metrics(rules_from) -> None:
    rs = rules_from(RULES)
    for i in range(7):
        rs.evaluate(ev(process={"exe": f"/usr/bin/t{i}"}))
    m = Metrics()
    m.watch_caches({"rule_verdicts": lambda: CacheTotal(rs.remembered)})
    sample = m.registry.get_sample_value
    assert sample("nodewarden_cache_entries", {"cache": "rule_verdicts"}) == 7
    assert sample("nodewarden_cache_capacity", {"cache": "rule_verdicts"}) == 2 * 4096


def test_a_connect_event_is_not_remembered() -> None:
    rs = loader.load([loader.bundled_rules_dir()])
    e = event_from_json({"kind": "connect", "process": {"exe": "/usr/bin/curl"},
                         "connection": {"dst": "169.254.169.254", "dport": 80}})
    rs.evaluate(e)
    assert sum(map(len, rs.remembered())) == 0


def test_a_lineage_shared_by_many_events_is_judged_by_what_it_says(tmp_path: Path,
                                                                   monkeypatch) -> None:
    # a recording read through read_events shares one ancestors tuple among the events of
    # a lineage (its key is a token found by the tuple's identity): every answer is still
    # the rules' own, also while the store and its lineages are cleared again and again
    monkeypatch.setattr(verdicts, "MAX_ENTRIES", 7)
    rs = loader.load([loader.bundled_rules_dir()])
    naive = loader.load([loader.bundled_rules_dir()])
    with gzip.open(GOLDEN, "rt", encoding="utf-8") as f:
        lines = [json.loads(x)["event"] for x in f]
    path = tmp_path / "golden.jsonl"
    path.write_text("".join(line + "\n" for line in lines * 2))
    events = list(read_events(str(path)))
    shared = {id(e.ancestors) for e in events if e.ancestors}
    assert len(shared) < len([e for e in events if e.ancestors])  # tuples are shared
    for e in events:
        want = [[m.rule.id, m.message] for m in naive_evaluate(naive.rules, e)]
        assert [[m.rule.id, m.message] for m in rs.evaluate(e)] == want
    stores = [s for s in rs.remembered() if s.lineages.count]
    assert stores and all(len(s.lineages.by_id) <= 7 and len(s.lineages.tokens) <= 7
                          for s in stores)


def test_a_lineage_token_is_never_given_to_other_ancestors(rules_from) -> None:
    rs = rules_from(RULES)
    quiet = ev(process={"exe": "/usr/bin/sh", "ancestors": [{"cmdline": ["py", "a"]}]})
    loud = ev(process={"exe": "/usr/bin/sh",
                       "ancestors": [{"cmdline": ["py", "/usr/bin/cloud-init"]}]})
    assert _ids(rs, quiet) == [] and _ids(rs, loud) == ["by-ancestor-args"]
    (store,) = [s for s in rs.remembered() if len(s)]
    store.lineages.clear()  # forgotten: the same texts get a new token, and the same answer
    assert _ids(rs, loud) == ["by-ancestor-args"] and _ids(rs, quiet) == []
    assert store.lineages.count == 4
    # the same tuple object again (identity): its token, its answer
    assert _ids(rs, loud) == ["by-ancestor-args"] and store.lineages.count == 4
