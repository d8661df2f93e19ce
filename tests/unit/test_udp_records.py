"""The udp sensor's records (bpf/events.h struct nw_udp_event, nw_dns_event) decoded and
turned into events: a udp event's connection is its destination in the sender's network
namespace; a dns event carries the query's name and the resolver; a datagram to port 53
that is no query is a udp event; and which kinds the kernel is told to send."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from agent import details
from agent.model import EventKind
from agent.sources import kevents
from agent.sources.udp_sensor import wanted_mask

FIXTURE = Path(__file__).parent.parent / "fixtures" / "proc"


def udp_record(pid: int = 4242, family: int = kevents.AF_INET, addr: str = "10.0.0.9",
               dport: int = 4789, suppressed: int = 0, kind: int = kevents.UDP) -> bytes:
    af = socket.AF_INET if family == kevents.AF_INET else socket.AF_INET6
    raw = socket.inet_pton(af, addr).ljust(16, b"\0")
    return kevents.UDP_FORMAT.pack(123_000, kind, pid, 1000, 7, suppressed, family, dport,
                                   raw, b"sender\0".ljust(16, b"\0"))


def dns_record(payload: bytes, pid: int = 4242, resolver: str = "10.0.0.53",
               sent: int | None = None) -> bytes:
    head = udp_record(pid, addr=resolver, dport=53, kind=kevents.DNS)
    n = min(len(payload), kevents.DNS_LEN)
    return (head + struct.pack("<II", n, len(payload) if sent is None else sent)
            + payload[:n].ljust(kevents.DNS_LEN, b"\xee"))


def query(name: str, qtype: int = 1) -> bytes:
    wire = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"
    return struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + wire + struct.pack(">HH", qtype, 1)


def test_a_udp_record_decodes_to_its_destination():
    raw = kevents.decode(udp_record(suppressed=99))
    assert (raw.kind, raw.pid, raw.uid, raw.comm) == (kevents.UDP, 4242, 1000, "sender")
    assert (raw.family, raw.daddr, raw.dport) == (kevents.AF_INET, "10.0.0.9", 4789)
    assert raw.detail is None and raw.saddr == "" and raw.sport == 0


def test_an_ipv6_udp_record():
    raw = kevents.decode(udp_record(family=kevents.AF_INET6, addr="2001:db8::5", dport=443))
    assert (raw.daddr, raw.dport) == ("2001:db8::5", 443)


def test_a_dns_record_carries_the_query_name_and_type():
    raw = kevents.decode(dns_record(query("Pool.SupportXMR.com", 28)))
    assert raw.kind == kevents.DNS
    assert raw.detail == details.Dns("pool.supportxmr.com", "AAAA")
    assert (raw.daddr, raw.dport) == ("10.0.0.53", 53)


def test_bytes_past_the_length_taken_are_not_read():
    # the kernel leaves the rest of the payload undefined: a name cut by `len` is no query
    rec = bytearray(dns_record(query("a.example")))
    struct.pack_into("<I", rec, kevents.DNS_HEAD.size - 8, 14)
    raw = kevents.decode(bytes(rec))
    assert raw.kind == kevents.UDP and raw.detail is None


@pytest.mark.parametrize("payload", [b"\x00" * 40, b"GET / HTTP/1.1\r\n\r\n" * 3,
                                     query("a.example")[:-2]])
def test_a_datagram_to_port_53_that_is_no_query_is_a_udp_event(payload):
    raw = kevents.decode(dns_record(payload))
    assert raw.kind == kevents.UDP and raw.detail is None
    assert (raw.daddr, raw.dport) == ("10.0.0.53", 53)


def test_the_observer_makes_udp_and_dns_events_of_the_sender(observer):
    pid, proc = next((pid, p) for pid, p in observer.tree.procs.items() if p.netns)
    ev = observer.handle(kevents.decode(udp_record(pid)))
    assert ev is not None and ev.kind == EventKind.UDP and ev.detail is None
    assert ev.process.pid == pid
    c = ev.connection
    assert c is not None
    assert (c.dst, c.dport, c.family, c.direction) == ("10.0.0.9", 4789, "ipv4", "outbound")
    assert c.netns == proc.netns

    ev = observer.handle(kevents.decode(dns_record(query("x.minexmr.com"), pid)))
    assert ev is not None and ev.kind == EventKind.DNS
    assert ev.detail == details.Dns("x.minexmr.com", "A")
    assert ev.connection is not None and ev.connection.dport == 53


def test_a_dns_rule_finds_a_pool_name(rules_from, observer):
    rules = rules_from("""
        rules:
          - id: pool-dns
            match: {dns.name: {suffix: [minexmr.com, supportxmr.com]}}
        """)
    pid = next(iter(observer.tree.procs))
    ev = observer.handle(kevents.decode(dns_record(query("pool.SupportXMR.com"), pid)))
    assert [m.rule.id for m in rules.evaluate(ev)] == ["pool-dns"]
    other = observer.handle(kevents.decode(dns_record(query("supportxmr.com.evil.test"), pid)))
    assert rules.evaluate(other) == []


@pytest.mark.parametrize("kinds,mask", [
    (set(), 0),
    ({EventKind.EXEC, EventKind.CONNECT}, 0),
    ({EventKind.UDP}, 1 << kevents.UDP),
    ({EventKind.DNS}, 1 << kevents.DNS),
    ({EventKind.UDP, EventKind.DNS, EventKind.FILE}, 1 << kevents.UDP | 1 << kevents.DNS),
])
def test_the_kernel_sends_only_the_kinds_a_rule_is_on(kinds, mask):
    assert wanted_mask(kinds) == mask
