"""The file record (struct nw_file_event, bpf/file.bpf.c) to a FileOp (pure but for the
procfs lookups of a relative path).

The kernel sends a path as the caller passed it. An absolute one becomes the event's
FileOp at once, made canonical (`/etc//shadow` and `/etc/./shadow` are `/etc/shadow` to a
rule); a relative one is resolved when the observer handles the record, against the
caller's working directory or the directory fd it passed (`/proc/PID/cwd`,
`/proc/PID/fd/N`), while the process lives. One that cannot be resolved (the process is
gone) stays relative, so path rules do not match it (SECURITY.md).
"""

from __future__ import annotations

import os
import posixpath
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agent import text
from agent.details import FILE_OPS, FileOp

COMM_LEN = 16
PATH_LEN = 256        # NW_FILE_PATH_LEN
NAME_LEN = 32         # NW_FILE_NAME_LEN
AT_FDCWD = 4294967196  # NW_AT_FDCWD: (u32)-100

# struct nw_file_event
FILE_FIELDS: tuple[tuple[str, str], ...] = (
    ("ts_ns", "Q"), ("kind", "I"), ("pid", "I"), ("uid", "I"), ("op", "I"), ("flags", "I"),
    ("mode", "I"), ("dirfd", "I"), ("dest_dirfd", "I"), ("comm", f"{COMM_LEN}s"),
    ("path", f"{PATH_LEN}s"), ("dest", f"{PATH_LEN}s"),
)
FILE_FORMAT = struct.Struct("<" + "".join(code for _, code in FILE_FIELDS))


class _Procfs(Protocol):
    root: str


def _cstr(b: bytes) -> str:
    end = b.find(b"\0")
    return text.decode(b if end < 0 else b[:end])


def canonical(path: str) -> str:
    """An absolute path as a rule compares it: no `//`, `/./` or `..` (taken lexically, as
    the caller wrote it; symbolic links are not followed)."""
    out = posixpath.normpath(path)
    return "/" + out.lstrip("/") if out.startswith("//") else out


def _resolve(path: str, dirfd: int, pid: int, root: str) -> str:
    if not path or path.startswith("/"):
        return canonical(path) if path else path
    where = "cwd" if dirfd == AT_FDCWD else f"fd/{dirfd}"
    try:
        base = os.readlink(f"{root}/{pid}/{where}")
    except OSError:
        return path   # gone, or not a directory fd: the path as given
    if not base.startswith("/"):
        return path   # an fd of something else ("socket:[...]")
    return canonical(posixpath.join(base, path))


@dataclass(frozen=True, slots=True)
class PendingFileOp:
    """A file record with a relative path: the FileOp once `resolve` has read, from
    procfs, what the path was relative to."""

    path: str
    op: str
    flags: int
    mode: int
    dest: str
    dirfd: int
    dest_dirfd: int

    def resolve(self, pid: int, procfs: _Procfs) -> FileOp:
        """The FileOp with its paths made absolute against the caller's cwd or dirfd."""
        root = procfs.root.rstrip("/") or ""
        return FileOp(path=_resolve(self.path, self.dirfd, pid, root), op=self.op,
                      flags=self.flags, mode=self.mode,
                      dest=_resolve(self.dest, self.dest_dirfd, pid, root))


def _absolute(path: str) -> bool:
    return not path or path.startswith("/")


def file_decoder(make: Callable[..., Any]) -> Callable[[bytes | memoryview], Any]:
    """The decoder of file records; `make` is kevents.raw_detail."""
    unpack = FILE_FORMAT.unpack_from
    ops = FILE_OPS

    def decode(data: bytes | memoryview) -> Any:
        (ts, kind, pid, uid, op, flags, mode, dirfd, dest_dirfd, comm, raw_path,
         raw_dest) = unpack(data)
        path, dest = _cstr(raw_path), _cstr(raw_dest)
        name = ops[op] if op < len(ops) else ""
        detail: FileOp | PendingFileOp
        if _absolute(path) and _absolute(dest):
            detail = FileOp(path=canonical(path) if path else path, op=name, flags=flags,
                            mode=mode, dest=canonical(dest) if dest else dest)
        else:
            detail = PendingFileOp(path, name, flags, mode, dest, dirfd, dest_dirfd)
        return make(ts, kind, pid, uid, _cstr(comm), detail)

    return decode
