"""A procfs pass runs in steps so the agent's loop takes the sensors' records between them
(issue 10, target 4: a scan of thousands of processes held every record back for over
100 ms). What records said during the pass must win over what the pass read before them."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
from test_proctree import ALL_PIDS, copy_fixture
from test_rescan import CountingProcFS

from agent import pipeline
from agent.engine import loader
from agent.metrics import Metrics
from agent.model import Process
from agent.pipeline import Agent, Judge
from agent.sources.proctree import ProcessTree, run_steps


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return copy_fixture(tmp_path / "proc")


def step_until_read(steps, fs: CountingProcFS, pid: int) -> None:
    while pid not in fs.full:
        next(steps)


def test_records_during_a_pass_are_laid_over_what_it_read(root: Path) -> None:
    fs = CountingProcFS(str(root))
    tree = ProcessTree(fs)
    steps = tree.scan_steps(1)
    step_until_read(steps, fs, 1400)
    execed = Process(pid=1400, ppid=1302, starttime=60200, comm="bash", exe="/usr/bin/bash",
                     cmdline=("bash",))
    newcomer = Process(pid=3000, ppid=1, starttime=99999, comm="late", exe="/usr/bin/late",
                       cmdline=("late",))
    tree.add(execed)        # an exec after the pass read 1400
    tree.add(newcomer)      # a process the pass never listed
    gone = tree.remove(2201)  # an exit, whether the pass read 2201 yet or not
    procs = run_steps(steps)
    assert tree.procs[1400] is execed
    assert tree.procs[3000] is newcomer
    assert gone is None      # nothing was in the tree before the first pass
    assert 2201 not in tree.procs  # the kernel said it exited: the next pass reads again
    assert {p.pid for p in procs} == set(tree.procs)
    # what an exec replaced is read in full by the next pass
    fs.full.clear()
    tree.scan()
    assert 1400 in fs.full


def test_an_exit_during_a_pass_removes_what_it_read(root: Path) -> None:
    fs = CountingProcFS(str(root))
    tree = ProcessTree(fs)
    tree.scan()
    fs.full.clear()
    steps = tree.scan_steps(1)
    next(steps)
    was = tree.remove(2201)   # read before or after this: the exit record wins
    assert was is not None
    run_steps(steps)
    assert 2201 not in tree.procs
    assert sorted(tree.procs) == [p for p in ALL_PIDS if p != 2201]


def test_a_pass_overtaken_by_a_whole_scan_keeps_the_newer_tree(root: Path) -> None:
    tree = ProcessTree(CountingProcFS(str(root)))
    steps = tree.scan_steps(1)
    next(steps)
    # a workspace kill rescans at once meanwhile, after a process left
    shutil.rmtree(root / "2201")
    tree.scan()
    run_steps(steps)
    assert 2201 not in tree.procs
    assert sorted(tree.procs) == [p for p in ALL_PIDS if p != 2201]


def test_an_abandoned_pass_leaves_nothing_noted(root: Path) -> None:
    tree = ProcessTree(CountingProcFS(str(root)))
    steps = tree.scan_steps(1)
    next(steps)
    steps.close()
    for pid in range(5000, 5100):
        tree.add(Process(pid=pid, ppid=1, starttime=pid, comm="x"))
    assert tree._changed is None  # nothing grows for a pass that will never finish


class OneExec:
    """A sensor that delivers one exec record, the first time it is polled mid-pass."""

    def __init__(self, agent: Agent, tree: ProcessTree) -> None:
        self.agent, self.tree = agent, tree
        self.delivered_mid_pass = False
        self.passes_seen = 0

    def poll(self, timeout_ms: int) -> None:
        if self.agent.scanning and not self.delivered_mid_pass:
            miner = Process(pid=4321, ppid=1, starttime=777, comm="xmrig", exe="/tmp/xmrig",
                            cmdline=("/tmp/xmrig", "-o", "pool:3333"))
            self.tree.add(miner)
            self.agent.handle(self.tree.event("exec", miner, time.time()))
            self.delivered_mid_pass = True
        time.sleep(timeout_ms / 1000)

    def lost(self) -> dict[str, int]:
        return {"bpf": 0}


def test_the_loop_judges_records_between_the_steps_of_a_periodic_pass(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "SCAN_CHUNK", 2)
    metrics = Metrics()
    tree = ProcessTree(CountingProcFS(str(root)))
    judge = Judge(loader.load([loader.bundled_rules_dir()]), metrics=metrics)
    reported: list = []
    agent = Agent(tree, judge, reported.extend, metrics, scan_interval=0.05)
    sensor = OneExec(agent, tree)
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop, sensor), daemon=True)
    runner.start()
    deadline = time.monotonic() + 5
    while agent.scans < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    runner.join(5)
    assert sensor.delivered_mid_pass
    pids = [d.match.event.process.pid for d in reported]
    assert 4321 in pids, "the exec record between two steps was judged"
    assert 1400 in pids
    found = [(d.match.rule.id, d.match.event.process.pid) for d in reported]
    assert len(found) == len(set(found)), "each process is judged once across the passes"
    assert agent.scans >= 3
    assert not runner.is_alive()
    assert tree._changed is None, "a pass cut short by the stop notes nothing more"


def test_a_stepped_pass_counts_its_steps_time_not_the_pauses_between_them(root: Path) -> None:
    tree = ProcessTree(CountingProcFS(str(root)))
    metrics = Metrics()
    judge = Judge(loader.load([loader.bundled_rules_dir()]), metrics=metrics)
    steps = pipeline.scan_steps(tree, judge, lambda _: None, metrics, chunk=1)
    pauses = 0
    for _ in steps:
        pauses += 1
        time.sleep(0.02)
    assert pauses >= len(ALL_PIDS)
    assert 0 < tree.read_ns < 0.02e9 * len(ALL_PIDS) / 2
    observed = metrics.scan_duration.collect()[0].samples
    total = next(s.value for s in observed if s.name.endswith("_sum"))
    assert tree.read_ns / 1e9 <= total < 0.02 * pauses / 2
