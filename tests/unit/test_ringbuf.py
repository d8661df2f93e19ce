"""The BPF ring buffer read from its mapped pages (agent/sources/ringbuf.py), on a ring laid
out in memory as the kernel lays it out: records in order, a record still being written
holds back the ones after it, discarded ones are skipped, records wrapping past the end
read whole, a batch is bounded, and the consumer position is given back to the kernel."""

from __future__ import annotations

import struct

import pytest

from agent.sources.ringbuf import BUSY_BIT, DISCARD_BIT, RingReader

SIZE = 256


class FakeRing:
    """A ring of SIZE data bytes, its two position pages, and a producer writing it."""

    def __init__(self) -> None:
        self.consumer = bytearray(8)
        self.producer = bytearray(8)
        self.ring = bytearray(SIZE)
        self.data = bytearray(2 * SIZE)
        self.prod = 0
        self.got: list[bytes] = []
        self.reader = RingReader(self.consumer, self.producer, memoryview(self.data), SIZE,
                                 lambda b: self.got.append(bytes(b)))

    def put(self, payload: bytes, flags: int = 0) -> int:
        """Reserve and write one record; returns its position."""
        pos = self.prod
        whole = struct.pack("<II", len(payload) | flags, 0) + payload
        for i, b in enumerate(whole):
            self.ring[(pos + i) % SIZE] = b
        self.prod += (len(whole) + 7) & ~7
        self.sync()
        return pos

    def commit(self, pos: int) -> None:
        head = struct.unpack_from("<I", self.ring, pos % SIZE)[0] & ~BUSY_BIT
        struct.pack_into("<I", self.ring, pos % SIZE, head)
        self.sync()

    def sync(self) -> None:
        # the kernel maps the data pages twice in a row
        self.data[:] = self.ring + self.ring
        struct.pack_into("<Q", self.producer, 0, self.prod)

    @property
    def consumed(self) -> int:
        return struct.unpack_from("<Q", self.consumer, 0)[0]


def test_records_are_delivered_in_order_and_the_space_given_back():
    r = FakeRing()
    for i in range(5):
        r.put(bytes([i]) * (3 + i))
    assert r.reader.pending() == r.prod
    assert r.reader.read(100) == 5
    assert r.got == [bytes([i]) * (3 + i) for i in range(5)]
    assert r.consumed == r.prod and r.reader.pending() == 0
    assert r.reader.read(100) == 0


def test_a_record_being_written_holds_back_the_ones_after_it():
    r = FakeRing()
    r.put(b"first")
    busy = r.put(b"second", BUSY_BIT)
    r.put(b"third")
    assert r.reader.read(100) == 1 and r.got == [b"first"]
    assert r.consumed == busy   # the busy record's space is not given back
    r.commit(busy)
    assert r.reader.read(100) == 2 and r.got == [b"first", b"second", b"third"]
    assert r.consumed == r.prod


def test_discarded_records_are_skipped_and_their_space_given_back():
    r = FakeRing()
    r.put(b"kept")
    r.put(b"dropped", DISCARD_BIT)
    r.put(b"also kept")
    assert r.reader.read(100) == 2 and r.got == [b"kept", b"also kept"]
    assert r.consumed == r.prod


def test_a_record_that_wraps_around_the_end_reads_whole():
    r = FakeRing()
    for _ in range(30):   # many times round the 256-byte ring
        r.put(b"x" * 40)
        r.put(bytes(range(50)))
        assert r.reader.read(10) == 2
    assert r.got[-1] == bytes(range(50)) and r.prod > 10 * SIZE
    assert all(g in (b"x" * 40, bytes(range(50))) for g in r.got)


def test_a_batch_is_bounded_and_the_next_read_goes_on_where_it_stopped():
    r = FakeRing()
    for i in range(7):
        r.put(bytes([i]))
    assert r.reader.read(3) == 3 and r.got == [b"\0", b"\1", b"\2"]
    assert r.consumed == 3 * 16
    assert r.reader.read(3) == 3
    assert r.reader.read(3) == 1
    assert r.got == [bytes([i]) for i in range(7)]


def test_records_committed_during_a_read_are_read_in_the_same_call():
    r = FakeRing()
    r.put(b"a")
    later = [b"b", b"c"]

    def deliver(b: memoryview) -> None:
        r.got.append(bytes(b))
        if later:
            r.put(later.pop(0))   # the producer runs while we handle a record

    r.reader = RingReader(r.consumer, r.producer, memoryview(r.data), SIZE, deliver)
    assert r.reader.read(100) == 3 and r.got == [b"a", b"b", b"c"]


def test_the_size_must_be_a_power_of_two():
    with pytest.raises(ValueError):
        RingReader(bytearray(8), bytearray(8), memoryview(bytearray(600)), 300, print)
