"""The hostile tenant: a `useradd`-made user in a workspace, with secrets in its environment,
trying to crash, blind or misdirect a real `nodewarden run` (issue 13's red-team pass).

Each module under tests/hostile/ takes one family of attacks; this file holds the tenant,
the agent under attack, and the eBPF check shared by all of them. Under
NODEWARDEN_REQUIRE_EBPF=1 (CI) an eBPF test that skips is a failure (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.agentproc import RunningAgent, free_port

__all__ = ["RunningAgent", "Tenant", "free_port"]

TENANT = "nwtenant"
WORKSPACE = "ws-red"
# a secret in the tenant's environment: it must never reach any output of the agent
SECRET = "s3cr3t-token-do-not-leak"


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
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.fixture
def tenant() -> Iterator[Tenant]:
    home = Path(tempfile.mkdtemp(prefix="nwtenant-", dir="/tmp"))
    t = Tenant(home)
    yield t
    t.cleanup()
    shutil.rmtree(home, ignore_errors=True)


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
