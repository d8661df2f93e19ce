"""Findings for sink tests, built the way the agent builds them (a Finding of real values)."""

from __future__ import annotations

from agent.model import Connection, EventKind, Pod, Process, Severity
from agent.sinks.findings import Finding

WHEN = 1_795_428_000.0  # 2026-11-23T10:00:00Z


def sample(rule: str = "crypto-miner-exec", severity: str = "critical", ws: str = "ws-1",
           exe: str = "/tmp/xmrig", pid: int = 4242, outcome: str = "killed",
           mode: str = "enforce", message: str = "known miner started", comm: str = "xmrig",
           pod: Pod | None = None, connection: Connection | None = None,
           cmdline: tuple[str, ...] | None = None, container: str = "") -> Finding:
    """A finding of an exec of `exe`, with every part a test may want to vary."""
    p = Process(pid, 4200, 123456, comm, exe,
                cmdline=(exe, "-o", "pool:3333") if cmdline is None else cmdline,
                uid=1000, container_id=container)
    return Finding(time=WHEN, host="node-1", rule=rule, severity=Severity(severity),
                   tags=("T1496",), source=EventKind.EXEC, action="kill", mode=mode,
                   outcome=outcome,
                   process=p, message=message, ancestors=(Process(4200, 1, 1, "bash"),),
                   workspace=ws, pod=pod, connection=connection)
