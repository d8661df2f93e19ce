"""Connects and accepts the kernel counted (bpf/tcp.bpf.c: repeats of a (process,
destination) reported once per window with a count): the count on the record, on the
connection event and its JSON, and in window rules; addresses print as before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.codec import event_from_json, event_from_line, event_line, event_to_json
from agent.model import Connection
from agent.observer import Observer
from agent.sources import kevents
from agent.sources.kevents import decode
from agent.sources.netstate import NetState
from agent.sources.procfs import ProcFS
from agent.sources.proctree import ProcessTree
from agent.sources.tcp_sensor import WINDOW_NS, due

FIXTURE = Path(__file__).parent.parent / "fixtures" / "proc"


def conn_record(count: int, *, kind: int = kevents.CONNECT, pid: int = 42,
                family: int = kevents.AF_INET, saddr: bytes = bytes([10, 0, 0, 2]),
                daddr: bytes = bytes([203, 0, 113, 9]), sport: int = 40000,
                dport: int = 443) -> bytes:
    return kevents.CONN_FORMAT.pack(7, kind, pid, 1000, 0, family, sport, dport, 1,
                                    saddr.ljust(16, b"\0"), daddr.ljust(16, b"\0"), b"curl",
                                    count, 0)


@pytest.mark.parametrize("family,saddr,daddr,texts", [
    (kevents.AF_INET, bytes([10, 0, 0, 2]), bytes([203, 0, 113, 9]), ("10.0.0.2", "203.0.113.9")),
    (kevents.AF_INET6, bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1]),
     bytes.fromhex("20010db8000000000000000000000001"), ("127.0.0.1", "2001:db8::1")),
    (kevents.AF_INET6, bytes(12) + bytes([1, 2, 3, 4]), bytes(15) + b"\x01",
     ("::102:304", "::1")),
])
def test_a_counted_record_decodes_its_count_and_prints_its_addresses_as_before(
        family, saddr, daddr, texts):
    one = decode(conn_record(1, family=family, saddr=saddr, daddr=daddr))
    many = decode(conn_record(250, family=family, saddr=saddr, daddr=daddr))
    assert (one.saddr, one.daddr) == (many.saddr, many.daddr) == texts
    assert (one.calls, many.calls) == (1, 250)
    assert many._replace(calls=1) == one


def test_the_count_reaches_the_connection_event_and_its_json(tmp_path):
    root = tmp_path / "proc"
    shutil.copytree(FIXTURE, root, symlinks=True)
    tree = ProcessTree(ProcFS(str(root)))
    tree.scan()
    pid = next(iter(tree.procs))
    obs = Observer(tree, NetState(str(root)))
    ev = obs.handle(decode(conn_record(37, pid=pid)))
    assert ev is not None and ev.connection is not None and ev.connection.count == 37
    js = event_to_json(ev)["connection"]
    assert js == {"src": "10.0.0.2", "sport": 40000, "dst": "203.0.113.9", "dport": 443,
                  "family": "ipv4", "direction": "outbound", "netns": js["netns"],
                  "count": 37}
    single = obs.handle(decode(conn_record(1, pid=pid)))
    assert single is not None
    # one call: the connection prints exactly as before counts existed
    assert "count" not in event_to_json(single)["connection"]
    accept = obs.handle(decode(conn_record(5, kind=kevents.ACCEPT, pid=pid)))
    assert accept is not None and accept.connection is not None
    assert (accept.connection.count, accept.connection.direction) == (5, "inbound")


def test_a_recorded_count_reads_back_through_both_readers():
    line = json.dumps({"kind": "connect", "time": 5.0, "process": {"exe": "/x"},
                       "connection": {"dst": "10.0.0.1", "dport": 80, "count": 12}})
    fast = event_from_line(line)
    slow = event_from_json(json.loads(line))
    assert fast.connection is not None and slow.connection is not None
    assert fast.connection.count == slow.connection.count == 12
    assert event_from_line(event_line(fast)).connection.count == 12  # type: ignore[union-attr]
    plain = event_from_line(line.replace(', "count": 12', ""))
    assert plain.connection is not None and plain.connection.count == 1
    assert Connection("1.2.3.4", 1, "5.6.7.8", 2).to_json() == {
        "src": "1.2.3.4", "sport": 1, "dst": "5.6.7.8", "dport": 2, "family": "ipv4",
        "direction": "outbound", "netns": 0}


def _connect(t: float, count: int = 1, port: int = 22) -> dict:
    return {"kind": "connect", "time": t, "process": {"exe": "/x", "pid": 7},
            "connection": {"dst": "10.0.0.1", "dport": port, "count": count}}


def test_a_window_counts_the_repeats_a_count_stands_for(rules_from):
    rs = rules_from("""
rules:
  - id: burst
    on: connect
    match: {conn.dport: {ports: ["1-65535"]}}
    window: {seconds: 10, threshold: 50, by: [proc.pid]}
""")
    fired = [bool(rs.evaluate(event_from_json(_connect(t, c))))
             for t, c in ((0.0, 1), (0.5, 30), (1.0, 20), (1.5, 1))]
    assert fired == [False, False, True, False]   # 1 + 30 + 20 = 51 > 50; then silent
    rs2 = rules_from("""
rules:
  - id: burst
    on: connect
    match: {conn.dport: 22}
    window: {seconds: 10, threshold: 50, by: [proc.pid]}
""")
    # one record standing for a million connects: over, once; its state stays bounded
    assert rs2.evaluate(event_from_json(_connect(0.0, 1_000_000)))
    assert len(rs2.rules[0].window._keys[(7,)].times) <= 51


def test_a_distinct_window_is_not_moved_by_repeats_of_one_destination(rules_from):
    rs = rules_from("""
rules:
  - id: scan
    on: connect
    match: {conn.dport: {ports: ["1-65535"]}}
    window: {seconds: 10, threshold: 5, distinct: conn.dport, by: [proc.pid]}
""")
    assert not rs.evaluate(event_from_json(_connect(0.0, 10_000, port=80)))
    fired = [bool(rs.evaluate(event_from_json(_connect(1 + p / 10, 1, port=1000 + p))))
             for p in range(6)]
    assert fired == [False, False, False, False, True, False]  # 80 and 5 more: 6 > 5


def test_only_keys_with_repeats_whose_window_is_over_are_flushed():
    now = 50 * WINDOW_NS

    def entry(count: int, since: int) -> SimpleNamespace:
        return SimpleNamespace(count=count, since=since)

    entries = [("over", entry(3, now - WINDOW_NS)), ("open", entry(3, now - WINDOW_NS + 1)),
               ("empty", entry(0, 0))]
    assert due(entries, now) == ["over"]
