"""Losses are told truthfully: every record the kernel dropped since the sensors loaded is
counted, those dropped before the loop's first turn included, and each loss asks for a scan."""

from __future__ import annotations

import threading

from agent.engine import loader
from agent.metrics import Metrics
from agent.pipeline import Agent, Judge
from agent.sources.procfs import ProcFS
from agent.sources.proctree import ProcessTree


class Dropping:
    """A sensor whose buffer already lost `lost` records when the loop starts, and more
    on each poll; it stops the loop after `polls` polls."""

    def __init__(self, stop: threading.Event, lost: int, more: int, polls: int) -> None:
        self.stop, self.n, self.more, self.polls = stop, lost, more, polls

    def poll(self, timeout_ms: int) -> None:
        self.polls -= 1
        self.n += self.more
        if self.polls <= 0:
            self.stop.set()

    def lost(self) -> dict[str, int]:
        return {"bpf": self.n}


def test_records_lost_before_the_first_turn_are_counted_and_scanned_for(tmp_path):
    metrics = Metrics()
    tree = ProcessTree(ProcFS(str(tmp_path)))  # an empty procfs: scans find nothing
    judge = Judge(loader.load([loader.bundled_rules_dir()]), metrics=metrics)
    agent = Agent(tree, judge, lambda d: None, metrics, 3600.0)
    stop = threading.Event()
    agent.run(stop, Dropping(stop, lost=7, more=2, polls=3))
    assert metrics.events_lost.labels(source="bpf")._value.get() == 7 + 3 * 2
    assert metrics.scans.labels(reason="loss")._value.get() >= 1
