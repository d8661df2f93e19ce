"""The DNS query parser on real queries and on hostile bytes: whatever a process sends to
port 53, the parser returns a name in printable text or None, and never raises."""

from __future__ import annotations

import random
import struct

import pytest

from agent.sources import dnswire
from agent.sources.dnswire import Query, parse_query, read_name


def query(*labels: bytes, qtype: int = 1, flags: int = 0x0100, qdcount: int = 1,
          tail: bytes = b"") -> bytes:
    name = b"".join(bytes([len(x)]) + x for x in labels) + b"\0"
    return (struct.pack(">HHHHHH", 0x1234, flags, qdcount, 0, 0, 0) + name
            + struct.pack(">HH", qtype, 1) + tail)


def test_a_plain_query_gives_its_name_and_type():
    q = parse_query(query(b"pool", b"supportxmr", b"com"))
    assert q == Query("pool.supportxmr.com", "A", 12 + 21 + 4)


@pytest.mark.parametrize("code,text", [(28, "AAAA"), (16, "TXT"), (65, "HTTPS"),
                                       (255, "ANY"), (4242, "TYPE4242")])
def test_query_types_by_name_or_rfc3597_number(code, text):
    assert parse_query(query(b"a", b"example", qtype=code)).qtype == text


def test_names_are_lower_case_as_dns_compares_them():
    assert parse_query(query(b"POOL", b"SupportXMR", b"Com")).name == "pool.supportxmr.com"


def test_the_root_is_the_empty_name():
    assert parse_query(query()).name == ""


def test_an_edns_record_after_the_question_is_ignored():
    opt = b"\0" + struct.pack(">HHIH", 41, 1232, 0, 0)
    assert parse_query(query(b"x", b"test", tail=opt)).name == "x.test"


@pytest.mark.parametrize("label,text", [
    (b"a.b", "a\\.b"),              # a dot inside a label cannot pass for two labels
    (b"caf\xc3\xa9", "caf\\195\\169"),
    (b"a b", "a\\032b"),
    (b"\\x", "\\\\x"),
    (b"\x00\x7f\n", "\\000\\127\\010"),
    (b"x_y-1", "x_y-1"),
])
def test_bytes_a_host_name_does_not_use_are_escaped(label, text):
    q = parse_query(query(label, b"com"))
    assert q is not None
    assert q.name == f"{text}.com"
    assert q.name.isprintable() and q.name.isascii()


def test_a_response_is_no_query():
    assert parse_query(query(b"a", b"com", flags=0x8180)) is None


def test_no_question_is_no_query():
    assert parse_query(query(b"a", b"com", qdcount=0)) is None


@pytest.mark.parametrize("data", [
    b"",
    b"\x12\x34\x01\x00",                                  # header cut
    query(b"abc", b"com")[:14],                           # label past the end
    query(b"abc", b"com")[:-3],                           # type cut
    query(b"abc", b"com")[:-4],                           # name whole, no type
    struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x3f" + b"a" * 10,   # label longer than data
    struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x40abc\0" + b"\0\1\0\1",  # reserved type 0x40
    struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x80abc\0" + b"\0\1\0\1",  # reserved type 0x80
])
def test_cut_or_malformed_questions_are_no_query(data):
    assert parse_query(data) is None


def test_a_pointer_to_itself_or_forwards_is_refused():
    head = struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0)
    assert parse_query(head + b"\xc0\x0c" + b"\0\1\0\1") is None       # to itself
    assert parse_query(head + b"\xc0\x20" + b"\0\1\0\1" + bytes(40)) is None   # forwards
    assert parse_query(head + b"\xc0") is None                          # pointer cut


def test_a_pointer_backwards_is_followed_and_the_question_ends_after_it():
    # after a first question, a name made of the label "www" and a pointer back to the
    # first question's name (offset 12)
    data = bytearray(query(b"example", b"com"))
    data += b"\x03www\xc0\x0c" + struct.pack(">HH", 28, 1)
    assert read_name(bytes(data), 12 + 13 + 4) == ("www.example.com", len(data) - 4)


def test_pointer_chains_are_bounded():
    head = bytearray(struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0))
    # a chain of backward pointers longer than MAX_POINTERS
    data = head + b"\x01a\0"
    prev = 12
    for _ in range(dnswire.MAX_POINTERS + 2):
        here = len(data)
        data += bytes([0xC0 | prev >> 8, prev & 0xFF])
        prev = here
    assert read_name(bytes(data), prev) is None


def test_names_longer_than_dns_allows_are_refused():
    long = [b"a" * 63] * 4 + [b"b"]     # 4 * 64 + 2 + 1 > 255
    assert parse_query(query(*long)) is None
    ok = [b"a" * 63] * 3 + [b"b" * 61]  # 3 * 64 + 62 + 1 = 255
    assert parse_query(query(*ok)) is not None


def test_random_bytes_never_raise():
    rng = random.Random(11)
    head = struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0)
    for _ in range(3000):
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
        q = parse_query(head + body)
        assert q is None or (q.name.isprintable() and len(q.name) < 4 * 255)
