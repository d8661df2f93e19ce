"""The event codec (agent/codec.py): the recorded-event format `--record` writes, `replay`
reads and rule examples use. `replay` takes the time as a finding prints it, or as
`--record` writes it (issue 13, defect 12); a recorded line reads back as the event it was."""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path

import pytest

from agent.cli import main
from agent.codec import (
    EventFormatError,
    event_from_json,
    event_from_line,
    event_line,
    event_to_json,
    read_events,
)
from agent.model import Connection, Event, Pod, Process
from agent.sinks.findings import iso_time

MINER = {"kind": "exec", "process": {"exe": "/tmp/xmrig", "cmdline": ["xmrig"]}}


@pytest.mark.parametrize("given,seconds", [
    (1795428000.123, 1795428000.123), (1795428000, 1795428000.0),
    ("2026-11-23T10:00:00.123Z", 1795428000.123), ("2026-11-23T10:00:00Z", 1795428000.0),
    ("2026-11-23T11:00:00+01:00", 1795428000.0), ("2026-11-23T10:00:00", 1795428000.0),
])
def test_time_as_epoch_seconds_or_iso_8601(given: object, seconds: float) -> None:
    assert event_from_json({**MINER, "time": given}).time == pytest.approx(seconds)


def test_the_time_a_finding_prints_reads_back() -> None:
    t = 1795428000.123
    assert event_from_json({**MINER, "time": iso_time(t)}).time == pytest.approx(t)


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01T00:00:00Z", True, [1], float("nan")])
def test_a_time_that_is_neither_is_refused_with_both_forms_named(bad: object) -> None:
    with pytest.raises(EventFormatError, match="seconds since the epoch or an ISO-8601"):
        event_from_json({**MINER, "time": bad})


def test_replay_of_events_with_iso_times(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({**MINER, "time": "2026-11-23T10:00:00.123Z"}) + "\n")
    out, err = io.StringIO(), io.StringIO()
    code = main(["replay", str(events), "--format", "json"], out, err)
    assert code == 1, err.getvalue()  # found the miner
    assert json.loads(out.getvalue().splitlines()[0])["process"]["exe"] == "/tmp/xmrig"


def _full_event() -> Event:
    parent = Process(pid=10, ppid=1, starttime=3, comm="bash", exe="/usr/bin/bash",
                     cmdline=("bash", "-l"))
    p = Process(pid=11, ppid=10, starttime=4, comm="curl", exe="/usr/bin/curl",
                cmdline=("curl", "-o", "x", "http://203.0.113.9/x"), uid=33333,
                container_id="c" * 64, netns=4026531992)
    return Event("connect", 1795428000.5, p, (parent,), workspace="ws-1",
                 pod=Pod("tenant", "ws-1-pod", "u-1", {"app": "ide"}),
                 connection=Connection("10.0.0.2", 40000, "203.0.113.9", 443, netns=4026531992))


def test_a_recorded_line_reads_back_as_the_event_it_was() -> None:
    ev = _full_event()
    again = event_from_line(event_line(ev))
    assert event_to_json(again) == event_to_json(ev)
    assert (again.process.container_id, again.pod and again.pod.labels) == ("c" * 64,
                                                                            {"app": "ide"})
    assert again.connection is not None and again.connection.dst_ip == ev.connection.dst_ip


def test_event_to_json_is_the_format_event_to_json_gave() -> None:
    ev = _full_event()
    js = event_to_json(ev)
    assert js == event_to_json(ev)
    assert js["workspace"] == {"id": "ws-1"} and js["container"] == {"id": "c" * 64}
    assert js["process"]["ancestors"] == [{"pid": 10, "comm": "bash", "exe": "/usr/bin/bash",
                                           "cmdline": ["bash", "-l"],
                                           "cmdline_truncated": False}]
    assert "\n" not in event_line(ev)


@pytest.mark.parametrize("line,why", [
    ("{not json", "Expecting property name"),
    ('{"kind": "fork"}', "'kind' must be one of exec, scan, connect, accept, close, exit"),
    ('{"process": {"exe": 5}}', "'exe' must be a string"),
    ('{"proces": {}}', "unknown key 'proces' in event"),
])
def test_a_bad_line_is_refused_naming_the_file_line_and_key(tmp_path: Path, line: str,
                                                            why: str) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(MINER) + "\n\n" + line + "\n")
    got = read_events(str(events))
    assert next(got).process.exe == "/tmp/xmrig"
    with pytest.raises(EventFormatError, match=f"^{events}:3: ") as e:
        next(got)
    assert why in str(e.value)


def test_the_engine_reads_events_through_the_codec_not_through_sources() -> None:
    """Rule examples are events in the recorded format; the engine needs no sensor for
    them, so agent/engine/ imports nothing from agent/sources/."""
    engine = Path(__file__).resolve().parents[2] / "agent" / "engine"
    imports = {(f.name, node.module or "") for f in engine.glob("*.py")
               for node in ast.walk(ast.parse(f.read_text()))
               if isinstance(node, ast.ImportFrom)}
    assert [i for i in imports if i[1].startswith("agent.sources")] == []
    assert ("examples.py", "agent.codec") in imports
