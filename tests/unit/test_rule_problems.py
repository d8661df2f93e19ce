"""Broken rule files: every problem reported as file:line naming the rule and the fix."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("text,expected", [
    # unknown field, with a did-you-mean
    ("rules:\n  - id: r\n    match:\n      proc.nmae: xmrig\n",
     "bad.yaml:4: rule 'r': unknown field 'proc.nmae' (did you mean 'proc.name'?)"),
    ("rules:\n  - id: r\n    severity: high\n    mach: {proc.name: x}\n",
     "bad.yaml:4: rule 'r': unknown field 'mach' (did you mean 'match'?)"),
    # bad regex
    ("rules:\n  - id: r\n    match:\n      proc.cmdline: {regex: '(unclosed'}\n",
     "bad.yaml:4: rule 'r': bad regex '(unclosed' for proc.cmdline: missing )"),
    # lookaround is not RE2
    ("rules:\n  - id: r\n    match:\n      proc.cmdline: {regex: 'a(?=b)'}\n",
     "RE2 syntax has no backreferences or lookaround"),
    # unknown list
    ("lists:\n  shells: [sh]\nrules:\n  - id: r\n    match: {proc.name: $shell}\n",
     "bad.yaml:5: rule 'r': unknown list '$shell' (did you mean 'shells'?)"),
    # unknown macro
    ("macros:\n  in_ws: {workspace.id: {exists: true}}\n"
     "rules:\n  - id: r\n    match: {macro: in_wss}\n",
     "bad.yaml:5: rule 'r': unknown macro 'in_wss' (did you mean 'in_ws'?)"),
    # macro cycle
    ("macros:\n  a: {macro: b}\n  b: {macro: a}\nrules:\n  - id: r\n    match: {macro: a}\n",
     "macro cycle: a -> b -> a"),
    # wrong types
    ("rules:\n  - id: r\n    match: {conn.dport: {in: ['3333']}}\n",
     "bad.yaml:3: rule 'r': conn.dport is port: 'in' needs integers, got '3333'; remove the "
     "quotes"),
    ("rules:\n  - id: r\n    enabled: yes please\n    match: {proc.name: x}\n",
     "bad.yaml:3: rule 'r': 'enabled' must be true or false"),
    ("rules:\n  - id: r\n    severity: critcal\n    match: {proc.name: x}\n",
     "bad.yaml:3: rule 'r': 'severity' must be one of info, low, medium, high, critical, not "
     "'critcal' (did you mean 'critical'?)"),
    ("rules:\n  - id: r\n    match: {proc.uid: {prefix: '0'}}\n",
     "bad.yaml:3: rule 'r': operator 'prefix' does not apply to proc.uid (integer)"),
    ("rules:\n  - id: r\n    match: {conn.dst: {cidr: 10.0.0.0/33}}\n",
     "is not a CIDR like 10.0.0.0/8"),
    ("rules:\n  - id: r\n    match: [proc.name, x]\n",
     "bad.yaml:3: rule 'r': a condition must be a non-empty mapping"),
    ("rules:\n  - id: r\n    match: {proc.name: x}\n    window: {seconds: -1, threshold: 5}\n",
     "window 'seconds' must be a positive number"),
    ("rules:\n  - id: r\n    match: {proc.name: x}\n    message: 'hi {proc.nme}'\n",
     "message placeholder '{proc.nme}' is not a field (did you mean 'proc.name'?)"),
    # YAML syntax
    ("rules:\n  - id: r\n    match: {proc.name: [x}\n",
     "bad.yaml:3: YAML syntax error"),
    ("rules:\n  - id: r\n\tmatch: x\n",
     "bad.yaml:3: YAML syntax error"),
    # duplicate key silently lost by YAML
    ("rules:\n  - id: r\n    match: {proc.name: x}\n    match: {proc.name: y}\n",
     "bad.yaml:4: duplicate key 'match'"),
    # structure
    ("rulez:\n  - id: r\n", "bad.yaml:1: unknown top-level key 'rulez' (did you mean 'rules'?)"),
    ("rules:\n  - id: Bad Id\n    match: {proc.name: x}\n", "bad.yaml:2: rule needs an 'id'"),
    ("rules:\n  - id: r\n", "bad.yaml:2: rule 'r': rule has no 'match' condition"),
    ("rules:\n  - {id: r, match: {proc.name: x}}\n  - {id: r, match: {proc.name: y}}\n",
     "bad.yaml:3: rule id 'r' is already defined at bad.yaml:2; to change a shipped rule use "
     "'overrides'"),
    ("rules:\n  - {id: r, match: {proc.name: x}}\noverrides:\n  - {id: q, severity: low}\n",
     "bad.yaml:4: override of unknown rule 'q'"),
    ("rules:\n  - {id: r, match: {proc.name: x}}\noverrides:\n  - {id: r, match: {}}\n",
     "override of 'r': 'match' cannot be overridden"),
    ("rules:\n  - id: r\n    match: {proc.name: x}\n    examples:\n      match:\n"
     "        - {process: {exe: 3}}\n",
     "bad.yaml:6: rule 'r': example event: 'exe' must be a string"),
    # windows, messages, examples, kinds, overrides (each compiled by its own module)
    ("rules:\n  - id: r\n    match: {proc.name: x}\n    window: {seconds: 5, threshold: 0}\n",
     "bad.yaml:4: rule 'r': window 'threshold' must be a positive integer"),
    ("rules:\n  - id: r\n    match: {proc.name: x}\n    window:\n      seconds: 5\n"
     "      threshold: 2\n      by: [workspace.di]\n",
     "bad.yaml:7: rule 'r': window 'by': unknown field 'workspace.di' (did you mean "
     "'workspace.id'?)"),
    ("rules:\n  - id: r\n    match: {proc.name: x}\n    window: {seconds: 5, threshold: 2, "
     "distinct: conn.dprt}\n",
     "window 'distinct': unknown field 'conn.dprt' (did you mean 'conn.dport'?)"),
    ("rules:\n  - id: r\n    match: {proc.name: x}\n    window: {seconds: 5, treshold: 2}\n",
     "bad.yaml:4: rule 'r': unknown window field 'treshold' (did you mean 'threshold'?)"),
    ("rules:\n  - id: r\n    match: {proc.name: x}\n    message: 7\n",
     "bad.yaml:4: rule 'r': 'message' must be a string"),
    ("rules:\n  - id: r\n    on: exce\n    match: {proc.name: x}\n",
     "bad.yaml:3: rule 'r': 'on' takes event kinds (exec, scan, connect, accept, close, exit, "
     "file, ptrace, setuid, memfd, mount, setns, unshare, module, bpf, udp, dns), "
     "not 'exce' (did you mean 'exec'?)"),
    ("rules:\n  - id: r\n    on: exec\n    match: {file.path: /etc/shadow}\n",
     "bad.yaml:3: rule 'r': the rule tests file.* fields, which only file events have, but is "
     "on exec: add file to 'on' (or drop 'on')"),
    ("rules:\n  - id: r\n    match: {proc.name: x}\n    examples:\n      mtch: []\n",
     "bad.yaml:5: rule 'r': unknown examples key 'mtch' (did you mean 'match'?)"),
    ("rules:\n  - id: r\n    match: {proc.name: x}\n    examples:\n      match:\n"
     "        - {repeat: {count: 0}}\n",
     "bad.yaml:6: rule 'r': example event: 'repeat' count must be between 1 and 10000"),
    ("rules:\n  - id: r\n    match: {proc.name: x}\n    examples:\n      match:\n"
     "        - {repeat: {count: 2, increment: process.exe}, process: {exe: /x}}\n",
     "example event: 'increment' process.exe must name an integer field"),
    ("rules:\n  - {id: r, match: {proc.name: x}}\noverrides:\n  - {id: r, severity: severe}\n",
     "bad.yaml:4: override of 'r': 'severity' must be one of info, low, medium, high, critical, "
     "not 'severe'"),
    ("rules:\n  - {id: r, match: {proc.name: x}}\noverrides:\n  - {severity: low}\n",
     "bad.yaml:4: an override needs the 'id' of the rule it changes"),
])
def test_problem_is_reported_with_file_line_and_fix(problems_in, text, expected):
    problems = problems_in(text)
    assert problems, "the broken file was accepted"
    assert any(expected in p for p in problems), problems


def test_every_problem_of_a_file_is_reported(problems_in):
    problems = problems_in("""\
rules:
  - id: one
    match: {proc.nmae: x}
  - id: two
    match: {proc.exe: {regex: '('}}
  - id: three
    severity: huge
    match: {proc.name: x}
""")
    assert [p.split(":")[1] for p in problems] == ["3", "5", "7"]


def test_problems_from_several_files_name_their_file(tmp_path):
    from agent.engine import loader

    (tmp_path / "a.yaml").write_text("lists:\n  x: [1]\n")
    (tmp_path / "b.yaml").write_text("lists:\n  x: [2]\n")
    _, problems = loader.check([str(tmp_path)])
    assert len(problems) == 1
    assert str(problems[0]).startswith(f"{tmp_path}/b.yaml:2: list 'x' is already defined at "
                                       f"{tmp_path}/a.yaml:2")


def test_empty_and_missing_paths(tmp_path):
    from agent.engine import loader

    (tmp_path / "empty.yaml").write_text("")
    rs, problems = loader.check([str(tmp_path / "empty.yaml")])
    assert problems == [] and rs is not None and len(rs) == 0
    rs, problems = loader.check([str(tmp_path / "nope.yaml")])
    assert rs is None and "cannot read rule file" in str(problems[0])
    (tmp_path / "sub").mkdir()
    rs, problems = loader.check([str(tmp_path / "sub")])
    assert rs is None and "no rule files" in str(problems[0])


def test_broken_macro_is_reported_even_when_unused(problems_in):
    problems = problems_in("macros:\n  unused: {proc.nmae: x}\n"
                           "rules:\n  - {id: r, match: {proc.name: x}}\n")
    assert problems == [("bad.yaml:2: unknown field 'proc.nmae' (did you mean 'proc.name'?); "
                         "fields are listed in rules/README.md")]


def test_broken_macro_used_by_two_rules_is_reported_once(problems_in):
    problems = problems_in("macros:\n  m: {proc.nmae: x}\nrules:\n  - {id: a, match: {macro: m}}\n"
                           "  - {id: b, match: {macro: m}}\n")
    assert len(problems) == 1
