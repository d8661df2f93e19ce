"""The kill is sent before anything is written (issue 10, target 4).

A write can block (a full stdout pipe, a slow disk, a log shipper): the --record line, the
findings, and the log lines about them all come after the signal. The enforcer and the agent
are the real ones; the signal sender, the writer and the log handler only note the order."""

from __future__ import annotations

import io
import logging
import os
import shutil
from pathlib import Path

import pytest

from agent.actions.kill import Enforcer
from agent.codec import event_line
from agent.decide import Decision, Protection
from agent.engine import loader
from agent.metrics import Metrics
from agent.pipeline import Agent, Judge
from agent.sinks.findings import Finding, FindingWriter
from agent.sources.procfs import ProcFS
from agent.sources.proctree import ProcessTree

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "proc"
MINER = 1400  # /tmp/xmrig in the fixture host: crypto-miner-exec, a kill rule


class Order(io.StringIO):
    """A writer that notes each line it is given in the shared `log`."""

    def __init__(self, log: list[str], name: str) -> None:
        super().__init__()
        self.log, self.name = log, name

    def write(self, s: str) -> int:
        self.log.append(self.name)
        return super().write(s)


class Noted(logging.Handler):
    def __init__(self, log: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log.append("log")


@pytest.fixture
def order(tmp_path: Path):
    """(agent, the order of what happened) for an agent in enforce mode on the fixture host;
    protecting pid 1401 so a PROTECTED line is logged when a rule hits it."""
    proc = Path(shutil.copytree(FIXTURE, tmp_path / "proc", symlinks=True))
    happened: list[str] = []
    fs = ProcFS(str(proc))
    pidfds: dict[int, int] = {}

    def open_pidfd(pid: int) -> int:
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        pidfds[fd] = pid
        return fd

    def send(fd: int, sig: int) -> None:
        happened.append(f"signal {pidfds[fd]}")

    metrics = Metrics()
    enforcer = Enforcer(fs, ProcessTree(fs), Protection(), send=send, open_pidfd=open_pidfd)
    judge = Judge(loader.load([loader.bundled_rules_dir()]), "enforce", Protection(), metrics,
                  can_act=True)
    record = Order(happened, "record")
    writer = FindingWriter(Order(happened, "finding"), "json")  # as stdout and findings_file

    def report(done: list[Decision]) -> None:
        writer.write([Finding.of(d, "node-1") for d in done])

    tree = ProcessTree(fs)
    agent = Agent(tree, judge, report, metrics, 60.0,
                  record=lambda ev: record.write(event_line(ev) + "\n"),
                  act=enforcer.carry_out)
    handler = Noted(happened)
    logger = logging.getLogger("nodewarden")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    yield agent, tree, happened
    logger.removeHandler(handler)
    logger.setLevel(old)


def test_an_exec_is_killed_before_its_record_finding_or_log_line(order):
    agent, tree, happened = order
    miner = next(p for p in tree.scan() if p.pid == MINER)
    agent.handle(tree.event("exec", miner, 0.0))
    assert happened[0] == f"signal {MINER}", happened
    assert "finding" in happened and happened[-1] == "record"


def test_a_scan_kills_every_match_before_writing_anything(order):
    agent, _, happened = order
    agent.scan("startup")
    signals = [h for h in happened if h.startswith("signal")]
    assert f"signal {MINER}" in signals
    first_write = min(i for i, h in enumerate(happened) if not h.startswith("signal"))
    assert all(i < first_write for i, h in enumerate(happened) if h.startswith("signal"))
    assert "finding" in happened and "record" in happened


def test_the_record_is_written_even_when_judging_fails(order, monkeypatch):
    agent, tree, happened = order
    miner = next(p for p in tree.scan() if p.pid == MINER)

    def broken(ev):
        raise RuntimeError("rules failed")

    monkeypatch.setattr(agent.judge, "judge", broken)
    with pytest.raises(RuntimeError):
        agent.handle(tree.event("exec", miner, 0.0))
    assert happened == ["record"]
