"""The agent's own files (findings_file, --record, the node lock), opened so a tenant cannot
aim them.

The agent runs as root and is often told to write in a directory others can write (/tmp, a
shared volume). Opened naively (`open(path, "a")`), a tenant's symlink there makes root create
or append to any file (a shell-quoted argv in the JSON then runs as root when that file is
sourced); a FIFO blocks the agent before it is ready; a file the tenant owns, or a hard link the
tenant made, lets the tenant truncate and forge findings. So a file is opened without following
a symlink and without blocking, and kept only if it is a regular file of the agent's user that
nobody else may write and that has no other name; the directory holding it must be the agent's
user's (or root's) and, if everyone may write it, sticky (like /tmp), so the file cannot be
replaced. Anything else is refused
with a ConfigError (exit 2) that names the file, what is wrong and the fix.

What remains: a symlink in a *parent* directory that root (or the agent's user) owns is
followed, as /var/run -> /run must be.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from typing import TextIO

from agent.errors import ConfigError

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISLNK, "a symbolic link"))


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def _owners() -> tuple[int, ...]:
    return (0, os.geteuid())


def _check_path_symlinks(path: str, what: str) -> None:
    """Refuse a symlink anywhere in `path` that someone other than root or us made."""
    parts = os.path.abspath(path).split("/")[1:]
    prefix = ""
    for part in parts:
        prefix += "/" + part
        try:
            st = os.lstat(prefix)
        except OSError:
            return  # the open below says what is missing
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in _owners():
            raise ConfigError(f"{what} {path}: {prefix} is a symbolic link owned by uid "
                              f"{st.st_uid}, who could point it anywhere; use a path in a "
                              f"directory only root can write")


def _open_dir(path: str, what: str) -> int:
    """The directory that will hold `path`, checked: ours, and nobody else can swap names in it."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path}: the directory {parent} does not exist; create it "
                          f"(e.g. mkdir -m 0700 {parent}) or choose another path") from None
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot open the directory {parent}: "
                          f"{e.strerror}") from None
    st = os.fstat(dfd)
    problem = ""
    if st.st_uid not in _owners():
        problem = f"belongs to uid {st.st_uid}, who can replace the file in it"
    elif st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        # a group-writable one (Ubuntu's /var/log is root:syslog 0775) is the admin's choice
        problem = (f"is writable by everyone (mode {stat.S_IMODE(st.st_mode):04o}) without "
                   f"the sticky bit, so anyone can replace the file in it")
    if problem:
        os.close(dfd)
        raise ConfigError(f"{what} {path}: the directory {parent} {problem}; use a directory "
                          f"only root can write (e.g. /var/log/nodewarden, mode 0700)")
    return dfd


def open_checked(path: str, what: str, flags: int, mode: int = 0o600) -> int:
    """An fd of `path` (created `mode` if missing) opened with `flags` plus O_CREAT|O_NOFOLLOW|
    O_CLOEXEC, after the checks above; O_NONBLOCK is used to open and cleared after.
    `what` names the file for the user ("findings_file"). Raises ConfigError."""
    _check_path_symlinks(path, what)
    dfd = _open_dir(path, what)
    name = os.path.basename(path)
    try:
        fd = os.open(name, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     mode, dir_fd=dfd)
    except OSError as e:
        raise ConfigError(f"{what} {path}: {_why_not(e, name, dfd)}") from None
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    problem = ""
    if not stat.S_ISREG(st.st_mode):
        problem = f"is {_kind(st.st_mode)}, not a regular file; remove it"
    elif st.st_uid != os.geteuid():
        problem = (f"belongs to uid {st.st_uid}, not to the agent's uid {os.geteuid()}, and its "
                   f"owner could truncate or forge it; remove it (the agent creates it 0600)")
    elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = (f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                   f"chmod 600 {path}")
    elif st.st_nlink != 1:
        problem = (f"has {st.st_nlink} hard links, so another name for it may be someone "
                   f"else's file; remove it (the agent creates a new one)")
    if problem:
        os.close(fd)
        raise ConfigError(f"{what} {path} {problem}")
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd


def _why_not(e: OSError, name: str, dfd: int) -> str:
    if e.errno == errno.ELOOP:
        return "is a symbolic link, which the agent does not follow; remove it or name its target"
    if e.errno == errno.ENXIO:
        return "is a FIFO or a socket, not a regular file; remove it"
    if e.errno == errno.EISDIR:
        return "is a directory; name a file in it"
    if e.errno == errno.EACCES:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            return (f"is {_kind(st.st_mode) if not stat.S_ISREG(st.st_mode) else 'a file'} "
                    f"of uid {st.st_uid} that the kernel does not let the agent open "
                    f"(fs.protected_regular/fifos); remove it")
        except OSError:
            pass
    return f"cannot open: {e.strerror}"


def open_output(path: str, what: str) -> TextIO:
    """`path` for appending text, line-buffered (a log shipper tails it, and a recording is
    complete up to the last line even if the agent is killed). Raises ConfigError."""
    fd = open_checked(path, what, os.O_WRONLY | os.O_APPEND)
    return os.fdopen(fd, "a", encoding="utf-8", buffering=1)
