"""Recorded events: `replay` takes the time as a finding prints it, or as `--record` writes it
(issue 13, defect 12)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from agent.cli import main
from agent.codec import EventFormatError, event_from_json
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
