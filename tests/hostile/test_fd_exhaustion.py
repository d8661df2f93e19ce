"""Issue 13, defect 2: idle connections to the metrics port exhaust the agent's file
descriptors and kill it.

The agent runs with a hard RLIMIT_NOFILE of 256 (it cannot raise it), and a tenant holds
more connections than that, each sending `GET /metrics HTTP/1.1\\r\\n` and nothing more,
opening a new one whenever the agent closes one. The agent must stay up, answer /healthz
while they hold, still report a miner the tenant starts, and stop cleanly.
"""

from __future__ import annotations

import re
import resource
import select
import subprocess
import sys
import time

import pytest

HARD_LIMIT = 256
ATTACKERS = 400  # more than the agent has descriptors

pytestmark = pytest.mark.ebpf


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (HARD_LIMIT, HARD_LIMIT))


# The tenant's flood, a process of its own: `n` connections to 127.0.0.1:`port`, each
# sending a partial request and holding; one the agent closes is opened again at once, so
# the pressure never lets up (new ones at most 4 per 2 ms: the agent accepts each, rather than
# leaving it in the kernel's queue). Prints "holding" once `n` have sent a partial request.
FLOOD = r"""
import errno, selectors, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
sel = selectors.DefaultSelector()
live = held = 0
said = False
while True:
    for _ in range(min(4, n - live)):  # paced, so that a backlog of 5 does not overflow
        s = socket.socket()
        s.setblocking(False)
        if s.connect_ex(("127.0.0.1", port)) not in (0, errno.EINPROGRESS):
            s.close()
            break
        sel.register(s, selectors.EVENT_WRITE, "connecting")
        live += 1
    for key, _ in sel.select(0.002):
        s = key.fileobj
        if key.data == "connecting" and not s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            try:
                s.send(b"GET /metrics HTTP/1.1\r\n")  # ...and never the rest
                sel.modify(s, selectors.EVENT_READ, "holding")
                held += 1
                if held >= n and not said:
                    print("holding", flush=True)
                    said = True
                continue
            except OSError:
                pass
        elif key.data == "holding":
            try:
                if s.recv(4096):
                    continue
            except OSError:
                pass
        sel.unregister(s)  # refused or closed by the agent: open another
        s.close()
        live -= 1
"""


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def test_idle_connections_beyond_the_fd_limit_leave_the_agent_judging(
        ebpf, tenant, start_agent) -> None:
    agent = start_agent("scan_interval: 1\n", preexec=_low_nofile)
    flood = tenant.spawn([sys.executable, "-c", FLOOD, str(agent.port), str(ATTACKERS)],
                         stdout=subprocess.PIPE)
    assert flood.stdout is not None
    ready, _, _ = select.select([flood.stdout], [], [], 10)
    assert ready and flood.stdout.readline() == b"holding\n"
    # /healthz answers while they hold, past the header timeout (5 s) and many scans
    until = time.monotonic() + 7
    probes = 0
    while time.monotonic() < until:
        assert agent.alive(), "the agent died:\n" + "".join(agent.stderr[-30:])
        started = time.monotonic()
        assert agent.get("/healthz", timeout=5) == (200, b"ok\n")
        assert time.monotonic() - started < 2.0, "/healthz took too long"
        probes += 1
        time.sleep(0.3)
    # a miner the tenant starts meanwhile is still reported
    miner = tenant.spawn([tenant.binary("xmrig"), "30"])
    f = agent.finding(lambda f: f["rule"] == "crypto-miner-exec"
                      and f["process"]["pid"] == miner.pid, timeout=10)
    assert f["workspace"]["id"] == "ws-red"
    status, body = agent.get("/metrics")
    assert status == 200
    assert _metric(body.decode(), 'nodewarden_http_connections_closed_total{reason="evicted"}') > 0
    assert agent.alive()
    assert flood.poll() is None, "the flood stopped"
    print(f"{probes} /healthz probes answered while {ATTACKERS} idle connections held")
