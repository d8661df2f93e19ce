"""A real `nodewarden run` for the tests that need one: its findings (stdout read as bytes,
so output that is not UTF-8 JSON is itself a failure), its log, its HTTP endpoints, and a
clean stop. Shared by tests/hostile/ and tests/integration/."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningAgent:
    """`nodewarden run` as a subprocess, its stdout read as *bytes* (a finding that is not
    valid UTF-8 or not JSON is itself a failure, kept in `bad_lines`)."""

    def __init__(self, tmp: Path, config: str = "", args: Sequence[str] = (),
                 env: dict | None = None, wait_ready: bool = True,
                 preexec: Callable[[], None] | None = None, record: bool = False) -> None:
        self.tmp = tmp
        # with `record`: every judged event as JSON lines (--record), for `recorded`
        self.record = tmp / "events.jsonl"
        if record:
            args = ["--record", str(self.record), *args]
        # the exit code the test expects at stop (2 for a refused start)
        self.expect_rc = 0
        self.port = free_port()
        cfg = tmp / "agent-config.yaml"
        cfg.write_text(config)
        # (monotonic time it was read, finding)
        self.findings: queue.Queue[tuple[float, dict]] = queue.Queue()
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
            self.findings.put((time.monotonic(), f))

    def _err(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "backslashreplace")
            self.stderr.append(line)
            if "ready:" in line:
                self.ready.set()

    def finding(self, pred: Callable[[dict], bool], timeout: float = 10) -> dict:
        """The first finding (from now on) for which `pred` holds."""
        return self.finding_at(pred, timeout)[1]

    def finding_at(self, pred: Callable[[dict], bool], timeout: float = 10
                   ) -> tuple[float, dict]:
        """(monotonic time it was read, the finding): the first from now on that `pred`
        takes."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no such finding; stderr:\n" + "".join(self.stderr[-30:]))
            try:
                at, f = self.findings.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise AssertionError(
                        "the agent died:\n" + "".join(self.stderr[-30:])) from None
                continue
            if pred(f):
                return at, f

    def recorded(self, pred: Callable[[dict], bool], timeout: float = 10) -> dict:
        """The first recorded event (started with `record`) for which `pred` holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.record.exists():
                for line in self.record.read_text().splitlines():
                    ev = json.loads(line)
                    if pred(ev):
                        return ev
            time.sleep(0.05)
        raise AssertionError("no such recorded event")

    def metrics(self) -> str:
        """The /metrics text."""
        return self.get("/metrics")[1].decode()

    def get(self, path: str, timeout: float = 5) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}",
                                        timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def expect_sensors(self, *names: str) -> None:
        """Fail unless the ready line names these eBPF sensors, stopping the agent first (an
        agent whose test failed at start must not outlive it)."""
        if not any("ready: eBPF sensors" in line and all(n in line for n in names)
                   for line in self.stderr):
            self.stop()
            raise AssertionError("".join(self.stderr))

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

    def wait_log(self, text: str, timeout: float = 10, after: int = 0) -> int:
        """Wait until a log line (from line `after` on) contains `text`; its index."""
        deadline = time.monotonic() + timeout
        while True:
            for i, line in enumerate(self.stderr[after:], after):
                if text in line:
                    return i
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line with {text!r}:\n" + "".join(self.stderr[-30:]))
            if self.proc.poll() is not None:
                raise AssertionError("the agent died:\n" + "".join(self.stderr[-30:]))
            time.sleep(0.05)

    def metric(self, name: str) -> float:
        """The value of one sample of /metrics, e.g. 'nodewarden_scans_total{reason="periodic"}'
        (0 when absent)."""
        _, body = self.get("/metrics")
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

