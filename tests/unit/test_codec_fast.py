"""The codec's fast path (typed structs decoded by msgspec) reads every line to exactly the
event, or exactly the error, that the lenient reader (`event_from_json` over `json.loads`)
gives: it takes only what it is sure of and hands the rest over (issue 10, target 6)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.codec import EventFormatError, event_from_json, event_from_line, event_line, read_events
from agent.model import Connection, Event, Process, process_identity


def _slow(line: str) -> str:
    try:
        return repr(event_from_json(json.loads(line)))
    except (EventFormatError, ValueError) as e:
        return f"error: {e}"
    except RecursionError:  # what the reader says of it (json.loads gives up)
        return "error: JSON nested too deeply to be an event"


def _fast(line: str) -> str:
    try:
        return repr(event_from_line(line))
    except EventFormatError as e:
        return f"error: {e}"


# lines a person or a recording may hold, the odd ones included
EDGES = [
    "{}", '{"kind": null}', '{"kind": "connect"}', '{"kind": "fork"}', '{"time": 1}',
    '{"time": 1e400}', '{"time": "2026-11-23T10:00:00Z"}', '{"time": true}', '{"time": null}',
    '{"process": null}', '{"process": {}}', '{"process": []}', '{"process": {"pid": 1.0}}',
    '{"process": {"pid": 99999999999999999999999}}', '{"process": {"pid": null}}',
    '{"process": {"exe": "/usr/bin/python3.11-something-long"}}',
    '{"process": {"cmdline": ["/opt/a b/prog", "-x"]}}', '{"process": {"cmdline": []}}',
    '{"process": {"cmdline": "sh -c \'curl x | sh\'"}}', '{"process": {"cmdline": "a \'b"}}',
    '{"process": {"comm": null, "exe": ""}}', '{"process": {"comm": "x", "exe": null}}',
    '{"process": {"cmdline_truncated": true}}', '{"process": {"cmdline_truncated": null}}',
    '{"process": {"cmdline_truncated": true, "cmdline_cut_bytes": 77}}',
    '{"process": {"id": 5}}', '{"process": {"id": "00ff"}, "container": {"id": "c1"}}',
    '{"process": {"container_id": null}, "container": {"id": "c1"}}',
    '{"process": {"ancestors": null}}', '{"process": {"ancestors": {}}}',
    '{"process": {"ancestors": [{"exe": "/bin/sh", "ancestors": [1]}]}}',
    '{"process": {"ancestors": [{"exe": "/bin/sh"}, {"cmdline": ["init"]}, {}]}}',
    '{"process": {"ancestors": [{"bogus": 1}]}}', '{"process": {"bogus": 1}}',
    '{"container": null}', '{"container": {}}', '{"container": []}', '{"container": 0}',
    '{"container": {"id": 3}}', '{"workspace": {"id": null}}', '{"workspace": {"x": 1}}',
    '{"pod": {}}', '{"pod": null}', '{"pod": {"name": null}}', '{"pod": {"labels": []}}',
    '{"pod": {"labels": {"a": 1}}}', '{"pod": {"labels": {"a": "b"}, "uid": "u"}}',
    '{"pod": {"labels": "x"}}', '{"connection": {}}', '{"connection": {"src": null}}',
    '{"connection": {"dst": "::1"}}', '{"connection": {"dst": "::ffff:10.0.0.1"}}',
    '{"connection": {"dst": "10.0.0.300"}}', '{"connection": {"src": "x", "dst": "y"}}',
    '{"connection": {"dst": "1.2.3.4", "family": "ipv5"}}',
    '{"connection": {"dst": "1.2.3.4", "direction": "sideways", "sport": "x"}}',
    '{"connection": {"dst": "1.2.3.4", "sport": true}}',
    '{"connection": {"dst": "bad", "sport": "x"}}', '{"connection": []}',
    '{"repeat": 3}', '{"repeat": [1, {"a": 2}]}', '{"kind": "exec", "kind": "close"}',
    '{"process": {"comm": "a\\udc80b", "cmdline": ["\\udcff", "\\ud83d\\ude00"]}}',
    '{"process": {"exe": "/tmp/\\u00e9t\\u00e9"}}', '[]', '"exec"', '{not json', '',
    '{"process": {"comm": "tab\\there"}}', '{"process": {"comm": "raw\ttab"}}',
    # hostile: odd comms, huge texts, wrong types where the fast path reads without a check
    '{"process": {"comm": "a) (b", "exe": "/opt/odd/a) (b", "cmdline": ["./a) (b"]}}',
    '{"process": {"comm": "' + "x" * 100_000 + '", "cmdline": ["' + "y" * 100_000 + '"]}}',
    '{"process": {"ancestors": [{"cmdline": [1, 2]}]}}', '{"process": {"pid": "7"}}',
    '{"process": {"ancestors": [{"comm": "sh"}], "id": "x"}, "kind": "EXEC"}',
    '{"process": {"ancestors": [[]]}}', '{"process": {"ancestors": [null]}}',
    '{"process": {"ancestors": "' + "[" * 1000 + '"}}', '[' * 100_000 + ']' * 100_000,
    '{"process": {"ancestors": ' + "[" * 100_000 + "]" * 100_000 + '}}',
    '{"connection": {"dst": "1.2.3.4", "count": -5, "netns": 1.5}}',
]


@pytest.mark.parametrize("line", EDGES)
def test_an_odd_line_reads_as_the_lenient_reader_reads_it(line: str) -> None:
    assert _fast(line) == _slow(line)


_ODD: Any = st.sampled_from([None, {}, [], "", 0, 1, -1, True, 1.5, "x", "/usr/bin/curl",
                             "10.0.0.1", "::1", "inbound", "ipv6", "exec", ["a", "b"], [1]])


def _maybe(keys: dict[str, Any]) -> Any:
    return st.fixed_dictionaries({}, optional={k: st.one_of(_ODD, v) for k, v in keys.items()})


_PROC = _maybe({"pid": st.integers(), "comm": st.text(max_size=20), "exe": st.text(max_size=9),
                "cmdline": st.lists(st.text(max_size=5), max_size=3),
                "cmdline_truncated": st.booleans(), "cmdline_cut_bytes": st.integers(0, 9),
                "container_id": st.text(max_size=3), "uid": st.integers()})
_EVENT = _maybe({
    "kind": st.sampled_from(["exec", "connect", "close", "fork"]),
    "time": st.floats(allow_nan=False), "repeat": _ODD,
    "process": st.one_of(_PROC, _PROC.map(lambda p: dict(p, ancestors=[p, {}]))),
    "container": _maybe({"id": st.text(max_size=3)}),
    "pod": _maybe({"name": st.text(max_size=3),
                   "labels": st.dictionaries(st.text(max_size=2), st.text(max_size=2))}),
    "connection": _maybe({"src": st.sampled_from(["10.0.0.1", "::1", "1.2.3", "fe80::1"]),
                          "dst": st.sampled_from(["203.0.113.9", "::ffff:1.2.3.4", "nope"]),
                          "sport": st.integers(0, 65535), "family": st.just("ipv4"),
                          "direction": st.just("inbound")}),
})


@settings(max_examples=400, deadline=None)
@given(_EVENT)
def test_any_event_reads_as_the_lenient_reader_reads_it(obj: dict[str, Any]) -> None:
    line = json.dumps(obj)
    assert _fast(line) == _slow(line)


def test_ancestors_repeated_across_a_file_are_read_once_and_stay_right(tmp_path: Path) -> None:
    shell = Process(pid=10, ppid=1, starttime=3, comm="bash", exe="/usr/bin/bash",
                    cmdline=("bash",))
    lines = []
    for i, name in enumerate(["ls", "git", "ls"]):
        p = Process(pid=20 + i, ppid=10, starttime=5 + i, comm=name, exe=f"/usr/bin/{name}",
                    cmdline=(name,))
        conn = Connection("10.0.0.2", 4000 + i, "203.0.113.9", 443) if i == 1 else None
        lines.append(event_line(Event("connect" if conn else "exec", float(i), p, (shell,),
                                      workspace="ws", connection=conn)))
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    got = list(read_events(str(path)))
    assert [repr(e) for e in got] == [_slow(line) for line in lines]
    assert got[0].ancestors[0] is got[2].ancestors[0]
    assert got[1].connection is not None and got[1].connection.dst_ip == 0xFFFFCB007109


def test_events_with_a_detail_replay_among_fast_ones(tmp_path: Path) -> None:
    # a line with a detail is no typed struct: the lenient reader reads it, in its place
    from agent import details

    proc = Process(pid=7, ppid=1, starttime=3, comm="sh", exe="/usr/bin/dash",
                   cmdline=("sh", "-c", "echo x > /etc/cron.d/x"))
    events = [Event("exec", 1.0, proc),
              Event("file", 2.0, proc, detail=details.FileOp("/etc/cron.d/x", "create", 65)),
              Event("exec", 3.0, proc)]
    path = tmp_path / "rec.jsonl"
    path.write_text("".join(event_line(e) + "\n" for e in events))
    back = list(read_events(str(path)))
    assert [event_line(e) for e in back] == [event_line(e) for e in events]
    assert back[1].detail == details.FileOp("/etc/cron.d/x", "create", 65)


def test_a_replayed_process_shows_the_identity_it_was_recorded_with(tmp_path: Path) -> None:
    # the identity is made when first read (most events are judged without it): a recorded
    # process replays with the same `id` in its JSON, and a changed ppid makes a new one
    proc = Process(pid=77, ppid=5, starttime=123456, comm="sh", exe="/bin/sh",
                   cmdline=("sh", "-c", "true"))
    line = event_line(Event(kind="exec", time=1.0, process=proc))
    path = tmp_path / "one.jsonl"
    path.write_text(line + "\n")
    (replayed,) = read_events(str(path))
    assert replayed.process.to_json()["id"] == json.loads(line)["process"]["id"]
    assert replayed.process.id == proc.id == process_identity(77, 5, 123456)
    other = dataclasses.replace(replayed.process, ppid=1)
    assert other.id == process_identity(77, 1, 123456) != proc.id


def test_a_line_nested_too_deeply_is_an_error_naming_it_not_a_crash(tmp_path: Path) -> None:
    good = event_line(Event("exec", 1.0, Process(7, 1, 3, "sh", "/bin/sh", ("sh",))))
    deep = '{"process": {"ancestors": ' + "[" * 100_000 + "]" * 100_000 + "}}"
    path = tmp_path / "hostile.jsonl"
    path.write_text(good + "\n" + deep + "\n")
    with pytest.raises(EventFormatError, match=r"hostile.jsonl:2: JSON nested too deeply"):
        list(read_events(str(path)))
