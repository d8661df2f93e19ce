"""The hostile tenant: a `useradd`-made user in a workspace, with secrets in its environment,
trying to crash, blind or misdirect a real `nodewarden run` (issue 13's red-team pass).

Each module under tests/hostile/ takes one family of attacks; this file holds the tenant,
the agent under attack, and the eBPF check shared by all of them. Under
NODEWARDEN_REQUIRE_EBPF=1 (CI) an eBPF test that skips is a failure (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

TENANT = "nwtenant"
WORKSPACE = "ws-red"
# a secret in the tenant's environment: it must never reach any output of the agent
SECRET = "s3cr3t-token-do-not-leak"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tenant:
    """An unprivileged user with a home under /tmp that it owns: the processes it starts
    carry the workspace marker and a secret, as a cloud dev workspace's would."""

    def __init__(self, home: Path) -> None:
        if os.geteuid() != 0:
            pytest.skip("a tenant needs root to be made")
        try:
            pw = pwd.getpwnam(TENANT)
        except KeyError:
            subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", TENANT],
                           check=True, capture_output=True)
            pw = pwd.getpwnam(TENANT)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.home = home
        os.chown(home, self.uid, self.gid)
        home.chmod(0o755)
        self.env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home),
                    "WORKSPACE_ID": WORKSPACE, "AWS_SECRET_ACCESS_KEY": SECRET}
        self.procs: list[subprocess.Popen] = []

    def binary(self, name: str, source: str = "/bin/sleep") -> Path:
        """A copy of `source` under the tenant's home, named as the tenant likes (any bytes)."""
        path = self.home / name
        shutil.copy(source, path)
        os.chown(path, self.uid, self.gid)
        return path

    def spawn(self, argv: Sequence[str | bytes | os.PathLike], env: dict | None = None,
              **kw) -> subprocess.Popen:
        """Start `argv` as the tenant, in its workspace (plus `env`)."""
        p = subprocess.Popen(list(argv), user=self.uid, group=self.gid, extra_groups=[],
                             env={**self.env, **(env or {})}, cwd=self.home,
                             start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()


@pytest.fixture
def tenant() -> Iterator[Tenant]:
    home = Path(tempfile.mkdtemp(prefix="nwtenant-", dir="/tmp"))
    t = Tenant(home)
    yield t
    t.cleanup()
    shutil.rmtree(home, ignore_errors=True)


class RunningAgent:
    """`nodewarden run` as a subprocess, its stdout read as *bytes* (a finding that is not
    valid UTF-8 or not JSON is itself a failure, kept in `bad_lines`)."""

    def __init__(self, tmp: Path, config: str = "", args: Sequence[str] = (),
                 env: dict | None = None, wait_ready: bool = True,
                 preexec: Callable[[], None] | None = None) -> None:
        self.tmp = tmp
        # the exit code the test expects at stop (2 for a refused start)
        self.expect_rc = 0
        self.port = free_port()
        cfg = tmp / "agent-config.yaml"
        cfg.write_text(config)
        self.findings: queue.Queue[dict] = queue.Queue()
        self.all_findings: list[dict] = []
        self.bad_lines: list[bytes] = []
        self.stdout_raw: list[bytes] = []
        self.stderr: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(cfg), "--format", "json",
             "--listen", f"127.0.0.1:{self.port}", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
            preexec_fn=preexec)  # noqa: PLW1509 - a limit set before exec, nothing else
        threading.Thread(target=self._out, daemon=True).start()
        threading.Thread(target=self._err, daemon=True).start()
        if wait_ready and not self.ready.wait(90):
            self.stop()
            raise AssertionError("agent not ready:\n" + "".join(self.stderr))

    def _out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout_raw.append(line)
            try:
                f = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                self.bad_lines.append(line)
                continue
            self.all_findings.append(f)
            self.findings.put(f)

    def _err(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "backslashreplace")
            self.stderr.append(line)
            if "ready:" in line:
                self.ready.set()

    def finding(self, pred: Callable[[dict], bool], timeout: float = 10) -> dict:
        """The first finding (from now on) for which `pred` holds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no such finding; stderr:\n" + "".join(self.stderr[-30:]))
            try:
                f = self.findings.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise AssertionError("the agent died:\n" + "".join(self.stderr[-30:]))
                continue
            if pred(f):
                return f

    def get(self, path: str, timeout: float = 5) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                        timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        time.sleep(0.1)  # let the reader threads drain the pipes
        return self.proc.returncode

    def all_output(self) -> bytes:
        return b"".join(self.stdout_raw) + "".join(self.stderr).encode("utf-8", "surrogateescape")


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., RunningAgent]]:
    """Start agents; each is stopped at the end, must have exited cleanly, printed no
    traceback, and never printed the tenant's secret."""
    agents: list[RunningAgent] = []

    def start(config: str = "", *args: str, **kw) -> RunningAgent:
        agents.append(RunningAgent(tmp_path, config, args, **kw))
        return agents[-1]

    yield start
    for a in agents:
        rc = a.stop()
        err = "".join(a.stderr)
        assert "Traceback" not in err, err
        assert SECRET.encode() not in a.all_output()
        assert rc == a.expect_rc, err
