"""Rules compiled into one function (agent/engine/codegen.py) say what their closures say:
every field's expression gives its getter's value, the RE2 fast path answers as
`search`, and a condition too deep to compile keeps its closures."""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
import re2
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.codec import event_from_json
from agent.engine import codegen
from agent.engine.operators import _RE2_OPTIONS, _regex_test
from agent.engine.schema import FIELDS
from agent.model import Event, Process


def ev(**obj: Any) -> Event:
    return event_from_json(obj)


EVENTS = [
    ev(process={"exe": "/usr/bin/python3.11", "comm": "python3",
                "cmdline": ["python3", "-c", "print('x')"], "cmdline_truncated": True,
                "ancestors": [{"exe": "/usr/bin/bash", "cmdline": ["bash", "-l"]}]},
       workspace={"id": "ws-1"}, container={"id": "c0ffee"}),
    ev(kind="connect", process={"exe": "/usr/bin/curl", "cmdline": ["curl", "x"]},
       connection={"dst": "10.0.0.1", "dport": 3333, "direction": "outbound"},
       pod={"namespace": "ns", "name": "p", "labels": {"app": "a"}}),
    ev(kind="scan", process={"comm": "cpuminer-avx512", "exe": "/home/u/cpuminer-avx512-x",
                             "cmdline": []}),
    ev(process={}),
]


@pytest.mark.parametrize("name", sorted(n for n, f in FIELDS.items() if f.expr is not None))
def test_each_field_expression_gives_the_getters_value(name: str) -> None:
    fld = FIELDS[name]
    assert fld.expr is not None
    get = codegen.function(codegen.Test(fld.expr, "call", lambda v: v), lambda e: False)
    seen = []
    for e in EVENTS:
        seen.append(fld.get(e))
        expr_value = eval(fld.expr, {**codegen._Names().ns}, {"ev": e})  # noqa: S307
        assert expr_value == fld.get(e), (name, e)
        if fld.get(e) is not None:
            assert get(e) == fld.get(e)
    # ancestors, connection and pod are all exercised both present and absent
    assert len(seen) == len(EVENTS)


def test_the_re2_fast_path_answers_as_search() -> None:
    patterns = [r"(?i)^(?:--?[a-z]+=)?stratum\+tcp://", r"é+x$", r"^\S+\.py$", r"\\udc", r"^$"]
    rnd = random.Random(3)
    alphabet = ["a", "é", "x", "\udcff", "stratum+tcp://", "STRATUM+TCP://", "--url=", " ",
                ".py", "ü", "\\", "udc"]
    values = ["", "é", "\udcff", *("".join(rnd.choices(alphabet, k=rnd.randrange(6)))
                                   for _ in range(2000))]
    for p in patterns:
        rx = re2.compile(p, _RE2_OPTIONS)
        fast = _regex_test([p])
        for v in values:
            try:
                want = rx.search(v) is not None
            except UnicodeEncodeError:
                want = rx.search(v.encode("utf-8", "backslashreplace").decode()) is not None
            assert fast(v) == want, (p, v)
            assert fast(v) == want  # the memo gives the same answer again


def test_too_deep_to_compile_keeps_the_closure() -> None:
    leaf = codegen.Test("ev.kind", "in", frozenset({"exec"}))
    deep: codegen.Expr = leaf
    for _ in range(400):  # deeper than the parser's nesting limit
        deep = codegen.Not(codegen.Not(deep))

    def closure(e: Event) -> bool:
        return e.kind == "exec"

    fn = codegen.function(deep, closure)
    assert fn is closure
    fn2 = codegen.function(codegen.Not(codegen.Not(leaf)), closure)
    assert fn2 is not closure
    assert fn2(EVENTS[0]) and not fn2(EVENTS[1])


def test_rule_text_never_reaches_the_source(rules_from) -> None:
    rs = rules_from("""
rules:
  - id: evil
    match: {proc.name: {in: ["x') or __import__('os').system('false') or ('"]},
            proc.args: {prefix: "')"}}
""")
    rule = rs.rules[0]
    assert not rule.check(ev(process={"comm": "x') or __import__('os').system('false') or ('",
                                      "cmdline": ["a", "b"]}))
    assert rule.check(ev(process={"comm": "x') or __import__('os').system('false') or ('",
                                  "cmdline": ["a", "')"]}))
    assert rule.predicate.__code__.co_filename == "<nodewarden rule>"
    consts = " ".join(map(str, rule.predicate.__code__.co_names))
    assert "__import__" not in consts and "system" not in consts


@settings(max_examples=300)
@given(st.text(alphabet="/ab. \udcff:", max_size=12), st.text(alphabet="/ab. :", max_size=12))
def test_process_basenames_are_os_path_basename(exe: str, argv0: str) -> None:
    p = Process(pid=1, ppid=0, starttime=0, comm="c", exe=exe, cmdline=(argv0, "x"))
    bare = exe.removesuffix(" (deleted)")
    assert p.exe_name == (os.path.basename(bare) if bare else "c")
    assert p.argv0 == os.path.basename(argv0)


def test_window_evicts_the_least_recently_observed_key() -> None:
    from agent.engine.schema import FIELDS
    from agent.engine.windows import Window

    w = Window(100.0, 2, [FIELDS["workspace.id"].get], max_keys=3)

    def seen(ws: str, t: float) -> int | None:
        return w.observe(ev(time=t, process={}, workspace={"id": ws}))

    for t, ws in enumerate(["a", "b", "c", "a", "b", "d"]):  # d evicts c, not a or b
        assert seen(ws, float(t)) is None
    assert list(w._keys) == [("a",), ("b",), ("d",)]
    assert seen("a", 10.0) == 3 and seen("b", 11.0) == 3  # their counts were kept
    assert seen("c", 12.0) is None  # c starts again from one


def test_a_rule_too_deep_to_compile_keeps_its_exceptions(rules_from) -> None:
    deep = "{kind: exec}"
    for _ in range(120):  # past the Python parser's nesting limit once rendered
        deep = f"{{not: {{not: {deep}}}}}"
    rs = rules_from(f"""
rules:
  - id: r
    match: {{proc.exe: {{prefix: /tmp/}}}}
    except:
      - {deep}
""")
    rule = rs.rules[0]
    assert rs.evaluate(ev(kind="exec", process={"exe": "/tmp/x"})) == []
    assert rule.check == rule.fires  # compiled on its first event: too deep, fires serves
    assert [m.rule.id for m in rs.evaluate(ev(kind="scan", process={"exe": "/tmp/x"}))] == ["r"]
    assert rs.evaluate(ev(kind="scan", process={"exe": "/usr/bin/x"})) == []


def test_rules_compile_on_their_first_event_not_at_load(rules_from) -> None:
    rs = rules_from("""
rules:
  - id: a
    match: {proc.name: {in: [xmrig]}}
  - id: b
    match: {proc.name: {in: [nmap]}}
""")
    a, b = rs.rules
    assert a.check == a._compile_then_check and b.check == b._compile_then_check
    assert [m.rule.id for m in rs.evaluate(ev(process={"exe": "/tmp/xmrig"}))] == ["a"]
    assert a.predicate.__code__.co_filename == "<nodewarden rule>"
    assert b.check == b._compile_then_check  # never a candidate yet


def test_index_by_executable_prefix_and_command_line_needle(rules_from) -> None:
    from agent.engine.ruleset import naive_evaluate

    rs = rules_from("""
rules:
  - id: memfd
    match: {proc.exe: {prefix: "/memfd:"}}
  - id: stratum
    match: {proc.cmdline_norm: {contains: [stratum, --donate-]}}
  - id: always
    match: {proc.uid: 0}
""")
    ids = [r.requirement for r in rs.rules]
    assert ids == [{"exe_prefix": frozenset({"/memfd:"})},
                   {"cmdline_norm_contains": frozenset({"stratum", "--donate-"})}, None]

    def cands(**p: Any) -> list[str]:
        return [r.id for r in rs.candidates(ev(process=p))]

    assert cands(exe="/usr/bin/ls", cmdline=["ls"]) == ["always"]
    assert cands(exe="/memfd:x (deleted)", cmdline=["x", "ST'RATUM'+tcp://"]) == [
        "memfd", "stratum", "always"]
    assert cands(exe="/bin/x", cmdline=["x", '--dona"te-level=1']) == ["stratum", "always"]
    for p in ({"exe": "/memfd:a", "uid": 0}, {"exe": "/x", "cmdline": ["x", "Stratum"]},
              {"exe": "/memfd", "cmdline": ["stra", "tum"]}):
        e = ev(process=p)
        assert [m.rule.id for m in rs.evaluate(e)] == [
            m.rule.id for m in naive_evaluate(rs.rules, e)]
