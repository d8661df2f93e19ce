"""DNS queries read from the bytes a process sent to port 53 (pure): the question's name and
type, as the `dns` sensor reports them.

The bytes come from any process on the node, so they are hostile input: a name is read
label by label within the bytes given, a compression pointer (which a query has no use
for, but a crafted one may carry) is followed only backwards and at most a few times, and
a name longer than DNS allows is refused. Bytes a host name does not use are written with
the zone-file escapes (`\\.` for a dot inside a label, `\\DDD` otherwise), so the text is
always printable and one name has one spelling. Anything that is not a query with a whole
question gives None; nothing raises.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

HEADER = struct.Struct(">HHHHHH")   # id, flags, qdcount, ancount, nscount, arcount
_QR = 0x8000          # the flags bit of a response
MAX_NAME = 255        # wire bytes of a name, length bytes and root included (RFC 1035)
MAX_POINTERS = 8      # compression pointers followed in one name

# RFC 1035 and the IANA registry: the types a query commonly asks for
QTYPES: dict[int, str] = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 10: "NULL", 12: "PTR", 13: "HINFO", 15: "MX",
    16: "TXT", 17: "RP", 18: "AFSDB", 24: "SIG", 25: "KEY", 28: "AAAA", 29: "LOC", 33: "SRV",
    35: "NAPTR", 37: "CERT", 39: "DNAME", 41: "OPT", 43: "DS", 44: "SSHFP", 46: "RRSIG",
    47: "NSEC", 48: "DNSKEY", 50: "NSEC3", 52: "TLSA", 64: "SVCB", 65: "HTTPS", 99: "SPF",
    252: "AXFR", 253: "MAILB", 255: "ANY", 256: "URI", 257: "CAA",
}

# byte -> its text in a name: lower-case letters, digits, '-' and '_' as they are; the rest
# escaped (upper case is lowered: DNS names compare without case)
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_")


def _byte_text(b: int) -> str:
    if 0x41 <= b <= 0x5A:
        b |= 0x20
    if b in _PLAIN:
        return chr(b)
    if b == 0x2E:
        return "\\."
    if b == 0x5C:
        return "\\\\"
    return f"\\{b:03d}"


_TEXT = tuple(_byte_text(b) for b in range(256))


class Query(NamedTuple):
    """The question of a DNS query."""

    name: str     # lower case, labels joined by '.', no final dot ("" for the root)
    qtype: str    # "A", "AAAA", ... or "TYPE<n>" (RFC 3597) for a type not in QTYPES
    end: int      # the offset just past the question's type and class


def qtype_text(code: int) -> str:
    """The name of a query type, or TYPE<n> for one without a common name."""
    return QTYPES.get(code) or f"TYPE{code}"


def read_name(data: bytes, offset: int) -> tuple[str, int] | None:
    """(the name at `offset` as text, the offset after it where it sits), or None when the
    bytes do not hold a whole, valid name: a label past the end, a pointer forwards or in a
    loop, a reserved label type, more than MAX_NAME bytes."""
    labels: list[str] = []
    size = 0
    pos = offset
    after = -1           # where the name ends in place (set at the first pointer)
    pointers = 0
    while True:
        if pos >= len(data):
            return None
        n = data[pos]
        if n == 0:
            return ".".join(labels), (pos + 1 if after < 0 else after)
        kind = n & 0xC0
        if kind == 0xC0:
            if pos + 1 >= len(data) or pointers >= MAX_POINTERS:
                return None
            target = (n & 0x3F) << 8 | data[pos + 1]
            if target >= pos:
                return None   # only backwards: a pointer can never loop
            if after < 0:
                after = pos + 2
            pointers += 1
            pos = target
            continue
        if kind:
            return None       # 0x40 and 0x80: extended and reserved label types
        size += n + 1
        if size + 1 > MAX_NAME or pos + 1 + n > len(data):
            return None
        labels.append("".join([_TEXT[b] for b in data[pos + 1:pos + 1 + n]]))
        pos += 1 + n


def parse_query(data: bytes) -> Query | None:
    """The first question of a DNS query message, or None when `data` is no query (a
    response, no question, a name or type cut off or malformed)."""
    if len(data) < HEADER.size:
        return None
    _, flags, qdcount, _, _, _ = HEADER.unpack_from(data)
    if flags & _QR or qdcount == 0:
        return None
    got = read_name(data, HEADER.size)
    if got is None:
        return None
    name, pos = got
    if pos + 4 > len(data):
        return None
    qtype, _qclass = struct.unpack_from(">HH", data, pos)
    return Query(name, qtype_text(qtype), pos + 4)
