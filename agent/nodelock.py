"""One agent per node: `nodewarden run` holds an exclusive lock on a file for its lifetime.

Two agents on one node (two Helm releases, a host install beside the DaemonSet) both ran:
each killed and reported every finding, and each refilled the kernel's rule maps with its
own rules. The second now exits 2 and says which pid holds the lock. The lock is flock(2)
on a file in a directory of its own (created 0700), so it goes with its holder however that
ends, SIGKILL included; in Kubernetes the chart mounts that directory from the host, so
agents of different releases see the same file. The holder's pid is written in the file.
"""

from __future__ import annotations

import errno
import fcntl
import os

from agent.errors import ConfigError
from agent.sinks.outfile import open_checked

DEFAULT_LOCK_FILE = "/run/nodewarden/agent.lock"
LOCK_FILE_ENV = "NODEWARDEN_LOCK_FILE"


def default_lock_file() -> str:
    """$NODEWARDEN_LOCK_FILE, else /run/nodewarden/agent.lock for root; an unprivileged agent
    (a developer's dry run) cannot write /run and locks a file of its own user instead."""
    if os.environ.get(LOCK_FILE_ENV):
        return os.environ[LOCK_FILE_ENV]
    if os.geteuid() == 0:
        return DEFAULT_LOCK_FILE
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"
    return os.path.join(base, f"nodewarden-{os.geteuid()}", "agent.lock")


class NodeLock:
    """The held lock; `release()` (or the process's end) lets the next agent start."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def take(cls, path: str) -> NodeLock:
        """Lock `path` or raise ConfigError naming the agent that holds it."""
        parent = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(parent, mode=0o700, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"lock_file {path}: cannot create the directory {parent}: "
                              f"{e.strerror}; create it (mode 0700) or set lock_file "
                              f"(or ${LOCK_FILE_ENV})") from None
        fd = open_checked(path, "lock_file", os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigError(f"lock_file {path}: cannot lock: {e.strerror}") from None
            raise ConfigError(f"another nodewarden (pid {holder}) is running on this node: "
                              f"{path} is locked; one agent per node is enough (stop the "
                              f"other first)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd, path)

    def release(self) -> None:
        """Drop the lock (idempotent); the next agent may start."""
        if self.fd >= 0:
            os.close(self.fd)  # closing the only fd of the open file drops the flock
            self.fd = -1
