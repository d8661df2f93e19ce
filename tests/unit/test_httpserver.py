"""The status server under idle connections (issue 13, defect 2), and who may read /metrics
(a bearer token, a Unix socket): what a client of the port sees."""

from __future__ import annotations

import grp
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from agent.errors import ConfigError
from agent.httpserver import StatusServer
from agent.metrics import Metrics

PARTIAL = b"GET /metrics HTTP/1.1\r\n"


def _connect(server: StatusServer | str) -> socket.socket:
    address = server if isinstance(server, str) else server.address
    if address.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(address[len("unix:"):])
        return s
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=5)


def _get(server: StatusServer | str, path: str, headers: str = "") -> tuple[int, str, bytes]:
    """(status, response head, body) of one GET."""
    with _connect(server) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode("latin-1"), body


def _closed(s: socket.socket, wait: float = 0.0) -> bool:
    """Whether the server closed (or reset) `s`, waiting up to `wait` seconds for it."""
    s.settimeout(wait or 0.05)
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except (TimeoutError, BlockingIOError):
        return False


def _closed_count(m: Metrics, reason: str) -> float:
    return m.registry.get_sample_value("nodewarden_http_connections_closed_total",
                                       {"reason": reason}) or 0.0


@pytest.fixture
def serve() -> Iterator:
    servers: list[StatusServer] = []

    def start(listen: str = "127.0.0.1:0", **kw) -> tuple[StatusServer, Metrics]:
        m = Metrics()
        server = StatusServer(listen, m, healthy=lambda: True, ready=lambda: True, **kw)
        server.start()
        servers.append(server)
        return server, m

    yield start
    for s in servers:
        s.stop()


def _hold(server: StatusServer, n: int) -> list[socket.socket]:
    """`n` connections that send a partial request and hold, in order; each is accepted
    before the next is opened."""
    out = []
    for _ in range(n):
        s = _connect(server)
        s.sendall(PARTIAL)
        out.append(s)
        time.sleep(0.02)
    return out


def test_idle_connections_past_the_cap_evict_the_oldest(serve) -> None:
    server, m = serve(max_connections=4, grace=0.0)
    socks = _hold(server, 10)
    try:
        assert [_closed(s, 1.0) for s in socks[:6]] == [True] * 6
        assert [_closed(s) for s in socks[6:]] == [False] * 4
        assert _closed_count(m, "evicted") == 6
        assert _get(server, "/healthz")[:1] == (200,)
    finally:
        for s in socks:
            s.close()


def test_within_the_grace_the_newcomer_is_refused_and_the_old_ones_stay(serve) -> None:
    server, m = serve(max_connections=4, grace=30.0)
    socks = _hold(server, 6)
    try:
        assert [_closed(s, 1.0) for s in socks[4:]] == [True, True]
        assert [_closed(s) for s in socks[:4]] == [False] * 4
        assert _closed_count(m, "full") == 2
        # a probe, whose request comes with its connection, is answered all the same
        status, _, body = _get(server, "/healthz")
        assert (status, body) == (200, b"ok\n")
    finally:
        for s in socks:
            s.close()


def test_a_thousand_idle_connections_and_healthz_still_answers(serve) -> None:
    server, _ = serve()  # 64 places, and 64 newcomers waiting up to 20 ms for a request
    socks = []
    try:
        for _ in range(1000):
            try:
                s = _connect(server)
                s.sendall(PARTIAL)
            except OSError:
                continue  # refused at the cap: a flood does not care
            socks.append(s)
        for _ in range(5):
            started = time.monotonic()
            status, _, body = _get(server, "/healthz")
            assert (status, body) == (200, b"ok\n")
            assert time.monotonic() - started < 1.0
        # the client's 1000, the server's places and waiting newcomers, and the rest
        assert len(os.listdir("/proc/self/fd")) < 1000 + 64 + 64 + 50
    finally:
        for s in socks:
            s.close()


def test_headers_must_arrive_within_the_header_timeout(serve) -> None:
    server, m = serve(header_timeout=0.3)
    s = _connect(server)
    s.sendall(PARTIAL)
    started = time.monotonic()
    assert _closed(s, 3.0)
    assert time.monotonic() - started < 2.0
    assert _closed_count(m, "header_timeout") == 1
    s.close()


def test_oversized_headers_are_refused(serve) -> None:
    server, _ = serve()
    with _connect(server) as s:
        s.sendall(PARTIAL + b"X-Pad: " + b"a" * 10000)
        assert s.recv(4096).startswith(b"HTTP/1.1 431 ")


def test_bearer_token_guards_metrics_only(serve) -> None:
    server, _ = serve(token=b"s3cret-t0ken")
    status, head, _ = _get(server, "/metrics")
    assert status == 401 and "WWW-Authenticate: Bearer" in head
    assert _get(server, "/metrics", "Authorization: Bearer wrong\r\n")[0] == 401
    assert _get(server, "/metrics", "Authorization: Basic s3cret-t0ken\r\n")[0] == 401
    status, _, body = _get(server, "/metrics", "authorization: bearer s3cret-t0ken\r\n")
    assert status == 200 and b"nodewarden_build_info" in body
    assert _get(server, "/healthz")[0] == 200
    assert _get(server, "/readyz")[0] == 200


def test_metrics_without_a_token_is_open(serve) -> None:
    server, _ = serve()
    status, head, body = _get(server, "/metrics")
    assert status == 200 and f"Content-Type: {CONTENT_TYPE_LATEST}" in head
    assert b"nodewarden_rules_loaded" in body
    assert _get(server, "/nope")[0] == 404


# -- a Unix socket --------------------------------------------------------------------------

@pytest.fixture
def rundir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    return d


def test_unix_socket_is_0600_and_serves(serve, rundir: Path) -> None:
    path = rundir / "metrics.sock"
    server, _ = serve(f"unix:{path}")
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert _get(server, "/metrics")[0] == 200
    server.stop()
    assert not path.exists()


def test_unix_socket_with_a_group_is_0660_and_owned_by_it(serve, rundir: Path) -> None:
    group = grp.getgrgid(os.getgroups()[-1] if os.getgroups() else os.getgid())
    path = rundir / "metrics.sock"
    serve(f"unix:{path}", socket_group=group.gr_name)
    st = os.lstat(path)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == group.gr_gid


def test_unix_socket_directory_is_created(serve, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    path = tmp_path / "nodewarden" / "metrics.sock"
    server, _ = serve(f"unix:{path}")
    assert stat.S_IMODE(os.lstat(path.parent).st_mode) == 0o755
    assert _get(server, "/healthz")[0] == 200


def test_a_stale_socket_is_replaced(serve, rundir: Path) -> None:
    path = rundir / "metrics.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, no one listens
    server, _ = serve(f"unix:{path}")
    assert _get(server, "/healthz")[0] == 200


def test_a_live_socket_is_not_taken_over(serve, rundir: Path) -> None:
    path = rundir / "metrics.sock"
    serve(f"unix:{path}")
    with pytest.raises(ConfigError, match="another process listens"):
        serve(f"unix:{path}")


def test_a_symlink_where_the_socket_goes_is_refused_and_not_followed(serve, rundir: Path,
                                                                     tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me")
    target.chmod(0o644)
    (rundir / "metrics.sock").symlink_to(target)
    with pytest.raises(ConfigError, match="not a socket; refusing"):
        serve(f"unix:{rundir / 'metrics.sock'}")
    assert target.read_text() == "keep me" and stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_regular_file_where_the_socket_goes_is_refused(serve, rundir: Path) -> None:
    (rundir / "metrics.sock").write_text("data")
    with pytest.raises(ConfigError, match="not a socket"):
        serve(f"unix:{rundir / 'metrics.sock'}")
    assert (rundir / "metrics.sock").read_text() == "data"


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o775])
def test_a_directory_others_can_write_is_refused(serve, rundir: Path, mode: int) -> None:
    rundir.chmod(mode)
    with pytest.raises(ConfigError, match="writable only by it"):
        serve(f"unix:{rundir / 'metrics.sock'}")


def test_a_symlinked_directory_is_refused(serve, rundir: Path, tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(rundir)
    with pytest.raises(ConfigError, match="not a directory"):
        serve(f"unix:{tmp_path / 'link' / 'metrics.sock'}")


# -- out of descriptors at accept -----------------------------------------------------------

SERVER_WITH_FEW_FDS = r"""
import os, resource, sys
from agent.httpserver import StatusServer
from agent.metrics import Metrics
server = StatusServer("127.0.0.1:0", Metrics(), lambda: True, lambda: True,
                      max_connections=200, grace=0.0)
server.start()
# what is open now, and 12 more: the cap of 200 is never reached, EMFILE comes first
resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 12, 4096))
print(server.address, flush=True)
sys.stdin.read()
server.stop()
"""


def test_out_of_descriptors_at_accept_evicts_and_still_answers() -> None:
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", SERVER_WITH_FEW_FDS], cwd=repo,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    socks = []
    try:
        assert proc.stdout is not None
        host, _, port = proc.stdout.readline().strip().rpartition(":")
        for _ in range(40):
            try:
                s = socket.create_connection((host, int(port)), timeout=5)
                s.sendall(PARTIAL)
            except OSError:
                continue
            socks.append(s)
            time.sleep(0.01)
        probe = f"{host}:{port}"
        status, _, body = _get(probe, "/metrics")
        assert status == 200
        assert b'nodewarden_fd_exhausted_total{where="http"}' in body
        assert _get(probe, "/healthz")[0] == 200
        assert proc.poll() is None
    finally:
        for s in socks:
            s.close()
        proc.communicate("", timeout=10)
    assert proc.returncode == 0
