"""A tiny DNS resolver for the udp sensor's tests: answers every A query on 127.0.0.1:53
with 10.1.2.3 and every other type with no record, until killed. Run inside a network
namespace of the test (`unshare -n`); touches the file named by argv[1] once listening."""

from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path


def answer(query: bytes) -> bytes | None:
    """The response to a query (None for what is not one)."""
    if len(query) < 17:
        return None
    qid, _flags = struct.unpack(">HH", query[:4])
    end = 12
    while end < len(query) and query[end]:
        end += query[end] + 1
    if end + 5 > len(query):
        return None
    question = query[12:end + 5]
    (qtype,) = struct.unpack(">H", query[end + 1:end + 3])
    record = b""
    if qtype == 1:
        record = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([10, 1, 2, 3])
    header = struct.pack(">HHHHHH", qid, 0x8180, 1, 1 if record else 0, 0, 0)
    return header + question + record


def main() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 53))
    Path(sys.argv[1]).touch()
    while True:
        data, peer = s.recvfrom(4096)
        reply = answer(data)
        if reply is not None:
            s.sendto(reply, peer)


if __name__ == "__main__":
    main()
