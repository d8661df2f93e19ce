"""Decisions to findings: the JSON object of the DESIGN contract, and a table for people.

A finding carries the marker's workspace id but never another environ value.
"""

from __future__ import annotations

import codecs
import time as _time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from agent.decide import Decision
from agent.text import human, json_line


def iso_time(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{int(t * 1000) % 1000:03d}Z"


def finding(decision: Decision, host: str, now: float | None = None) -> dict[str, Any]:
    """The finding object for one decision (see DESIGN.md, "Finding")."""
    m = decision.match
    ev = m.event
    rule = m.rule
    p = ev.process
    proc = p.to_json()
    proc["ancestors"] = [{"pid": a.pid, "comm": a.comm} for a in ev.ancestors]
    out: dict[str, Any] = {
        "time": iso_time(_time.time() if now is None else now),
        "host": host,
        "rule": rule.id,
        "severity": rule.severity,
        "tags": list(rule.tags),
        "source": ev.kind,
        "action": rule.action,
        "mode": decision.mode,
        "outcome": decision.outcome,
        "process": proc,
        "workspace": {"id": ev.workspace} if ev.workspace else None,
        "container": {"id": p.container_id} if p.container_id else None,
        "pod": ev.pod.to_json() if ev.pod else None,
        "connection": ev.connection.to_json() if ev.connection else None,
        "message": m.message,
    }
    if decision.reason:
        out["reason"] = decision.reason
    return out


def _cell(v: Any, width: int) -> str:
    s = "-" if v in (None, "") else str(v)
    # a hostile comm or cmdline must not forge table rows or terminal escapes
    s = human(s[:width])
    return s if len(s) <= width else s[: width - 1] + "…"


COLUMNS = (("SEVERITY", 8), ("RULE", 28), ("OUTCOME", 10), ("PID", 7), ("COMM", 16),
           ("WORKSPACE", 16), ("MESSAGE", 60))


def table_header() -> str:
    return "  ".join(name.ljust(w) for name, w in COLUMNS).rstrip()


def table_row(f: dict[str, Any]) -> str:
    ws = (f.get("workspace") or {}).get("id")
    vals = (f["severity"], f["rule"], f["outcome"], f["process"]["pid"], f["process"]["comm"],
            ws, f["message"])
    return "  ".join(_cell(v, w).ljust(w) for v, (_, w) in zip(vals, COLUMNS)).rstrip()


class FindingWriter:
    """Writes findings as they happen, as JSON lines or as a table (header once)."""

    def __init__(self, out: TextIO, fmt: str) -> None:
        self.out = out
        self.fmt = fmt
        self.count = 0
        # a stream that cannot carry UTF-8 gets every non-ASCII character as an escape
        self.ascii_only = not _is_utf8(getattr(out, "encoding", None) or "utf-8")

    def write(self, findings: Sequence[dict[str, Any]]) -> None:
        for f in findings:
            if self.fmt == "json":
                self.out.write(json_line(f, self.ascii_only) + "\n")
            else:
                if self.count == 0:
                    self.out.write(table_header() + "\n")
                row = table_row(f)
                if self.ascii_only:
                    row = row.encode("ascii", "backslashreplace").decode("ascii")
                self.out.write(row + "\n")
            self.count += 1
        if findings:
            self.out.flush()


def _is_utf8(encoding: str) -> bool:
    try:
        return codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return False
