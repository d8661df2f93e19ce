"""Reading processes from a procfs root: the only code that opens /proc/PID files.

The reader opens /proc/PID once as a directory and reads every file relative to that
descriptor: if the process exits and its pid is reused mid-read, reads through the old
descriptor fail with ESRCH instead of silently mixing two processes.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import NamedTuple

from agent.enrich.workspace import find_marker
from agent.errors import EXHAUSTED, AccessDenied, FdExhausted, ProcessGone
from agent.model import Process
from agent.sources.cmdline import CmdlineBudget, RawCmdline, read_cmdline
from agent.sources.procfs.cgroup import CGROUPS, Cgroup
from agent.sources.procfs.parse import (
    PF_KTHREAD,
    Program,
    Stat,
    parse_cmdline,
    parse_netns,
    parse_stat,
    parse_stat_and_program,
    parse_stat_program,
    parse_status_uid,
)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_CLOEXEC
# ENOTDIR: a numeric entry that is not a pid directory (never in a real procfs)
_GONE = (errno.ESRCH, errno.ENOENT, errno.ENOTDIR)

# Upper bounds on what a scan reads from one process: cmdline and environ are attacker
# controlled and can be many MiB; past these limits the text is truncated, never a crash.
# A command line keeps its head and its tail (agent/sources/cmdline.py).
ENVIRON_LIMIT = 4 * 1024 * 1024
# /proc/PID/cgroup: one line per hierarchy, a few hundred bytes on any real host
CGROUP_LIMIT = 65536


def _open_file(name: str, dfd: int) -> int:
    """A file of a pid directory, opened for reading. Out of descriptors is FdExhausted: it
    says nothing about the process, so it must never be read as an empty file."""
    try:
        return os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dfd)
    except OSError as e:
        if e.errno in EXHAUSTED:
            raise FdExhausted(e.errno, e.strerror) from None
        raise


def _read_fd(fd: int, limit: int) -> bytes:
    """At most `limit` bytes of an open file. A read that returns less than it asked for
    has reached the end: procfs fills the buffer it is given (seq_file records, and the
    cmdline and environ readers loop until it is full), so the usual extra read that
    returns 0 is not made (a scan reads ~10 files per process)."""
    want = min(65536, limit)
    data = os.read(fd, want)
    if len(data) < want:
        return data
    chunks = [data]
    size = len(data)
    while size < limit:
        chunk = os.read(fd, min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _read(name: str, dfd: int, limit: int) -> bytes:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dfd)
    except OSError as e:
        if e.errno in EXHAUSTED:  # as _open_file, inline: a scan reads ~5 files a process
            raise FdExhausted(e.errno, e.strerror) from None
        raise
    try:
        return _read_fd(fd, limit)
    finally:
        os.close(fd)


def _stat_error(pid: int, e: OSError) -> Exception:
    """What a failed open or read of /proc/PID/stat means (as `ProcFS._must` tells it)."""
    if isinstance(e, FdExhausted):
        return e
    if e.errno in EXHAUSTED:
        return FdExhausted(e.errno, e.strerror)
    if isinstance(e, PermissionError):
        return AccessDenied(pid, "stat")
    if e.errno in _GONE:
        return ProcessGone(pid)
    return e


# namespace link as readlink gives it in bytes (`net:[4026531840]`) -> its inode: a host
# has a few, every process of a scan names one; bounded (a tenant making namespaces by the
# thousand only cycles it)
_NETNS: dict[bytes, int] = {}
_NETNS_MAX = 1024

# what a first scan hands the command-line budget for a command line read whole: `hold`
# looks at the RawCmdline only when it was cut (and one per process costs as much as a read)
_WHOLE = RawCmdline(b"")


def _netns(link: bytes) -> int:
    """`parse_netns(link)`, kept in _NETNS."""
    if len(_NETNS) >= _NETNS_MAX:
        _NETNS.clear()
    value = _NETNS[link] = parse_netns(link.decode("ascii", "replace"))
    return value


def _live_task(pid: int, dfd: int) -> tuple[int, str] | None:
    """A directory fd on /proc/PID/task/TID of a thread other than the leader that has not
    exited, and its state; None when there is none (a true zombie)."""
    try:
        tfd = os.open("task", _DIR_FLAGS, dir_fd=dfd)
    except OSError:
        return None
    try:
        for name in os.listdir(tfd):
            if not name.isdigit() or int(name) == pid:
                continue
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=tfd)
            except OSError:
                continue
            try:
                state = parse_stat(_read("stat", fd, 4096)).state
            except (OSError, ValueError):
                state = "Z"
            if state not in ("Z", "X"):
                return fd, state
            os.close(fd)
        return None
    finally:
        os.close(tfd)


class ExecRead(NamedTuple):
    """What `ProcFS.read_exec` gives: the facts of a process that its exec record (taken in
    the kernel) cannot, and its cgroup and command line only when asked for."""

    stat: Stat
    exe: str
    exe_dev: int
    exe_ino: int
    uid: int
    netns: int
    cgroup: Cgroup | None
    cmdline: RawCmdline | None


class ImageRead(NamedTuple):
    """What `ProcFS.read_image` gives: the executable of a process whose other facts its
    exec record carries, and its cgroup and command line only when asked for."""

    exe: str
    exe_dev: int
    exe_ino: int
    cgroup: Cgroup | None
    cmdline: RawCmdline | None


class Known(NamedTuple):
    """A process as last read, and the program key its stat had then (parse_stat_program):
    what `ProcFS.refresh` compares to tell whether it must read the process again."""

    process: Process
    program: Program


class ProcFS:
    """A procfs tree at `root` (the host's /proc, a container's view, or a test fixture)."""

    def __init__(self, root: str = "/proc", cmdlines: CmdlineBudget | None = None) -> None:
        self.root = root.rstrip("/") or "/"
        # the memory of every command line read here and still held somewhere
        self.cmdlines = cmdlines or CmdlineBudget()
        # the `NAME=` bytes of each markers sequence environ_marker was given
        self._marker_keys: dict[Sequence[str], tuple[bytes, ...]] = {}

    def pids(self) -> list[int]:
        """Every process id present now (thread group leaders only), ascending."""
        out = []
        with os.scandir(self.root) as it:
            for entry in it:
                name = entry.name
                if name.isascii() and name.isdigit():
                    out.append(int(name))
        out.sort()
        return out

    def _open(self, pid: int) -> int:
        try:
            return os.open(f"{self.root}/{pid}", _DIR_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            raise ProcessGone(pid) from None
        except PermissionError:
            raise AccessDenied(pid, "") from None
        except OSError as e:
            if e.errno in _GONE:
                raise ProcessGone(pid) from None
            if e.errno in EXHAUSTED:
                raise FdExhausted(e.errno, e.strerror) from None
            raise

    def stat(self, pid: int) -> Stat:
        """Only /proc/PID/stat: enough for identity checks before a kill."""
        dfd = self._open(pid)
        try:
            return parse_stat(self._must(pid, dfd, "stat", 4096))
        except ValueError:
            raise ProcessGone(pid) from None
        finally:
            os.close(dfd)

    def cgroup(self, pid: int) -> Cgroup:
        """The cgroups of the process as /proc/PID/cgroup names them (relative to the
        reader's cgroup namespace). Raises ProcessGone or AccessDenied like `stat`."""
        dfd = self._open(pid)
        try:
            return CGROUPS.parse(self._must(pid, dfd, "cgroup", CGROUP_LIMIT))
        finally:
            os.close(dfd)

    def read(self, pid: int) -> Process:
        """Everything a rule may need about one process. Raises ProcessGone when it exited
        before its stat could be read; later files missing or denied degrade to empty."""
        return self.read_known(pid).process

    def refresh(self, pid: int, known: Known) -> Known:
        """`pid` again, from its stat alone while it is the process `known` describes,
        running the same program: same start time, parent, comm, code and stack addresses
        (an exec moves them) and executable inode (a cheap stat through /proc/PID/exe: an
        exec without address randomisation). Anything else, and a zombie leader whose
        threads may run on, is read in full. Counters and the state (R/S/D) stay as first
        read, and so do the uid, cgroup and netns: a scan judges a program once."""
        try:
            fd = os.open(f"{self.root}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return self.read_known(pid)  # the same errors, told the same way
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        finally:
            os.close(fd)
        try:
            state, program = parse_stat_program(data)
        except ValueError:
            return self.read_known(pid)
        p = known.process
        if state in (b"Z", b"X") or program != known.program:
            return self.read_known(pid)
        if not p.kthread:
            try:
                st = os.stat(f"{self.root}/{pid}/exe")
                exe = (st.st_dev, st.st_ino)
            except OSError:
                exe = (0, 0)
            if exe != (p.exe_dev, p.exe_ino):
                return self.read_known(pid)
        return known

    def read_known(self, pid: int) -> Known:
        """`read`, with the program key of the stat it read (for `refresh`).

        Every file is opened, read and closed inline, by bytes names (no encoding of a
        str path per call), not through the helpers `read_exec` uses: a first scan reads
        ~8 files of each of thousands of processes, and the layers of calls cost as much
        as the reads (bench/scan.py compares it with a C walk of the same files)."""
        dfd = self._open(pid)
        try:
            try:
                fd = os.open(b"stat", _FILE_FLAGS, dir_fd=dfd)
                try:
                    data = os.read(fd, 4096)
                finally:
                    os.close(fd)
                st, program = parse_stat_and_program(data)
            except ValueError:
                raise ProcessGone(pid) from None
            except OSError as e:
                raise _stat_error(pid, e) from None
            if st.flags & PF_KTHREAD:
                return Known(Process(pid=st.pid, ppid=st.ppid, starttime=st.starttime,
                                     comm=st.comm, uid=0, state=st.state, kthread=True),
                             program)
            if st.state == "Z":
                # the leader exited (pthread_exit) and took its cmdline and exe along, but
                # its threads may run on: read the process through one of them
                live = _live_task(pid, dfd)
                if live is not None:
                    os.close(dfd)
                    dfd, st = live[0], st._replace(state=live[1])
            # tuple.__new__: a NamedTuple's own __new__ is one Python call more per process
            return tuple.__new__(Known, (self._process(pid, dfd, st), program))
        finally:
            os.close(dfd)

    def _process(self, pid: int, dfd: int, st: Stat) -> Process:
        """The Process of a user-space process whose stat is `st`, the rest read from `dfd`.

        Inline and by bytes names (see read_known): a command line that fits the first read
        (nearly all) makes no RawCmdline; the cgroup and ns/net texts are looked up in
        their caches by their raw bytes before anything is decoded."""
        head, tail = self.cmdlines.allowance()
        raw = _WHOLE
        try:
            fd = os.open(b"cmdline", _FILE_FLAGS, dir_fd=dfd)
        except OSError as e:
            if e.errno in EXHAUSTED:
                raise FdExhausted(e.errno, e.strerror) from None
            argv = b""
        else:
            try:
                # most command lines fit the first read, which then needs no second one
                # returning 0 (see _read_fd); a longer one is read as its head and tail
                argv = os.pread(fd, head + tail + 1, 0)
                if len(argv) > head + tail:
                    raw = read_cmdline(fd, head, tail)
                    argv = raw.joined()
            except OSError:
                argv = b""
            finally:
                os.close(fd)
        exe, dev, ino = self._exe(pid, dfd)
        try:
            fd = os.open(b"cgroup", _FILE_FLAGS, dir_fd=dfd)
        except OSError as e:
            if e.errno in EXHAUSTED:
                raise FdExhausted(e.errno, e.strerror) from None
            cgroup = b""
        else:
            try:
                cgroup = os.read(fd, CGROUP_LIMIT)  # a seq_file: one read, never more
            except OSError:
                cgroup = b""
            finally:
                os.close(fd)
        cg = CGROUPS.get(cgroup) or CGROUPS.parse(cgroup)
        uid = os.fstat(dfd).st_uid  # the effective uid, unless root's (see _uid)
        try:
            net = os.readlink(b"ns/net", dir_fd=dfd)
        except OSError:
            net = b""
        netns = _NETNS.get(net)
        if netns is None:
            netns = _netns(net)
        # positional, in the order of Process's fields (a keyword call of its __init__
        # costs a third more; tests/unit/test_procfs.py holds the order to the model)
        args = parse_cmdline(argv)
        p = Process(st.pid, st.ppid, st.starttime, st.comm, exe, args,
                    raw.cut, uid if uid else self._status_uid(pid, dfd),  # (root's dir)
                    st.state, False, dev, ino, cg.container_id, netns, cg.pod_uid)
        self.cmdlines.hold_read(p, raw, argv)
        return p

    def environ_marker(self, pid: int, markers: Sequence[str]) -> tuple[str, str] | None:
        """The workspace marker in the process's environ, if any. Kernel threads (ESRCH)
        and pid 1 (EACCES even for root) simply have none; neither means "gone".

        Opened by path, one open instead of the directory's and the file's: this reads the
        pid's environ whichever process holds the pid now, as a fresh directory descriptor
        would (the caller compares what it read before with the start time it knows)."""
        try:
            fd = os.open(f"{self.root}/{pid}/environ", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in EXHAUSTED:
                raise FdExhausted(e.errno, e.strerror) from None
            data = b""  # gone (then so is its directory) or denied: as an empty one
        else:
            try:
                data = _read_fd(fd, ENVIRON_LIMIT)
            except OSError:
                data = b""
            finally:
                os.close(fd)
        if not data:
            # an exited thread-group leader (ESRCH): its environment is a live thread's
            data = self._thread_environ(pid)
            if not data:
                return None
        # find_marker answers only where some `NAME=` occurs: look for those in the raw
        # bytes first (most environs name none), nothing decoded or split
        for key in self._keys(markers):
            if key in data:
                return find_marker(data, markers)
        return None

    def _keys(self, markers: Sequence[str]) -> tuple[bytes, ...]:
        """The `NAME=` bytes of each marker, kept per (hashable) markers sequence."""
        try:
            keys = self._marker_keys.get(markers)
        except TypeError:  # a list: made anew
            return tuple(f"{m}=".encode() for m in markers)
        if keys is None:
            keys = self._marker_keys[markers] = tuple(f"{m}=".encode() for m in markers)
        return keys

    def _thread_environ(self, pid: int) -> bytes:
        try:
            dfd = self._open(pid)
        except (ProcessGone, AccessDenied):
            return b""
        try:
            live = _live_task(pid, dfd)
            if live is None:
                return b""
            os.close(dfd)
            dfd = live[0]
            return _read("environ", dfd, ENVIRON_LIMIT)
        except FdExhausted:
            raise
        except OSError:
            return b""
        finally:
            os.close(dfd)

    def read_exec(self, pid: int, cgroup: bool, cmdline: bool, ruid: int = -1) -> ExecRead:
        """A process just seen exec, whose argv and workspace marker the kernel took: its
        stat (parent, start time), executable (path, dev, inode), uid and network namespace,
        plus its cgroup and its command line (head and tail) only when asked. Raises
        ProcessGone or AccessDenied like `stat`; a leader that exited is read through a
        thread that runs on, as `read` does.

        `ruid`, the real uid the exec record carries: 0 with a /proc/PID owned by root means
        the effective uid is root too (status is not read), except for a root process that
        execs a program setuid to another user, or an unreadable one after seteuid (either
        non-dumpable): those report uid 0 where `read` says the other user."""
        dfd = self._open(pid)
        try:
            try:
                st = parse_stat(self._must(pid, dfd, "stat", 4096))
            except ValueError:
                raise ProcessGone(pid) from None
            if st.state == "Z":
                live = _live_task(pid, dfd)
                if live is None:
                    # exited (killed at its exec, or already done): only its stat is left
                    return ExecRead(st, "", 0, 0, -1, 0, None, None)
                os.close(dfd)
                dfd, st = live[0], st._replace(state=live[1])
            exe, dev, ino = self._exe(pid, dfd)
            cg = (CGROUPS.parse(self._may(pid, dfd, "cgroup", CGROUP_LIMIT))
                  if cgroup else None)
            raw = self._cmdline(dfd, *self.cmdlines.allowance()) if cmdline else None
            owner = os.fstat(dfd).st_uid
            uid = owner if owner != 0 or ruid == 0 else self._uid(pid, dfd)
            return ExecRead(st, exe, dev, ino, uid,
                            parse_netns(self._link(pid, dfd, "ns/net")), cg, raw)
        finally:
            os.close(dfd)

    def read_image(self, pid: int, cgroup: bool, cmdline: bool) -> ImageRead:
        """A process just seen exec whose record carries its stat facts, uid and network
        namespace (read from the task in the kernel): only its executable (path, dev,
        inode), plus its cgroup and its command line (head and tail) when asked. Without
        those, two calls by path: no directory descriptor, no stat. The executable is
        empty when the process is gone (or exiting); raises FdExhausted only."""
        if not (cgroup or cmdline):
            exe = f"{self.root}/{pid}/exe"
            try:
                path = os.readlink(exe)
            except OSError as e:
                if e.errno in EXHAUSTED:
                    raise FdExhausted(e.errno, e.strerror) from None
                return ImageRead("", 0, 0, None, None)
            try:
                st = os.stat(exe)
            except OSError:
                return ImageRead(path, 0, 0, None, None)
            return ImageRead(path, st.st_dev, st.st_ino, None, None)
        try:
            dfd = self._open(pid)
        except (ProcessGone, AccessDenied):
            return ImageRead("", 0, 0, None, None)
        try:
            exe, dev, ino = self._exe(pid, dfd)
            cg = (CGROUPS.parse(self._may(pid, dfd, "cgroup", CGROUP_LIMIT))
                  if cgroup else None)
            raw = self._cmdline(dfd, *self.cmdlines.allowance()) if cmdline else None
            return ImageRead(exe, dev, ino, cg, raw)
        finally:
            os.close(dfd)

    # -- helpers: `_must` turns a vanished process into ProcessGone, `_may` into b"" --

    def _must(self, pid: int, dfd: int, name: str, limit: int) -> bytes:
        try:
            return _read(name, dfd, limit)
        except PermissionError:
            raise AccessDenied(pid, name) from None
        except OSError as e:
            if e.errno in _GONE:
                raise ProcessGone(pid) from None
            raise

    def _may(self, pid: int, dfd: int, name: str, limit: int) -> bytes:
        try:
            return _read(name, dfd, limit)
        except FdExhausted:
            raise
        except OSError:
            return b""

    def _cmdline(self, dfd: int, head: int, tail: int) -> RawCmdline:
        """The head and tail of a command line; empty when it cannot be read (a kernel
        thread, a process mid-exit)."""
        try:
            fd = _open_file("cmdline", dfd)
        except FdExhausted:
            raise
        except OSError:
            return RawCmdline(b"")
        try:
            # most command lines fit the first read, which then needs no second one
            # returning 0 (see _read_fd); a longer one is read as its head and tail
            data = os.pread(fd, head + tail + 1, 0)
            if len(data) <= head + tail:
                return RawCmdline(data)
            return read_cmdline(fd, head, tail)
        except OSError:
            return RawCmdline(b"")
        finally:
            os.close(fd)

    def _link(self, pid: int, dfd: int, name: str) -> str:
        try:
            return os.readlink(name, dir_fd=dfd)
        except OSError:
            return ""

    def _exe(self, pid: int, dfd: int) -> tuple[str, int, int]:
        # by bytes names: the link's bytes decoded as os.readlink of a str would
        try:
            link = os.readlink(b"exe", dir_fd=dfd)
        except OSError:
            return "", 0, 0
        if not link:
            return "", 0, 0
        exe = link.decode("utf-8", "surrogateescape")
        try:
            st = os.stat(b"exe", dir_fd=dfd)
        except OSError:
            return exe, 0, 0
        return exe, st.st_dev, st.st_ino

    def _uid(self, pid: int, dfd: int) -> int:
        # The owner of /proc/PID is the effective uid, except for non-dumpable processes
        # (setuid programs), whose directory is root's; only then pay for `status`.
        owner = os.fstat(dfd).st_uid
        return owner if owner != 0 else self._status_uid(pid, dfd)

    def _status_uid(self, pid: int, dfd: int) -> int:
        """The uid `status` gives, for a process whose directory is root's (0 when it
        cannot be read)."""
        try:
            fd = os.open(b"status", _FILE_FLAGS, dir_fd=dfd)
        except OSError as e:
            if e.errno in EXHAUSTED:
                raise FdExhausted(e.errno, e.strerror) from None
            return 0
        try:
            return parse_status_uid(os.read(fd, 8192))
        except (OSError, ValueError):
            return 0
        finally:
            os.close(fd)
