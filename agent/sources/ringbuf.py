"""A BPF ring buffer read straight from its mapped pages: a batch of records per call, no
ctypes callback per record (BCC's callback cost 6-14 us per record, half a TCP record's
whole path).

The kernel's layout (kernel/bpf/ringbuf.c; libbpf's ringbuf.c reads it the same way): the
map's first page holds `consumer_pos` (mapped read-write: the consumer advances it); from
the second page on, read-only, come the page holding `producer_pos` and then the data
pages, mapped twice in a row so a record that wraps around the end reads as one piece.
Each record is an 8-byte header (u32 length with BUSY bit 31 while the producer writes it
and DISCARD bit 30 when it gave it up; u32 page offset) and its bytes, the whole rounded up
to 8. Positions only grow; a position's offset in the data is `pos & (size - 1)`.

The positions and headers are read and written with plain loads and stores, which x86-64
orders as this protocol needs (libbpf uses acquire loads and a release store); on weaker
architectures `bpf_transport: perf` remains.
"""

from __future__ import annotations

import logging
import mmap
import select
import struct
from collections.abc import Callable

log = logging.getLogger("nodewarden.bpf")

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER = 8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
# advance consumer_pos at least this often within a batch, so the producers get the space
# back while a long batch is handled
_RELEASE_EVERY = 256


# what the reader reads and writes: the map's pages, or a bytearray in the tests
Buffer = mmap.mmap | bytearray

Deliver = Callable[[memoryview], None]


class RingReader:
    """Consumes records from a BPF ring buffer's mapped pages, `limit` at a time.

    `deliver` gets a memoryview of each record's bytes, valid only during the call (the
    space is given back to the kernel afterwards): it must copy what it keeps (the record
    decoders do: `struct.unpack_from`)."""

    def __init__(self, consumer: Buffer, producer: Buffer, data: memoryview, size: int,
                 deliver: Deliver, fd: int = -1) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError("a ring buffer's size is a power of two")
        self._consumer = consumer
        self._producer = producer
        self._data = data
        self._mask = size - 1
        self._deliver = deliver
        self.fd = fd
        self._poller: select.poll | None = None
        if fd >= 0:
            self._poller = select.poll()
            self._poller.register(fd, select.POLLIN)

    @classmethod
    def open(cls, map_fd: int, size: int, deliver: Deliver) -> RingReader:
        """Map a BPF_MAP_TYPE_RINGBUF map of `size` data bytes (its max_entries)."""
        page = mmap.PAGESIZE
        consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            producer = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                                 offset=page)
        except OSError:
            consumer.close()
            raise
        return cls(consumer, producer, memoryview(producer)[page:], size, deliver, map_fd)

    def pending(self) -> int:
        """Bytes the producers have committed or reserved past the consumer."""
        return _U64.unpack_from(self._producer, 0)[0] - _U64.unpack_from(self._consumer, 0)[0]

    def read(self, limit: int) -> int:
        """Deliver up to `limit` records that are ready, in order; returns how many. Stops
        at a record still being written (it comes in the next call)."""
        data, mask, deliver = self._data, self._mask, self._deliver
        unpack32 = _U32.unpack_from
        cons = _U64.unpack_from(self._consumer, 0)[0]
        done = 0
        while done < limit:
            prod = _U64.unpack_from(self._producer, 0)[0]
            start = cons
            while cons < prod and done < limit:
                off = cons & mask
                (head,) = unpack32(data, off)
                if head & BUSY_BIT:
                    prod = cons   # committed records past it wait for it: in order
                    break
                length = head & ~(BUSY_BIT | DISCARD_BIT)
                cons += (length + HEADER + 7) & ~7
                if not head & DISCARD_BIT:
                    done += 1
                    deliver(data[off + HEADER:off + HEADER + length])
                    if not done % _RELEASE_EVERY:
                        _U64.pack_into(self._consumer, 0, cons)
            _U64.pack_into(self._consumer, 0, cons)
            if cons == start or cons < prod:
                break   # nothing new, a record still being written, or the limit
        return done

    def wait(self, timeout_ms: int) -> bool:
        """Wait until records are pending (the map's fd turns readable) or `timeout_ms`
        passes; whether any are."""
        if self._poller is None:
            return self.pending() > 0
        return bool(self._poller.poll(timeout_ms))

    def close(self) -> None:
        """Unmap the pages (the records' views must be gone: they are, after `read`)."""
        self._data.release()
        for m in (self._consumer, self._producer):
            if isinstance(m, mmap.mmap):
                try:
                    m.close()
                except BufferError:   # a record's view kept past `read`: unmapped at exit
                    log.debug("ring buffer pages still referenced; left mapped")
