"""Decisions to findings: the `Finding` value, its JSON form (the DESIGN contract), and a
table for people.

A finding carries the marker's workspace id but never another environ value. Every sink
takes a `Finding`; `to_json()` is the one place its wire form is written, so stdout, the
findings file, the webhook and the payload builders cannot drift apart.
"""

from __future__ import annotations

import codecs
import time as _time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TextIO

from agent.decide import Decision
from agent.model import Connection, EventKind, Pod, Process, Severity
from agent.text import human, json_line


def iso_time(t: float) -> str:
    """`t` (Unix seconds) as the finding's time: UTC, milliseconds, a Z."""
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{int(t * 1000) % 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class Finding:
    """One decision as it is reported: what matched, where, and what was done."""

    time: float                 # Unix seconds, when it was reported
    host: str
    rule: str
    severity: Severity
    tags: tuple[str, ...]
    source: EventKind           # the kind of event that matched
    action: str
    mode: str
    outcome: str
    process: Process
    message: str
    ancestors: tuple[Process, ...] = ()
    workspace: str = ""
    pod: Pod | None = None
    connection: Connection | None = None
    reason: str = ""
    # what a file, ptrace, mount, dns ... event was about (agent.details), or None
    detail: Any = None

    @classmethod
    def of(cls, decision: Decision, host: str, now: float | None = None) -> Finding:
        """The finding for one decision, reported at `now` (default: the wall clock)."""
        m = decision.match
        ev = m.event
        rule = m.rule
        return cls(time=_time.time() if now is None else now, host=host, rule=rule.id,
                   severity=Severity(rule.severity), tags=tuple(rule.tags),
                   source=EventKind(ev.kind),
                   action=rule.action, mode=decision.mode, outcome=decision.outcome,
                   process=ev.process, message=m.message, ancestors=ev.ancestors,
                   workspace=ev.workspace, pod=ev.pod, connection=ev.connection,
                   reason=decision.reason, detail=ev.detail)

    @property
    def container(self) -> str:
        """The container id of the process, "" on the host."""
        return self.process.container_id

    @property
    def time_text(self) -> str:
        """The time as the JSON form writes it."""
        return iso_time(self.time)

    def slim(self, message_limit: int) -> Finding:
        """A copy without the command lines and ancestry, the message cut to
        `message_limit`: what a sink that holds findings for minutes keeps."""
        p = self.process
        return replace(self, process=Process(p.pid, p.ppid, p.starttime, p.comm, p.exe),
                       ancestors=(), message=self.message[:message_limit])

    def to_json(self) -> dict[str, Any]:
        """The finding object of DESIGN.md ("Finding")."""
        p = self.process
        proc = p.to_json()
        proc["ancestors"] = [{"pid": a.pid, "comm": a.comm} for a in self.ancestors]
        out: dict[str, Any] = {
            "time": iso_time(self.time),
            "host": self.host,
            "rule": self.rule,
            "severity": self.severity.value,
            "tags": list(self.tags),
            "source": self.source.value,
            "action": self.action,
            "mode": self.mode,
            "outcome": self.outcome,
            "process": proc,
            "workspace": {"id": self.workspace} if self.workspace else None,
            "container": {"id": p.container_id} if p.container_id else None,
            "pod": self.pod.to_json() if self.pod else None,
            "connection": self.connection.to_json() if self.connection else None,
            "message": self.message,
        }
        if self.detail is not None:
            from agent import details  # (made the detail: imported already)

            # under its family's name: "file": {"path": ..., "op": ...}
            family, obj = details.to_json(self.detail)
            out[family] = obj
        if self.reason:
            out["reason"] = self.reason
        return out


def _cell(v: Any, width: int) -> str:
    s = "-" if v in (None, "") else str(v)
    # a hostile comm or cmdline must not forge table rows or terminal escapes
    s = human(s[:width])
    return s if len(s) <= width else s[: width - 1] + "…"


COLUMNS = (("SEVERITY", 8), ("RULE", 28), ("OUTCOME", 10), ("PID", 7), ("COMM", 16),
           ("WORKSPACE", 16), ("MESSAGE", 60))


def table_header() -> str:
    """The table's column names."""
    return "  ".join(name.ljust(w) for name, w in COLUMNS).rstrip()


def table_row(f: Finding) -> str:
    """One finding as a table row, every cell one line of printable text."""
    vals = (f.severity.value, f.rule, f.outcome, f.process.pid, f.process.comm, f.workspace,
            f.message)
    return "  ".join(_cell(v, w).ljust(w) for v, (_, w) in zip(vals, COLUMNS, strict=True)).rstrip()


class FindingWriter:
    """Writes findings as they happen, as JSON lines or as a table (header once)."""

    def __init__(self, out: TextIO, fmt: str) -> None:
        self.out = out
        self.fmt = fmt
        self.count = 0
        # a stream that cannot carry UTF-8 gets every non-ASCII character as an escape
        self.ascii_only = not _is_utf8(getattr(out, "encoding", None) or "utf-8")

    def write(self, findings: Sequence[Finding]) -> None:
        """Write `findings` and flush (a log shipper reads the stream as it grows)."""
        for f in findings:
            if self.fmt == "json":
                self.out.write(json_line(f.to_json(), self.ascii_only) + "\n")
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
