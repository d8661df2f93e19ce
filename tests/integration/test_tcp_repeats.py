"""Repeated connects and accepts counted in the kernel (bpf/tcp.bpf.c), on the real sensor:
the first of a (process, destination) is sent at once, the repeats come back as a count."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

from agent.model import EventKind
from agent.sources import kevents
from agent.sources.bpf import BpfProgram
from agent.sources.kevents import RawEvent
from agent.sources.tcp_sensor import TcpSensor

N = 200


def _poll_until(program: BpfProgram, done, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        program.poll(50)


def test_repeated_connects_and_accepts_are_one_record_at_once_then_a_count(ebpf):
    # The agent has threads, and glibc passes accept4's fd sign-extended only in a process
    # with threads: the flush must be answered there (it was not, before the kernel read the
    # fd as the int it is).
    stop = threading.Event()
    threading.Thread(target=stop.wait, daemon=True).start()
    raws: list[RawEvent] = []
    program = BpfProgram(["tcp.bpf.c"], raws.append)
    listener = socket.socket()
    try:
        sensor = TcpSensor(program)
        sensor.start()
        # no rule on close: accepts are counted too
        sensor.send_kinds({EventKind.CONNECT, EventKind.ACCEPT})
        listener.bind(("127.0.0.1", 0))
        listener.listen(N + 8)
        lport = listener.getsockname()[1]
        client = subprocess.Popen([sys.executable, "-c", f"""
import socket, sys
for _ in range({N}):
    socket.create_connection(("127.0.0.1", {lport})).close()
print("done", flush=True)
sys.stdin.read()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            for _ in range(N):
                listener.accept()[0].close()
            assert client.stdout is not None and client.stdout.readline() == "done\n"
            done_at = time.monotonic()

            def connects() -> list[RawEvent]:
                return [r for r in raws if r.kind == kevents.CONNECT and r.pid == client.pid
                        and r.dport == lport]

            def accepts() -> list[RawEvent]:
                return [r for r in raws if r.kind == kevents.ACCEPT and r.pid == os.getpid()
                        and r.sport == lport]

            # the first of each is there at once (well before the one-second window ends)
            _poll_until(program, lambda: connects() and accepts(), 0.5)
            first = connects()[0]
            assert (first.calls, first.saddr, first.daddr, first.family) == (
                1, "127.0.0.1", "127.0.0.1", kevents.AF_INET)
            assert first.sport != 0 and accepts()[0].calls == 1
            assert time.monotonic() - done_at < 0.9
            # the repeats: flushed once the window is over, the burst having stopped
            _poll_until(program, lambda: sum(r.calls for r in connects()) >= N
                        and sum(r.calls for r in accepts()) >= N, 5)
            assert sum(r.calls for r in connects()) == N
            assert sum(r.calls for r in accepts()) == N
            assert len(connects()) <= 4 and len(accepts()) <= 4
            flushed = connects()[-1]
            # a flush record: the destination as before, no source port
            assert (flushed.daddr, flushed.dport, flushed.sport, flushed.saddr) == (
                "127.0.0.1", lport, 0, "0.0.0.0")
            # nothing more comes: every repeat was counted once
            _poll_until(program, lambda: False, 1.2)
            assert sum(r.calls for r in connects()) == N
        finally:
            client.kill()
            client.wait()
    finally:
        listener.close()
        program.close()
        stop.set()


def test_a_new_program_in_the_same_process_is_sent_at_once(ebpf):
    """An exec starts a new key: the first connect of the new program is not a repeat."""
    raws: list[RawEvent] = []
    program = BpfProgram(["tcp.bpf.c"], raws.append)
    listener = socket.socket()
    try:
        TcpSensor(program).start()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        lport = listener.getsockname()[1]
        code = f"import socket; socket.create_connection(('127.0.0.1', {lport})).close()"
        # python connects, then execs into another python that connects again
        child = subprocess.Popen([sys.executable, "-c", code + "; import os, sys; "
                                  f"os.execv(sys.executable, [sys.executable, '-c', {code!r}])"])
        for _ in range(2):
            listener.accept()[0].close()
        child.wait(timeout=10)

        def sent() -> list[RawEvent]:
            return [r for r in raws if r.kind == kevents.CONNECT and r.pid == child.pid
                    and r.dport == lport]

        _poll_until(program, lambda: len(sent()) >= 2, 0.8)
        assert [r.calls for r in sent()] == [1, 1]
    finally:
        listener.close()
        program.close()
