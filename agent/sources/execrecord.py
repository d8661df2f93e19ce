"""The exec record (bpf/events.h `struct nw_exec_event`) in Python: its layout, its decoder,
and the workspace marker table the kernel scans an exec's environment with (pure).

At `sys_enter_execve(at)` the kernel reads the caller's argv (up to NW_ARGS_LEN bytes and
NW_ARGV_MAX arguments, the rest counted as cut) and compares the name of each environment
entry with the configured marker names, copying only the value of the first one set; at
`sched_process_exec` it sends both with the exec. So a process that is gone before
userspace looks still has its command line and its workspace, and a live one needs no
read of /proc/PID/cmdline or /proc/PID/environ.

What the kernel could not take whole is said so, and the observer reads /proc as before:
argv unreadable (a page not resident) or cut (the tail of a padded command line is what
procfs's head + tail keeps), an environment longer than NW_ENV_MAX entries, marker names
the kernel cannot compare (more than NW_MARKERS_MAX, longer than NW_MARKER_NAME_MAX).
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import TypeVar

from agent.enrich.workspace import MAX_WORKSPACE_ID
from agent.sources.procfs.parse import parse_cmdline
from agent.text import decode

COMM_LEN = 16
FILENAME_LEN = 256
ARGS_LEN = 4096          # NW_ARGS_LEN
ARGV_MAX = 128           # NW_ARGV_MAX
ENV_MAX = 256            # NW_ENV_MAX
MARKERS_MAX = 4          # NW_MARKERS_MAX
MARKER_NAME_MAX = 56     # NW_MARKER_NAME_MAX
MARKER_VALUE_LEN = 256   # NW_MARKER_VALUE_LEN


class ExecFlag(IntEnum):
    """`enum nw_exec_flag`: what the record's argv and marker fields hold."""

    ARGS = 1
    ARGS_CUT = 2
    ARGS_FAULT = 4
    ENV = 8
    MARKER_MORE = 16
    TASK = 32


# struct nw_exec_event up to args (NW_EXEC_FIXED bytes), field by field
EXEC_FIELDS: tuple[tuple[str, str], ...] = (
    ("ts_ns", "Q"), ("kind", "I"), ("pid", "I"), ("uid", "I"), ("slot", "I"),
    ("verdict", "H"), ("flags", "H"), ("marker_set", "I"), ("cgroup_id", "Q"),
    ("start_ns", "Q"), ("ppid", "I"), ("euid", "I"), ("netns", "Q"),
    ("argc", "I"), ("args_len", "I"), ("args_cut", "I"), ("marker_idx", "H"),
    ("marker_len", "H"), ("comm", f"{COMM_LEN}s"), ("filename", f"{FILENAME_LEN}s"),
    ("marker", f"{MARKER_VALUE_LEN}s"),
)
EXEC_FORMAT = struct.Struct("<" + "".join(code for _, code in EXEC_FIELDS))
EXEC_FIXED = EXEC_FORMAT.size   # NW_EXEC_FIXED: where args starts

_ARGS, _CUT, _FAULT, _ENV, _MORE, _TASK = (int(f) for f in ExecFlag)
# clock ticks of /proc/PID/stat's start time (USER_HZ), in ns
_NS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
_T = TypeVar("_T")

# marker set id -> the names the kernel scanned for under it (set by `marker_table`)
_SETS: dict[int, tuple[str, ...]] = {}
_SETS_LOCK = threading.Lock()


def _cstr(b: bytes) -> str:
    end = b.find(b"\0")
    return decode(b if end < 0 else b[:end])


def _marker(flags: int, names: tuple[str, ...], idx: int,
            raw: bytes) -> tuple[tuple[str, str] | None, tuple[str, ...]]:
    """(marker found, names scanned) as find_marker would answer on the whole environ; names
    () when the kernel's answer cannot stand for it (the observer then reads environ)."""
    if not raw:
        return None, names
    if idx >= len(names):
        return None, ()
    value = raw[:MAX_WORKSPACE_ID].decode("utf-8", "replace")
    if value.isprintable():
        return (names[idx], value), names
    # find_marker would go on to the next marker: only procfs can say whether one is set
    return None, (() if flags & _MORE else names)


# the fixed part without the marker value (sliced from the record only when one was found)
_HEAD = struct.Struct("<" + "".join(c for n, c in EXEC_FIELDS if n != "marker"))
_MARKER_AT = _HEAD.size


def exec_decoder(make: Callable[..., _T]) -> Callable[[bytes | memoryview], _T]:
    """The decoder of exec records into `make` (agent.sources.kevents.RawEvent: its fields
    in its order), which this module cannot import (kevents imports it). The decoder raises
    struct.error on a record shorter than its fixed part."""
    unpack = _HEAD.unpack_from

    def decode_exec(data: bytes | memoryview) -> _T:
        (ts, kind, pid, uid, slot, verdict, flags, mset, cgroup_id, start_ns, ppid, euid,
         netns, _argc, alen, acut, midx, mlen, comm, filename) = unpack(data)
        argv: tuple[str, ...] = ()
        cut = -1   # argv not taken in the kernel
        if flags & _ARGS and not flags & _FAULT:
            argv = parse_cmdline(bytes(data[EXEC_FIXED:EXEC_FIXED + min(alen, ARGS_LEN)]))
            cut = max(acut, 1) if flags & _CUT else 0
        found: tuple[str, str] | None = None
        scanned: tuple[str, ...] = ()
        if flags & _ENV:
            names = _SETS.get(mset, ())
            if names:
                value = bytes(data[_MARKER_AT:_MARKER_AT + min(mlen, MARKER_VALUE_LEN)])
                found, scanned = _marker(flags, names, midx, value)
        task = (start_ns // _NS_PER_TICK, euid, netns) if flags & _TASK else None
        return make(ts, kind, pid, ppid if task else 0, uid, slot, 0, 0, 0, verdict, "", "",
                    _cstr(comm), _cstr(filename), argv, found, cut, scanned, cgroup_id, None,
                    task, 1)   # detail, task, calls: every field, as `make` may be tuple.__new__

    return decode_exec


def marker_set_id(names: Sequence[str]) -> int:
    """The id the kernel copies into a record scanned for these names (never 0)."""
    return zlib.crc32("\0".join(names).encode("utf-8", "surrogateescape")) | 1


def marker_table(names: Sequence[str]) -> bytes:
    """struct nw_markers for these names, in order: count, set id, then per name eight
    words and eight masks of its bytes and its length. Count 0 (the kernel scans nothing
    and userspace reads environ) when the kernel cannot compare them all."""
    raw = [n.encode("utf-8", "surrogateescape") for n in names]
    ok = (0 < len(raw) <= MARKERS_MAX
          and all(0 < len(r) <= MARKER_NAME_MAX and b"\0" not in r for r in raw))
    set_id = marker_set_id(names) if ok else 0
    out = [struct.pack("<II", len(raw) if ok else 0, set_id)]
    for i in range(MARKERS_MAX):
        r = raw[i] if ok and i < len(raw) else b""
        word = r.ljust(64, b"\0")
        mask = (b"\xff" * len(r)).ljust(64, b"\0")
        out.append(word + mask + struct.pack("<II", len(r), 0))
    if ok:
        with _SETS_LOCK:
            _SETS[set_id] = tuple(names)
    return b"".join(out)


def exec_record(pid: int, *, comm: bytes = b"", filename: bytes = b"", ts: int = 0,
                uid: int = 0, argv: Sequence[bytes] | None = None, cut: int = 0,
                slot: int = 0, verdict: int = 0, markers: Sequence[str] = (),
                marker: tuple[int, bytes] | None = None, more: bool = False,
                cgroup_id: int = 0, fault: bool = False,
                task: tuple[int, int, int, int] | None = None) -> bytes:
    """An exec record as the kernel writes it (for tests and benchmarks): `argv` None as
    when the kernel did not take it; `markers` the names the environment was scanned for
    (none: not scanned), `marker` (index, value) the one it found; `cut` argv bytes left
    out; `task` (start ns since boot, ppid, euid, netns) as read from the task in the
    kernel (None: not read)."""
    flags = _TASK if task is not None else 0
    args = b""
    if argv is not None:
        flags |= _ARGS | (_CUT if cut else 0) | (_FAULT if fault else 0)
        args = b"".join(a + b"\0" for a in argv)[:ARGS_LEN]
    mset = 0
    if markers:
        marker_table(markers)
        flags |= _ENV | (_MORE if more else 0)
        mset = marker_set_id(markers)
    idx, value = marker or (0, b"")
    return EXEC_FORMAT.pack(ts, 1, pid, uid, slot, verdict, flags, mset, cgroup_id,
                            *(task or (0, 0, 0, 0)), len(argv or ()), len(args), cut, idx,
                            len(value), comm, filename, value) + args
