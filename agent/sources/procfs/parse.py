"""Pure parsers over the bytes of /proc/PID files: stat, cmdline, ns links, status.

Values in, values out, no I/O (psutil's `_pslinux` keeps the same split): the reader
(reader.py) opens and reads, these only interpret, so each is table-tested on bytes.
"""

from __future__ import annotations

from operator import itemgetter
from typing import NamedTuple

from agent.text import decode

PF_KTHREAD = 0x00200000


class Stat(NamedTuple):
    """The fields of /proc/PID/stat a scan needs (a tuple: made for every process a scan
    reads, at a fraction of what a frozen dataclass costs)."""

    pid: int
    comm: str
    state: str
    ppid: int
    flags: int
    starttime: int


def _split_stat(data: bytes) -> tuple[bytes, list[bytes]]:
    """(comm, fields from field 3 on) of a stat line. The comm may hold spaces and
    parentheses (`a) (b`), so it is everything between the first `(` and the *last* `)`."""
    lpar = data.find(b"(")
    rpar = data.rfind(b")")
    if lpar < 0 or rpar < lpar:
        raise ValueError("no (comm) in stat")
    rest = data[rpar + 2 :].split()
    # rest[0] is field 3 (state); field N is rest[N - 3]
    if len(rest) < 20:
        raise ValueError("stat line too short")
    return data[lpar + 1 : rpar], rest


def _stat(data: bytes, comm: bytes, rest: list[bytes]) -> Stat:
    return Stat(int(data[: data.find(b"(")]), decode(comm), rest[0].decode("ascii", "replace"),
                int(rest[1]), int(rest[6]), int(rest[19]))


# ppid, starttime, start/end of code, start of stack (26-28), data, heap, argv and
# environment addresses (45-51): one C call picks them all
_PROGRAM_FIELDS = itemgetter(1, 19, 23, 24, 25, 42, 43, 44, 45, 46, 47, 48)

# The program key: (comm, the fields above), compared whole
Program = tuple[bytes, tuple[bytes, ...]]


def _program(comm: bytes, rest: list[bytes]) -> Program:
    if len(rest) > 48:
        return comm, _PROGRAM_FIELDS(rest)
    return comm, (rest[1], rest[19], *rest[23:26], *rest[42:49])  # a kernel before 3.5


def parse_stat(data: bytes) -> Stat:
    """Parse /proc/PID/stat. The comm may hold spaces and parentheses (`a) (b`), so it
    is everything between the first `(` and the *last* `)`; fields are split after it.

    Raises ValueError on text that is not a stat line.
    """
    comm, rest = _split_stat(data)
    return _stat(data, comm, rest)


def parse_stat_program(data: bytes) -> tuple[bytes, Program]:
    """The state of a process, and what /proc/PID/stat says about the program it runs as
    raw fields to compare (the program key): comm, ppid, starttime and the addresses an
    exec sets anew (start/end of code, start of stack, of data, of the heap, of argv and of
    the environment; fields 26-28 and 45-51). Counters and the state are left out of the
    key: they change while the program stays the same.

    With address-space randomisation every exec moves these; without it (setarch -R) an
    exec of another binary of the same layout could keep them, which is why a rescan also
    compares the executable's inode (reader.py `ProcFS.refresh`). Fields the kernel hides
    from a reader without ptrace rights read as 0 and compare equal. Raises ValueError on
    text that is not a stat line.
    """
    comm, rest = _split_stat(data)
    return rest[0], _program(comm, rest)


# the states a stat line shows, as text without a decode each
_STATES = {c.encode(): c for c in "RSDZTtXxKWIPw"}


def parse_stat_and_program(data: bytes) -> tuple[Stat, Program]:
    """`parse_stat` and the program key of `parse_stat_program`, from one split (a first
    scan parses thousands of these: the state needs no decode, the Stat no constructor).
    The split and its checks of hostile comms are `_split_stat`'s, kept in one place."""
    comm, rest = _split_stat(data)
    state = _STATES.get(rest[0]) or rest[0].decode("ascii", "replace")
    st = tuple.__new__(Stat, (int(data[: data.find(b"(")]), comm.decode("utf-8", "surrogateescape"),
                              state, int(rest[1]), int(rest[6]), int(rest[19])))
    if len(rest) > 48:
        return st, (comm, _PROGRAM_FIELDS(rest))
    return st, _program(comm, rest)


def parse_cmdline(data: bytes) -> tuple[str, ...]:
    """NUL-separated argv. A trailing NUL is the normal terminator; a process that rewrote
    its argv (setproctitle) may leave one space-joined string, which stays one argument.
    Bytes that are not UTF-8 decode reversibly (agent/text.py). Raises nothing: any bytes
    are some argv."""
    # Some programs pad a rewritten argv with NULs; trailing empties are padding, not args.
    data = data.rstrip(b"\0")
    if not data:
        return ()
    # decoded whole, then split: a NUL is never part of a UTF-8 sequence, so each argument
    # decodes (and escapes) exactly as it would alone
    return tuple(decode(data).split("\0"))


def parse_netns(link: str) -> int:
    """The inode of a namespace link like `net:[4026531840]`, 0 when unparseable."""
    lb = link.find("[")
    if lb < 0 or not link.endswith("]"):
        return 0
    try:
        return int(link[lb + 1 : -1])
    except ValueError:
        return 0


def parse_status_uid(data: bytes) -> int:
    """The effective uid from /proc/PID/status (`Uid: real effective saved fs`)."""
    at = data.find(b"\nUid:")
    if at < 0:
        raise ValueError("no Uid line")
    end = data.find(b"\n", at + 5)
    fields = data[at + 5 : end if end >= 0 else len(data)].split()
    if len(fields) < 2:
        raise ValueError("Uid line has no effective uid")
    return int(fields[1])
