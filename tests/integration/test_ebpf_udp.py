"""The udp sensor with real eBPF: UDP destinations from sendto, sendmsg and connected
sockets, DNS query names from dig, nslookup and glibc's resolver (Python's getaddrinfo)
asking a resolver that lives in a network namespace of the test, and a mining pool's name
found by a dns rule.

One agent serves the module (a compile takes 20-40 s on a busy machine). Every client runs
in `unshare -m -n`: its own loopback, and /etc/resolv.conf bind-mounted to name the test's
resolver on 127.0.0.1, so nothing leaves this machine and the host's resolver is untouched.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agentproc import RunningAgent

pytestmark = [pytest.mark.ebpf, pytest.mark.integration]

RESOLVER = Path(__file__).with_name("dns_resolver.py")
POOLS = "[supportxmr.com, moneroocean.stream, nanopool.org, minexmr.com]"


def _rules(port: int) -> str:
    return f"""rules:
  - id: udp-to-test-port
    on: [udp]
    match: {{conn.dport: {{in: [{port}]}}}}
  - id: dns-test-name
    on: [dns]
    match: {{dns.name: {{suffix: nw-test.example}}}}
  - id: mining-pool-dns
    severity: high
    on: [dns]
    match: {{dns.name: {{suffix: {POOLS}}}}}
"""


@pytest.fixture(scope="module")
def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def agent(ebpf: None, tmp_path_factory: pytest.TempPathFactory,
          udp_port: int) -> Iterator[RunningAgent]:
    tmp = tmp_path_factory.mktemp("udp-agent")
    rules = tmp / "udp.yaml"
    rules.write_text(_rules(udp_port))
    # a lock of its own: module scope runs before the per-test lock fixture
    a = RunningAgent(tmp, "", ["--interval", "3600", "--rules", str(rules)],
                     env={"NODEWARDEN_LOCK_FILE": str(tmp / "agent.lock")})
    a.expect_sensors("udp")
    yield a
    assert a.stop() == 0, "".join(a.stderr)
    assert "Traceback" not in "".join(a.stderr)


def _client(tmp: Path, script: str) -> subprocess.CompletedProcess[str]:
    """`script` (sh) in a new network and mount namespace where the test resolver answers
    on 127.0.0.1:53 and /etc/resolv.conf names it."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.fail("unshare (util-linux) or ip (iproute2) is missing: scripts/setup.sh")
    resolv = tmp / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:2\n")
    ready = tmp / "resolver.ready"
    wrapper = f"""set -e
ip link set lo up
mount --bind {resolv} /etc/resolv.conf
{sys.executable} {RESOLVER} {ready} &
resolver=$!
trap 'kill $resolver' EXIT
while [ ! -e {ready} ]; do sleep 0.05; done
{script}
"""
    return subprocess.run(["unshare", "-m", "-n", "sh", "-c", wrapper], capture_output=True,
                          text=True, timeout=60, check=False)


def _run_python(code: str) -> int:
    """Run Python `code` as another process; its pid."""
    p = subprocess.Popen([sys.executable, "-c", code])
    assert p.wait(timeout=30) == 0
    return p.pid


def test_sendto_is_one_finding_per_window_however_many_datagrams(agent, udp_port):
    pid = _run_python(f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(500):
    s.sendto(b"x", ("127.0.0.1", {udp_port}))
""")
    f = agent.finding(lambda f: f["rule"] == "udp-to-test-port" and f["process"]["pid"] == pid)
    assert f["source"] == "udp"
    assert f["connection"]["dst"] == "127.0.0.1"
    assert f["connection"]["dport"] == udp_port
    assert f["connection"]["family"] == "ipv4"
    time.sleep(1)
    same = [g for g in agent.all_findings
            if g["rule"] == "udp-to-test-port" and g["process"]["pid"] == pid]
    assert len(same) == 1, same


@pytest.mark.parametrize("how", ["connect+send", "sendmsg", "connect+sendmmsg-free write"])
def test_connected_sockets_and_sendmsg_have_their_destination(agent, udp_port, how):
    send = {
        "connect+send": f"s.connect(('127.0.0.1', {udp_port})); s.send(b'x')",
        "sendmsg": f"s.sendmsg([b'x'], [], 0, ('127.0.0.1', {udp_port}))",
        # write() is not watched: the connect alone names the destination
        "connect+sendmmsg-free write": f"s.connect(('127.0.0.1', {udp_port})); "
                                       "import os; os.write(s.fileno(), b'x')",
    }[how]
    pid = _run_python(f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                      f"{send}\n")
    f = agent.finding(lambda f: f["rule"] == "udp-to-test-port" and f["process"]["pid"] == pid)
    assert (f["connection"]["dst"], f["connection"]["dport"]) == ("127.0.0.1", udp_port)


def test_a_socket_connected_elsewhere_reports_its_new_destination(agent, udp_port):
    """The sends to the first destination (counted in the kernel) do not hide the second."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind(("127.0.0.1", 0))
        pid = _run_python(f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("127.0.0.1", {other.getsockname()[1]}))
for _ in range(100):
    s.send(b"x")
s.connect(("127.0.0.1", {udp_port}))
for _ in range(100):
    try:
        s.send(b"x")
    except ConnectionRefusedError:
        pass   # nothing listens there: the port unreachable answer fails the next send
""")
    f = agent.finding(lambda f: f["rule"] == "udp-to-test-port" and f["process"]["pid"] == pid)
    assert f["connection"]["dport"] == udp_port


def test_ipv6_destination(agent, udp_port):
    pid = _run_python(f"""
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.sendto(b"x", ("::1", {udp_port}))
""")
    f = agent.finding(lambda f: f["rule"] == "udp-to-test-port" and f["process"]["pid"] == pid)
    assert (f["connection"]["dst"], f["connection"]["family"]) == ("::1", "ipv6")


@pytest.mark.parametrize("tool,cmd", [
    ("dig", "dig +tries=1 +time=2 @127.0.0.1 {name} A"),
    ("nslookup", "nslookup {name} 127.0.0.1"),
    ("getaddrinfo", f"{sys.executable} -c \"import socket; socket.getaddrinfo('{{name}}', 443)\""),
])
def test_dns_query_names_from_dig_nslookup_and_glibc(agent, tmp_path, tool, cmd):
    if tool in ("dig", "nslookup") and shutil.which(tool) is None:
        pytest.fail(f"{tool} is missing: scripts/setup.sh installs bind9-dnsutils")
    name = f"{tool}-{os.getpid()}.Nw-Test.example"
    res = _client(tmp_path, cmd.format(name=name))
    assert res.returncode == 0, res.stdout + res.stderr
    f = agent.finding(lambda f: f["rule"] == "dns-test-name"
                      and f["dns"]["name"] == name.lower())
    assert f["source"] == "dns"
    assert f["dns"]["qtype"] in ("A", "AAAA")
    assert (f["connection"]["dst"], f["connection"]["dport"]) == ("127.0.0.1", 53)


def test_a_mining_pool_name_resolved_by_glibc_is_a_finding(agent, tmp_path):
    # the client lingers so the agent reads its network namespace (the test's, not ours)
    res = _client(tmp_path, f"{sys.executable} -c \"import socket, time; "
                            "socket.getaddrinfo('gulf.moneroocean.stream', 10128); "
                            "time.sleep(1)\"")
    assert res.returncode == 0, res.stdout + res.stderr
    f = agent.finding(lambda f: f["rule"] == "mining-pool-dns")
    assert f["dns"]["name"] == "gulf.moneroocean.stream"
    assert f["severity"] == "high"
    host_netns = os.stat("/proc/self/ns/net").st_ino
    assert f["process"]["netns"] not in (0, host_netns)
    assert f["connection"]["netns"] == f["process"]["netns"]


def test_no_udp_or_dns_record_without_a_rule_on_them(ebpf, tmp_path, udp_port):
    """The shipped rules test no udp field: the kernel sends no udp record at all."""
    rules = tmp_path / "exec-only.yaml"
    rules.write_text("rules:\n  - id: exec-only\n    on: [exec]\n"
                     "    match: {proc.exe_name: nw-never-run}\n")
    a = RunningAgent(tmp_path, "", ["--interval", "3600", "--rules", str(rules)])
    try:
        _run_python(f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(200):
    s.sendto(b"x", ("127.0.0.1", {udp_port}))
""")
        res = _client(tmp_path, "dig +tries=1 +time=2 @127.0.0.1 quiet.nw-test.example")
        assert res.returncode == 0, res.stdout + res.stderr
        time.sleep(1)
        assert a.metric('nodewarden_events_total{source="udp"}') == 0
        assert a.metric('nodewarden_events_total{source="dns"}') == 0
    finally:
        assert a.stop() == 0
