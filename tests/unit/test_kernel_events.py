"""Kernel records to Events, without a kernel: the decoder, /proc/net/tcp parsing, and the
observer's attribution of exec, fork, exit, connect, accept and close."""

from __future__ import annotations

import ipaddress
import os
import shutil
from pathlib import Path

import pytest

from agent.observer import Observer
from agent.sources import kevents
from agent.sources.execrecord import exec_record
from agent.sources.kevents import RawEvent, decode
from agent.sources.netstate import NetState, parse_tcp_table
from agent.sources.procfs import ProcFS
from agent.sources.proctree import ProcessTree

FIXTURE = Path(__file__).parent.parent / "fixtures" / "proc"


def record(kind: int, pid: int, *, ppid: int = 0, fd: int = 0, family: int = 0, sport: int = 0,
           dport: int = 0, saddr: str = "", daddr: str = "", comm: bytes = b"x",
           filename: bytes = b"", ts: int = 5_000_000_000) -> bytes:
    def raw(a: str) -> bytes:
        return ipaddress.ip_address(a).packed.ljust(16, b"\0") if a else b"\0" * 16

    if kind in (kevents.FORK, kevents.EXIT):
        return kevents.PROC_FORMAT.pack(ts, kind, pid, ppid, 0, comm)
    if kind == kevents.EXEC:   # argv not taken in the kernel: the observer reads procfs
        return exec_record(pid, comm=comm, filename=filename, ts=ts)
    return kevents.CONN_FORMAT.pack(ts, kind, pid, 0, fd, family, sport, dport, 0,
                                    raw(saddr), raw(daddr), comm, 1, 0)


def test_decode_exec_and_connect_records():
    e = decode(record(kevents.EXEC, 42, comm=b"xmrig", filename=b"/tmp/xmrig"))
    assert (e.kind, e.pid, e.comm, e.filename) == (kevents.EXEC, 42, "xmrig", "/tmp/xmrig")
    c = decode(record(kevents.CONNECT, 7, family=kevents.AF_INET, sport=5000, dport=3333,
                      saddr="10.0.0.2", daddr="1.2.3.4"))
    assert (c.saddr, c.sport, c.daddr, c.dport) == ("10.0.0.2", 5000, "1.2.3.4", 3333)
    m = decode(record(kevents.CONNECT, 7, family=kevents.AF_INET6, saddr="::ffff:10.0.0.2",
                      daddr="fd00::1"))
    assert (m.saddr, m.daddr) == ("10.0.0.2", "fd00::1")


@pytest.mark.parametrize("kind", [kevents.CONNECT, kevents.ACCEPT, kevents.CLOSE,
                                  kevents.CONNECT_VERDICT])
@pytest.mark.parametrize("family,addr,text", [
    (kevents.AF_INET, "10.0.0.2", "10.0.0.2"),
    (kevents.AF_INET, "255.255.255.255", "255.255.255.255"),
    (kevents.AF_INET6, "fd00::1", "fd00::1"),
    (kevents.AF_INET6, "2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
    (kevents.AF_INET6, "::1", "::1"),
    (kevents.AF_INET6, "::", "::"),
    # a v4 peer of a dual-stack socket: as /proc/net/tcp6 parsing prints it
    (kevents.AF_INET6, "::ffff:10.0.0.2", "10.0.0.2"),
    # IPv4-compatible: as `ipaddress` prints it (glibc's inet_ntop would say ::1.2.3.4)
    (kevents.AF_INET6, "::1.2.3.4", "::102:304"),
])
def test_addresses_print_as_before_in_every_tcp_record(kind, family, addr, text):
    """The compact TCP record's addresses come out as the same text as ever."""
    e = decode(record(kind, 7, family=family, sport=1, dport=2, saddr=addr, daddr=addr))
    assert (e.kind, e.family, e.saddr, e.daddr) == (kind, family, text, text)
    if family == kevents.AF_INET6 and not addr.startswith("::ffff:"):
        assert text == str(ipaddress.ip_address(addr))


def test_compact_records_decode_every_field():
    f = decode(record(kevents.FORK, 11, ppid=10, comm=b"bash", ts=77))
    assert (f.ts_ns, f.kind, f.pid, f.ppid, f.comm, f.filename, f.saddr) == (
        77, kevents.FORK, 11, 10, "bash", "", "")
    assert len(record(kevents.FORK, 11)) == 40 and len(record(kevents.CONNECT, 1)) == 88
    c = decode(kevents.CONN_FORMAT.pack(5, kevents.ACCEPT, 42, 1000, 9, kevents.AF_INET, 8080,
                                        50000, 1, bytes([10, 0, 0, 1]) + bytes(12),
                                        bytes([10, 0, 0, 9]) + bytes(12), b"nginx", 1, 0))
    assert c == RawEvent(5, kevents.ACCEPT, 42, 0, 1000, 9, kevents.AF_INET, 8080, 50000, 1,
                         "10.0.0.1", "10.0.0.9", "nginx", "")
    with pytest.raises(ValueError, match="unknown kind 99"):
        decode(kevents.PROC_FORMAT.pack(1, 99, 1, 0, 0, b""))


def test_decode_rejects_short_records():
    import struct

    with pytest.raises(struct.error):
        decode(b"\0" * 10)


TCP = (
    '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   '
    'uid  timeout inode\n'
    '   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     '
    '0        0 111 1 0 100 0 0 10 0\n'
    '   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     '
    '0        0 222 1 0 20 4 30 10 -1\n'
    '   2: garbage\n'
)
TCP6 = (
    '  sl  local_address                         remote_address                      '
    '  st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n'
    '   0: 00000000000000000000000001000000:0016 '
    '00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 '
    '    0        0 333 1 0 100 0 0 10 0\n'
    '   1: 0000000000000000FFFF00000100007F:1F90 '
    '0000000000000000FFFF00000100007F:C351 01 00000000:00000000 00:00000000 00000000 '
    '    0        0 444 1 0 20 4 30 10 -1\n'
)


def test_parse_tcp_tables():
    v4 = parse_tcp_table(TCP, "ipv4")
    assert [(s.local, s.lport, s.remote, s.rport, s.state, s.inode) for s in v4] == [
        ("127.0.0.1", 8080, "0.0.0.0", 0, 10, 111), ("127.0.0.1", 8080, "127.0.0.1", 50000, 1, 222)]
    v6 = parse_tcp_table(TCP6, "ipv6")
    assert (v6[0].local, v6[0].lport, v6[0].state) == ("::1", 22, 10)
    assert (v6[1].local, v6[1].remote, v6[1].rport) == ("127.0.0.1", "127.0.0.1", 50001)


def raw(data: bytes) -> RawEvent:
    return decode(data)


def test_exec_of_a_known_pid_reads_procfs_and_inherits_the_workspace(observer):
    ws_pid = next(pid for pid in observer.tree.procs if observer.tree.workspace_of(pid))
    ev = observer.handle(raw(record(kevents.EXEC, ws_pid, ts=12_000_000_000)))
    assert ev is not None and ev.kind == "exec"
    assert ev.process.pid == ws_pid and ev.workspace == observer.tree.workspace_of(ws_pid)
    assert ev.time == pytest.approx(1002.0)  # monotonic 12 s, shifted to wall-clock
    assert ev.ktime_ns == 12_000_000_000


def test_exec_of_a_process_already_gone_uses_the_record_and_the_fork_parent(observer):
    parent = next(pid for pid in observer.tree.procs if observer.tree.workspace_of(pid))
    assert observer.handle(raw(record(kevents.FORK, 99999, ppid=parent))) is None
    ev = observer.handle(raw(record(kevents.EXEC, 99999, comm=b"xmrig", filename=b"/tmp/xmrig")))
    assert ev is not None
    assert (ev.process.comm, ev.process.exe, ev.process.ppid) == ("xmrig", "/tmp/xmrig", parent)
    assert ev.workspace == observer.tree.workspace_of(parent)  # inherited from the parent
    ex = observer.handle(raw(record(kevents.EXIT, 99999)))
    assert ex is not None and ex.kind == "exit" and 99999 not in observer.tree.procs
    assert observer.handle(raw(record(kevents.EXIT, 99999))) is None


def test_connect_accept_close_attribution(observer):
    pid = next(iter(observer.tree.procs))
    out = observer.handle(raw(record(kevents.CONNECT, pid, family=kevents.AF_INET, sport=40000,
                                     dport=3333, saddr="10.0.0.2", daddr="1.2.3.4")))
    assert out is not None and out.connection is not None
    assert (out.connection.direction, out.connection.dport, out.connection.dst) == (
        "outbound", 3333, "1.2.3.4")
    # accept resolved in the kernel: the socket's view, saddr local and daddr the peer
    acc = observer.handle(raw(record(kevents.ACCEPT, pid, fd=5, family=kevents.AF_INET,
                                     sport=8080, dport=50000, saddr="10.0.0.2", daddr="10.0.0.9")))
    assert acc is not None and acc.connection is not None
    c = acc.connection
    assert (c.src, c.sport, c.dst, c.dport, c.direction) == (
        "10.0.0.9", 50000, "10.0.0.2", 8080, "inbound")
    # the close runs in softirq (pid 0): attributed to the accepting process
    cl = observer.handle(raw(record(kevents.CLOSE, 0, family=kevents.AF_INET, sport=8080,
                                    dport=50000, saddr="10.0.0.2", daddr="10.0.0.9")))
    assert cl is not None and cl.process.pid == pid and cl.connection is not None
    assert cl.connection.direction == "inbound"
    # an unattributable close is dropped, not judged against a made-up process
    assert observer.handle(raw(record(kevents.CLOSE, 0, family=kevents.AF_INET, sport=1,
                                      dport=2, saddr="10.0.0.2", daddr="10.0.0.9"))) is None


def test_proc_connector_datagrams_parse_to_process_events():
    import struct as st

    from agent.sources import proc_connector as pc

    def msg(what: int, payload: bytes) -> bytes:
        event = st.pack("=IIQ", what, 0, 123_000) + payload
        cn = st.pack("=IIIIHH", pc.CN_IDX_PROC, pc.CN_VAL_PROC, 0, 0, len(event), 0)
        body = cn + event
        hdr = st.pack("=IHHII", 16 + len(body), pc.NLMSG_DONE, 0, 0, 0)
        return (hdr + body).ljust((16 + len(body) + 3) & ~3, b"\0")

    data = (msg(pc.PROC_EVENT_FORK, st.pack("=IIII", 10, 10, 11, 11))
            + msg(pc.PROC_EVENT_FORK, st.pack("=IIII", 10, 10, 12, 10))   # a thread
            + msg(pc.PROC_EVENT_EXEC, st.pack("=II", 11, 11))
            + msg(pc.PROC_EVENT_EXIT, st.pack("=IIII", 11, 11, 0, 17)))
    got = [(e.kind, e.pid, e.ppid, e.ts_ns) for e in pc.parse(data)]
    assert got == [(kevents.FORK, 11, 10, 123_000), (kevents.EXEC, 11, 0, 123_000),
                   (kevents.EXIT, 11, 0, 123_000)]
    assert pc.parse(b"\xff" * 7) == [] and pc.parse(data[:40]) == []


def test_every_exec_is_judged_even_a_re_exec_of_the_same_binary(observer, tmp_path):
    """`exec bash -c 'curl x | sh'` from bash keeps pid, ppid, starttime and executable."""
    from agent.engine import loader
    from agent.pipeline import Judge

    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - id: sh-c\n    match: {proc.args: {equals: -c}}\n")
    judge = Judge(loader.load([str(rules)]))
    pid = next(p for p, proc in observer.tree.procs.items() if proc.cmdline and not proc.kthread)
    first = observer.handle(raw(record(kevents.EXEC, pid)))
    assert first is not None
    judge.judge(first)
    same = observer.handle(raw(record(kevents.EXEC, pid)))
    assert same is not None and same.process.id == first.process.id
    same.process.cmdline = ("bash", "-c", "curl x | sh")
    same.process.__post_init__()
    assert [d.match.rule.id for d in judge.judge(same)] == ["sh-c"]
    # while a scan of the same identity is not judged twice
    assert judge.judge(observer.tree.event("scan", same.process, 0.0)) == []


def test_caches_stay_bounded_over_many_events(tmp_path):
    import tracemalloc

    from agent.engine import loader
    from agent.pipeline import Judge

    tree = ProcessTree(ProcFS(str(tmp_path)))  # an empty procfs: every process is "gone"
    observer = Observer(tree, NetState(str(tmp_path)), cache_size=1024)
    judge = Judge(loader.load([loader.bundled_rules_dir()]), cache_size=1024)

    def burst(n: int, base: int) -> None:
        for i in range(n):
            pid = 100_000 + (base + i) % 50_000
            ts = (base + i) * 1000
            for data in (record(kevents.FORK, pid, ppid=1, ts=ts),
                         record(kevents.EXEC, pid, comm=b"worker", filename=b"/usr/bin/worker",
                                ts=ts),
                         record(kevents.CONNECT, pid, family=kevents.AF_INET,
                                sport=1024 + i % 60000, dport=443, saddr="10.0.0.2",
                                daddr="10.9.9.9", ts=ts),
                         record(kevents.ACCEPT, pid, fd=3, family=kevents.AF_INET, sport=8080,
                                dport=1024 + i % 60000, saddr="10.0.0.2", daddr="10.0.0.7", ts=ts),
                         record(kevents.CLOSE, pid, family=kevents.AF_INET, sport=1024 + i % 60000,
                                dport=443, saddr="10.0.0.2", daddr="10.9.9.9", ts=ts),
                         record(kevents.EXIT, pid, ts=ts)):
                ev = observer.handle(raw(data))
                if ev is not None:
                    judge.judge(ev)

    # traced from the start, so entries that replace evicted ones are not counted as growth
    tracemalloc.start()
    burst(12_000, 0)  # warm up: every bounded cache (windows: 10,000 keys) reaches its size
    before = tracemalloc.get_traced_memory()[0]
    burst(24_000, 12_000)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(judge.seen) <= 1024
    assert len(observer._parent_of) <= 1024 and len(observer._accepted) <= 1024
    assert len(tree.procs) < 100 and len(tree._known) < 100 and len(tree._workspace) < 100
    assert grown < 8 * 1024 * 1024, f"memory grew by {grown} bytes over 300,000 events"


def test_exec_read_mid_exit_keeps_the_kernel_records_filename(tmp_path):
    """A process whose /proc entry has lost exe and cmdline (exiting) is judged on the
    filename and comm the kernel recorded, with the start time procfs still had."""
    root = tmp_path / "proc"
    d = root / "321"
    d.mkdir(parents=True)
    fields = ["321", "(xmrig)", "Z", "1"] + ["0"] * 17 + ["777"] + ["0"] * 30
    (d / "stat").write_text(" ".join(fields) + "\n")
    (d / "cmdline").write_bytes(b"")
    tree = ProcessTree(ProcFS(str(root)))
    obs = Observer(tree, NetState(str(root)))
    ev = obs.handle(raw(record(kevents.EXEC, 321, comm=b"xmrig", filename=b"/tmp/xmrig")))
    assert ev is not None
    assert (ev.process.exe, ev.process.cmdline, ev.process.starttime) == (
        "/tmp/xmrig", ("/tmp/xmrig",), 777)


def _killed_exec(pid: int, comm: bytes, ts: int) -> RawEvent:
    """An exec record whose process an in-kernel rule killed."""
    return decode(exec_record(pid, comm=comm, filename=b"/home/t/nwkilled", ts=ts, uid=1001,
                              verdict=kevents.VERDICT_KILLED))


def _zombie(root: Path, pid: int, ppid: int, comm: str, starttime: int) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    fields = [str(pid), f"({comm})", "Z", str(ppid)] + ["0"] * 17 + [str(starttime)] + ["0"] * 30
    (d / "stat").write_text(" ".join(fields) + "\n")


def test_a_process_killed_in_the_kernel_has_its_own_start_time_and_parents_workspace(tmp_path):
    """Issue 13 defect 12: the zombie's stat gives the start time a scan would key on and
    the parent whose workspace it is in, even when its fork record was not seen."""
    root = tmp_path / "proc"
    shutil.copytree(FIXTURE, root, symlinks=True)
    tree = ProcessTree(ProcFS(str(root)))
    tree.scan()
    obs = Observer(tree, NetState(str(root)))
    parent = next(pid for pid in tree.procs if tree.workspace_of(pid))
    tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    _zombie(root, 5555, parent, "nwkilled", starttime=700)
    ev = obs.handle(_killed_exec(5555, b"nwkilled", ts=710 * tick))
    assert ev is not None and ev.kernel_verdict == (0, True)
    assert (ev.process.starttime, ev.process.ppid) == (700, parent)
    assert ev.workspace == tree.workspace_of(parent) != ""
    # a later process on a recycled pid (it started after the record) is not taken for it
    _zombie(root, 5556, parent, "nwkilled", starttime=900)
    ev = obs.handle(_killed_exec(5556, b"nwkilled", ts=710 * tick))
    assert ev is not None and (ev.process.starttime, ev.process.ppid, ev.workspace) == (710, 0, "")


def test_judged_once_per_instance_and_program_whatever_its_parent(tmp_path):
    """A scan after reparenting (new ppid, so a new `id`) judges nothing again; another
    program in the same process (an exec) is judged again."""
    from agent.engine import loader
    from agent.model import Event, Process
    from agent.pipeline import Judge

    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - id: any\n    match: {proc.name: {equals: miner}}\n")
    judge = Judge(loader.load([str(rules)]))
    first = Process(pid=40, ppid=30, starttime=5, comm="miner", exe_dev=1, exe_ino=2)
    assert len(judge.judge(Event("exec", 0.0, first))) == 1
    reparented = Process(pid=40, ppid=1, starttime=5, comm="miner", exe_dev=1, exe_ino=2)
    assert reparented.id != first.id   # the finding's id names the parent too (DESIGN.md)
    assert judge.judged(reparented)
    assert judge.judge(Event("scan", 0.0, reparented)) == []
    execed = Process(pid=40, ppid=1, starttime=5, comm="miner", exe_dev=1, exe_ino=3)
    assert len(judge.judge(Event("scan", 0.0, execed))) == 1


def test_scans_do_not_judge_zombies(tmp_path):
    from agent.engine import loader
    from agent.pipeline import Judge, scan_once

    root = tmp_path / "proc"
    _zombie(root, 77, 1, "miner", starttime=5)
    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - id: any\n    match: {proc.name: {equals: miner}}\n")
    assert scan_once(ProcessTree(ProcFS(str(root))), Judge(loader.load([str(rules)]))) == []
    (root / "77" / "stat").write_text((root / "77" / "stat").read_text().replace(" Z ", " S "))
    assert len(scan_once(ProcessTree(ProcFS(str(root))), Judge(loader.load([str(rules)])))) == 1


def test_address_texts_stay_right_and_bounded_over_many_peers():
    """The decoder keeps the texts it made, by the raw bytes and per family (the same bytes
    are another address in each), emptied when full."""
    for i in range(kevents._TEXT_CACHE_MAX + 500):
        v4 = str(ipaddress.IPv4Address(0x0A000000 + i))
        e = decode(record(kevents.CONNECT, 7, family=kevents.AF_INET, saddr=v4, daddr=v4))
        assert e.saddr == e.daddr == v4
    assert len(kevents._V4_TEXT) <= kevents._TEXT_CACHE_MAX
    # 10.0.0.2 and a00:2:: share their first bytes: each family has its own text
    v6 = decode(record(kevents.CONNECT, 7, family=kevents.AF_INET6, saddr="a00:2::",
                       daddr="a00:2::"))
    v4 = decode(record(kevents.CONNECT, 7, family=kevents.AF_INET, saddr="10.0.0.2",
                       daddr="10.0.0.2"))
    assert (v6.saddr, v4.saddr) == ("a00:2::", "10.0.0.2")
