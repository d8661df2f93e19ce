"""The agent's HTTP endpoint: /metrics (Prometheus), /healthz (the main loop is turning),
/readyz (start-up is done: rules loaded, first scan judged, sensors attached).

A tenant can reach this port, so it is a bounded server: one thread, one selector,
`max_connections` places (64, fewer under a low RLIMIT_NOFILE), request headers within
`header_timeout` seconds and the whole exchange within `request_timeout`, one request per
connection. A new connection is read at once and has `patience` (20 ms) to send a whole
request without needing a place: a probe's is answered then (at most `max_connections`
newcomers wait so; the rest wait in the kernel's queue, which costs no descriptor). Then it
takes the place of the oldest connection that has not sent a whole request, once that one
has had `grace` seconds, or is refused. A thousand idle connections (`GET /metrics
HTTP/1.1\\r\\n`, then nothing) cost the agent at most 2 x `max_connections` descriptors,
and the kubelet's probe is answered. Cut connections are reset (no TIME_WAIT flood).

`listen` is HOST:PORT or `unix:/PATH`: a Unix socket (0600, or 0660 for `socket_group`)
in a directory only the agent's user can write. With `token`, /metrics wants
`Authorization: Bearer TOKEN`; /healthz and /readyz stay open for probes.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import resource
import selectors
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent.config import UNIX_PREFIX, group_id
from agent.errors import ConfigError
from agent.fdlimit import exhausted
from agent.metrics import Metrics

log = logging.getLogger("nodewarden.http")

MAX_CONNECTIONS = 64
HEADER_TIMEOUT = 5.0
REQUEST_TIMEOUT = 10.0
MAX_HEADER_BYTES = 8192
# a newcomer without its whole request has this long to send it before it needs a place
# (a probe accepted a moment before its request arrives is answered, not refused); at most
# `max_connections` newcomers wait so at a time, the others in the kernel's queue
PATIENCE = 0.02
# at the cap, a connection younger than this is not evicted for a new one (the new one is
# refused instead): without it, a flood that reconnects at once turns the table over in
# milliseconds, and a probe accepted just before its request arrives is cut every time
GRACE = 0.5
# the kernel's queue of connections not yet accepted (capped by net.core.somaxconn): it
# costs the agent no descriptor, and a deep one keeps a probe's SYN from being dropped
# while a thousand idle connections wait there
BACKLOG = 4096
# accepts per wake-up, so reading the requests already accepted is never starved
ACCEPT_BATCH = 16
# how long the listener rests when no descriptor can be freed for an accept
EMFILE_PAUSE = 0.1
_RESET = struct.pack("ii", 1, 0)  # struct linger {on, 0 s}: close() sends a RST
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    started: float
    inbuf: bytearray = field(default_factory=bytearray)
    out: bytes = b""
    sent: int = 0
    # has a place among the `max_connections` (a newcomer waits `patience` for one)
    admitted: bool = False

    @property
    def answering(self) -> bool:
        """Whether its request was read whole (the response is being written)."""
        return bool(self.out)


class StatusServer:
    """Serves the three endpoints from a daemon thread until `stop()`."""

    def __init__(self, listen: str, metrics: Metrics, healthy: Callable[[], bool],
                 ready: Callable[[], bool], token: bytes | None = None, socket_group: str = "",
                 max_connections: int = 0, header_timeout: float = HEADER_TIMEOUT,
                 request_timeout: float = REQUEST_TIMEOUT, grace: float = GRACE,
                 patience: float = PATIENCE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.healthy = healthy
        self.ready = ready
        self.token = token
        self.max_connections = max_connections or _places()
        self.header_timeout = header_timeout
        self.request_timeout = request_timeout
        self.grace = grace
        self.patience = patience
        self.clock = clock
        self.unix_path = ""
        self._unix_ino = 0
        if listen.startswith(UNIX_PREFIX):
            self.unix_path = listen[len(UNIX_PREFIX):]
            self._listener = _unix_listener(self.unix_path, socket_group)
            self._unix_ino = os.lstat(self.unix_path).st_ino
        else:
            self._listener = _tcp_listener(listen)
        self._listener.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._listening = True
        self._resume_at = 0.0
        self._conns: dict[int, _Conn] = {}  # by fd, in accept order: the first is the oldest
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)

    @property
    def address(self) -> str:
        """Where it listens: `unix:/PATH` or `HOST:PORT` (the port the kernel chose for 0)."""
        if self.unix_path:
            return UNIX_PREFIX + self.unix_path
        host, port = self._listener.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> None:
        """Serve from the daemon thread, so the main loop is never blocked by a client."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, close every connection and remove our Unix socket, if any."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for conn in list(self._conns.values()):
            self._close(conn)
        self._sel.close()
        self._listener.close()
        if self.unix_path:
            try:  # remove our socket, not one another process put there since
                if os.lstat(self.unix_path).st_ino == self._unix_ino:
                    os.unlink(self.unix_path)
            except OSError:
                pass

    # -- the loop ------------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stopping.is_set():
            for key, mask in self._sel.select(self._wait()):
                try:
                    if key.data is None:
                        self._accept()
                    elif mask & selectors.EVENT_READ:
                        self._read(key.data)
                    elif mask & selectors.EVENT_WRITE:
                        self._write(key.data)
                except Exception as e:  # noqa: BLE001 - one bad exchange must not end /healthz
                    log.error("status endpoint: %s: %s", type(e).__name__, e)
                    if key.data is not None:
                        self._close(key.data, abort=True)
            self._expire()

    def _wait(self) -> float:
        now = self.clock()
        wait = 0.5
        if not self._listening:
            wait = min(wait, self._resume_at - now)
        for conn in self._conns.values():
            if not conn.admitted and not conn.answering:
                limit = self.patience
            else:
                limit = self.request_timeout if conn.answering else self.header_timeout
            wait = min(wait, conn.started + limit - now)
        return max(wait, 0.005)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if self._waiting() >= self.max_connections:
                # newcomers enough are waiting for their request: the rest wait in the
                # kernel's queue until the oldest of them is decided
                oldest = min(c.started for c in self._conns.values() if not c.admitted)
                self._pause(oldest + self.patience)
                return
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if not exhausted(e):
                    continue  # ECONNABORTED and the like: that client gave up
                self.metrics.fd_exhausted.labels(where="http").inc()
                if self._evict():
                    continue  # a descriptor is free again: retry the accept
                # nothing of ours to free: rest, rather than spin on a readable listener
                self._pause(self.clock() + EMFILE_PAUSE)
                return
            sock.setblocking(False)
            conn = _Conn(sock, self.clock())
            self._conns[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)
            # a probe's request is there already, as a rule: it is answered at once
            self._read(conn)

    def _waiting(self) -> int:
        return sum(1 for c in self._conns.values() if not c.admitted and not c.answering)

    def _pause(self, until: float) -> None:
        if self._listening:
            self._sel.unregister(self._listener)
            self._listening = False
        self._resume_at = until

    def _admit(self, now: float) -> None:
        """Newcomers that have waited `patience` without a whole request take a place:
        a free one, else that of the oldest connection past its grace, else none (reset)."""
        admitted = sum(1 for c in self._conns.values() if c.admitted)
        for conn in list(self._conns.values()):
            if conn.admitted or conn.answering or now - conn.started < self.patience:
                continue
            if admitted < self.max_connections or self._evict(now - self.grace):
                conn.admitted = True
                admitted = min(admitted + 1, self.max_connections)
            else:
                self.metrics.http_closed.labels(reason="full").inc()
                self._close(conn, abort=True)

    def _evict(self, started_before: float = float("inf")) -> bool:
        """Close the oldest admitted connection that started before `started_before` and
        is still sending its request (else the oldest such one being answered); out of
        descriptors (no bound given), any connection will do."""
        victim = None
        anyone = started_before == float("inf")
        for c in self._conns.values():
            if c.started >= started_before:
                break  # in accept order: the rest are younger
            if not (c.admitted or anyone):
                continue
            if not c.answering:
                victim = c
                break
            victim = victim or c
        if victim is None:
            return False
        self.metrics.http_closed.labels(reason="evicted").inc()
        self._close(victim, abort=True)
        return True

    def _expire(self) -> None:
        now = self.clock()
        for conn in list(self._conns.values()):
            if conn.answering and now - conn.started > self.request_timeout:
                self.metrics.http_closed.labels(reason="request_timeout").inc()
                self._close(conn, abort=True)
            elif not conn.answering and now - conn.started > self.header_timeout:
                self.metrics.http_closed.labels(reason="header_timeout").inc()
                self._close(conn, abort=True)
        self._admit(now)
        if not self._listening and now >= self._resume_at:
            self._sel.register(self._listener, selectors.EVENT_READ, None)
            self._listening = True

    def _close(self, conn: _Conn, abort: bool = False) -> None:
        """Close `conn`; `abort` resets it (SO_LINGER 0): no TIME_WAIT entry is left, so a
        flood of connections the agent cuts does not fill the port's table with them (a
        probe's SYN that met one was dropped, and waited a second for its retransmit)."""
        if self._conns.pop(conn.sock.fileno(), None) is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.sock)
        if abort:
            with contextlib.suppress(OSError):
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        conn.sock.close()

    # -- one exchange --------------------------------------------------------------------

    def _read(self, conn: _Conn) -> None:
        if conn.answering:
            return
        try:
            data = conn.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        conn.inbuf += data
        end = conn.inbuf.find(b"\r\n\r\n")
        if end < 0:
            end = conn.inbuf.find(b"\n\n")
        if end < 0:
            if len(conn.inbuf) > MAX_HEADER_BYTES:
                self.metrics.http_closed.labels(reason="too_large").inc()
                self._respond(conn, 431, b"request headers too large\n", head=False)
            return
        self._answer(conn, bytes(conn.inbuf[:end]))

    def _answer(self, conn: _Conn, head: bytes) -> None:
        lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self._respond(conn, 400, b"bad request\n", head=False)
            return
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            self._respond(conn, 405, b"only GET and HEAD\n", head=False)
            return
        is_head = method == "HEAD"
        path = target.split("?", 1)[0]
        if path.startswith(("http://", "https://")):  # absolute-form
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        if path == "/metrics":
            if self.token is not None and not self._authorized(lines[1:]):
                self._respond(conn, 401, b"a bearer token is required\n", is_head,
                              extra=("WWW-Authenticate", 'Bearer realm="nodewarden"'))
            else:
                self._respond(conn, 200, generate_latest(self.metrics.registry), is_head,
                              ctype=CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok = self.healthy()
            self._respond(conn, 200 if ok else 503, b"ok\n" if ok else b"main loop stalled\n",
                          is_head)
        elif path == "/readyz":
            ok = self.ready()
            self._respond(conn, 200 if ok else 503, b"ready\n" if ok else b"starting\n", is_head)
        else:
            self._respond(conn, 404, b"not found: try /metrics, /healthz or /readyz\n", is_head)

    def _authorized(self, header_lines: list[str]) -> bool:
        assert self.token is not None
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() != "authorization":
                continue
            scheme, _, given = value.strip().partition(" ")
            if scheme.lower() == "bearer":
                return hmac.compare_digest(given.strip().encode("latin-1"), self.token)
        return False

    def _respond(self, conn: _Conn, code: int, body: bytes, head: bool,
                 ctype: str = "text/plain; charset=utf-8",
                 extra: tuple[str, str] | None = None) -> None:
        headers = [f"HTTP/1.1 {code} {_REASONS.get(code, '')}", f"Content-Type: {ctype}",
                   f"Content-Length: {len(body)}", "Connection: close"]
        if extra is not None:
            headers.append(f"{extra[0]}: {extra[1]}")
        conn.out = ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1") + (b"" if head else body)
        self._sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        try:
            conn.sent += conn.sock.send(conn.out[conn.sent:])
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        if conn.sent >= len(conn.out):
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
            self._close(conn)


def _places() -> int:
    """MAX_CONNECTIONS, or fewer under a low RLIMIT_NOFILE: places and as many waiting
    newcomers take at most a quarter of the agent's descriptors."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(4, min(MAX_CONNECTIONS, soft // 8))


def _tcp_listener(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot listen on {listen}: {e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {listen}: {e.strerror}") from None
    return sock


def _unix_listener(path: str, group: str) -> socket.socket:
    """A listening Unix socket at `path`, 0600 (0660 and owned by `group` if given).

    Its directory is created 0755 if missing and must be a real directory (not a symlink)
    owned by the agent's user and writable by no one else: then no one else can put a
    symlink or a file where the socket goes, or swap it while it is being set up. A stale
    socket (no one answers on it) is replaced; anything else there is refused."""
    where = os.path.dirname(path) or "/"
    try:
        os.mkdir(where, 0o755)
    except FileExistsError:
        pass
    except OSError as e:
        raise ConfigError(f"cannot create the directory of {path}: {e.strerror}") from None
    st = os.lstat(where)
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"listen {UNIX_PREFIX}{path}: {where} is not a directory "
                          "(a symlink is refused)")
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ConfigError(f"listen {UNIX_PREFIX}{path}: {where} must be owned by the agent's "
                          f"user and writable only by it (mode {stat.filemode(st.st_mode)}, "
                          f"uid {st.st_uid}); use a directory such as /run/nodewarden")
    try:
        old = os.lstat(path)
    except FileNotFoundError:
        old = None
    if old is not None:
        if not stat.S_ISSOCK(old.st_mode):
            raise ConfigError(f"listen {UNIX_PREFIX}{path}: a {stat.filemode(old.st_mode)} "
                              "file is there, not a socket; refusing to replace it")
        if _answers(path):
            raise ConfigError(f"listen {UNIX_PREFIX}{path}: another process listens there")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # no one can connect before listen(): the mode and group are right by then
        os.chmod(path, 0o660 if group else 0o600)
        if group:
            os.chown(path, -1, group_id(group), follow_symlinks=False)
        sock.listen(BACKLOG)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {UNIX_PREFIX}{path}: {e.strerror}") from None
    return sock


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except OSError:
            return False
        return True

