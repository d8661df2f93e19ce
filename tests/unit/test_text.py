"""Workload text: the reversible scheme for bytes that are not UTF-8 (agent/text.py), and
every exit that writes such text (findings, table, logs, Slack, Events, records, rules)."""

from __future__ import annotations

import dataclasses
import io
import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import text
from agent.codec import event_from_json, event_to_json, process_from_json
from agent.decide import Decision, Protection, decide
from agent.errors import RuleError
from agent.metrics import Metrics
from agent.model import Event, Pod, Process
from agent.pipeline import Agent
from agent.sinks import findings, kubeevents, slack
from agent.sources import kevents
from tests.unit.test_kernel_events import record

BAD = b"/tmp/bad\xff\xfedir/kw"


@given(st.binary(max_size=300))
def test_any_bytes_round_trip_through_a_json_line(data):
    line = text.json_line({"exe": text.decode(data)})
    line.encode("utf-8")  # valid UTF-8 (strict), whatever the bytes were
    assert text.encode(json.loads(line)["exe"]) == data


@given(st.text(max_size=100))
def test_valid_text_keeps_its_characters_in_json(s):
    line = text.json_line({"s": s})
    assert json.loads(line)["s"] == s
    assert text.json_line({"s": s}, ascii_only=True).isascii()


def test_json_writes_bad_bytes_as_escapes_and_an_emoji_as_itself():
    line = text.json_line({"exe": text.decode("😀".encode() + b"\xff")})
    assert line == '{"exe":"😀\\udcff"}'


@given(st.text(max_size=100))
def test_human_text_is_one_printable_line_and_reversible(s):
    out = text.human(s)
    assert out.isprintable()
    out.encode("utf-8")
    # every backslash starts an escape: the original comes back
    assert out.encode("ascii", "backslashreplace").decode("unicode_escape") == s


@pytest.mark.parametrize(("s", "want"), [
    ("kw", "kw"),
    ("a b😀", "a b😀"),
    ("k\nfake line", "k\\nfake line"),
    ("back\\slash", "back\\\\slash"),
    ("\x1b[31mred", "\\x1b[31mred"),
    ("\u202egnp.exe", "\\u202egnp.exe"),  # right-to-left override
    (text.decode(b"bad\xff"), "bad\\udcff"),
])
def test_human_escapes(s, want):
    assert text.human(s) == want


def test_kernel_record_names_decode_reversibly():
    e = kevents.decode(record(kevents.EXEC, 42, comm=b"k\xffw", filename=BAD))
    assert (text.encode(e.comm), text.encode(e.filename)) == (b"k\xffw", BAD)


def test_a_recorded_event_round_trips_bytes_and_the_cut():
    p = Process(pid=7, ppid=1, starttime=5, comm=text.decode(b"k\xff"), exe=text.decode(BAD),
                cmdline=(text.decode(BAD), "x"), cmdline_cut=1234)
    ev = event_from_json(json.loads(text.json_line(event_to_json(Event("exec", 1.0, p, (p,))))))
    again = ev.process
    assert ev.ancestors[0].cmdline_truncated and text.encode(ev.ancestors[0].exe) == BAD
    assert (text.encode(again.exe), text.encode(again.comm)) == (BAD, b"k\xff")
    assert (again.cmdline, again.cmdline_cut, again.cmdline_truncated) == (p.cmdline, 1234, True)
    assert process_from_json({"exe": "/x", "cmdline_truncated": True}).cmdline_truncated


# -- rules on text that was not UTF-8 -------------------------------------------------------

RULES = r"""
rules:
  - id: by-regex
    match: {proc.cmdline: {regex: 'stratum\+tcp://'}}
  - id: by-escape
    match: {proc.exe: {regex: '\\udcff\\udcfe'}}
  - id: by-glob
    match: {proc.exe: {glob: '/tmp/bad*/kw'}}
  - id: by-token
    match: {proc.args: {prefix: [stratum+tcp://]}}
  - id: truncated
    match: {proc.cmdline_truncated: true}
"""


def test_rules_match_text_that_was_not_utf8_and_never_crash(rules_from):
    rs = rules_from(RULES)
    exe = text.decode(BAD)
    p = Process(pid=9, ppid=1, starttime=1, comm="kw", exe=exe,
                cmdline=(exe, text.decode(b"\xff" * 10), "-o", "stratum+tcp://p:3333"))
    got = sorted(m.rule.id for m in rs.evaluate(Event("exec", 0.0, p)))
    assert got == ["by-escape", "by-glob", "by-regex", "by-token"]


def test_the_truncated_field_is_a_boolean(rules_from):
    rs = rules_from(RULES)
    cut = Process(pid=9, ppid=1, starttime=1, comm="kw", cmdline=("kw",), cmdline_cut=10)
    assert [m.rule.id for m in rs.evaluate(Event("exec", 0.0, cut))] == ["truncated"]
    with pytest.raises(RuleError, match="boolean"):
        rules_from("rules:\n  - id: r\n    match: {proc.cmdline_truncated: 'yes'}\n")


# -- the exits ------------------------------------------------------------------------------

def _finding(rules_from, comm: str, exe: str, reason: str = "") -> findings.Finding:
    rs = rules_from("rules:\n  - id: r\n    severity: high\n    action: kill\n"
                    "    match: {proc.exe: {prefix: [/tmp/]}}\n    message: 'ran {proc.exe}'\n")
    p = Process(pid=9, ppid=1, starttime=1, comm=comm, exe=exe, cmdline=(exe,))
    ev = Event("exec", 0.0, p, pod=None)
    [m] = rs.evaluate(ev)
    outcome = "protected" if reason else "would_kill"
    return findings.Finding.of(Decision(m, "audit", outcome, reason), "node-1", now=0.0)


def test_findings_table_and_a_non_utf8_stream(rules_from):
    f = _finding(rules_from, "k\nw", text.decode(BAD))
    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    findings.FindingWriter(out, "json").write([f])
    out.flush()
    line = out.buffer.getvalue()
    assert text.encode(json.loads(line)["process"]["exe"]) == BAD
    table = io.StringIO()
    findings.FindingWriter(table, "table").write([f])
    assert table.getvalue().count("\n") == 2 and "k\\nw" in table.getvalue()


def test_slack_and_event_messages_are_one_line_of_escaped_text(rules_from):
    f = _finding(rules_from, "k\nw", text.decode(BAD))
    f = dataclasses.replace(f, pod=Pod("ns", "p", "u"))
    msg = json.dumps(slack.message(f))
    assert "\\\\udcff" in msg and "k\\\\nw" in msg
    event = kubeevents.event_message(f)
    assert event.isprintable() and "k\\nw" in event and "\\udcff" in event


def test_the_protected_log_line_escapes_the_path_in_its_reason(rules_from, caplog):
    forged = "2026-12-01 WARNING nodewarden: FORGED"
    rs = rules_from("rules:\n  - id: r\n    severity: high\n    action: kill\n"
                    "    match: {proc.exe: {prefix: [/tmp/]}}\n")
    p = Process(pid=9, ppid=1, starttime=1, comm="sshd", exe="/tmp/k\n" + forged)
    ev = Event("exec", 0.0, p)
    [m] = rs.evaluate(ev)
    d = decide(m, "enforce", Protection())
    assert d.outcome == "protected" and d.reason.endswith("\n" + forged)
    agent = Agent(None, None, lambda done: None, Metrics(), 1.0)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="nodewarden"):
        agent._finish([d])
    [logged] = [r.getMessage() for r in caplog.records if "PROTECTED" in r.getMessage()]
    assert "\n" not in logged and "k\\n" + forged in logged
