"""The consumer's side of the kernel's wake-up rules (bpf/exec.bpf.c, bpf/sensor.h): a
record may be sent without waking the consumer when another was sent, and read, shortly
before it; the consumer then polls with a timeout of at most LINGER_MS while records
flow, so none waits longer. Checked on BpfProgram.poll with a ring that says what it was
asked, and a clock the test moves."""

from __future__ import annotations

import pytest

from agent.sources import bpf
from agent.sources.bpf import LINGER_MS, BpfProgram


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Ring:
    """Records to hand out per read (and the time one read takes), and each wait's
    timeout."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.batches: list[int] = []
        self.read_takes = 0.0
        self.waits: list[int] = []

    def read(self, limit: int) -> int:
        self.clock.t += self.read_takes
        return self.batches.pop(0) if self.batches else 0

    def wait(self, timeout_ms: int) -> bool:
        self.waits.append(timeout_ms)
        return False


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(bpf.time, "monotonic", c)
    return c


def _program(ring: Ring) -> BpfProgram:
    p = object.__new__(BpfProgram)
    p._ring = ring  # type: ignore[assignment]
    p._last_records = 0.0
    p._periodic = []
    p._next_due = float("inf")
    return p


def test_after_records_a_poll_waits_at_most_the_linger_then_as_long_as_asked(clock):
    ring = Ring(clock)
    prog = _program(ring)
    ring.batches = [3]
    prog.poll(5000)               # records: read at once, no wait
    clock.t += 0.001
    prog.poll(5000)               # none yet: one sent without a wake-up may come
    assert ring.waits == [LINGER_MS]
    clock.t += LINGER_MS / 1000
    prog.poll(5000)               # nothing for the linger: records stopped, sleep as asked
    assert ring.waits == [LINGER_MS, 5000]


def test_the_linger_counts_from_the_end_of_the_read_not_the_start_of_the_poll(clock):
    # a read that took 1.5 ms (the records it read were sent as late as its end): a poll
    # 3 ms after the first one began is 1.5 ms after that read, and still lingers
    ring = Ring(clock)
    prog = _program(ring)
    ring.batches = [400]
    ring.read_takes = 0.0015
    prog.poll(5000)
    ring.read_takes = 0.0
    clock.t += 0.0015
    prog.poll(5000)
    assert ring.waits == [LINGER_MS]
