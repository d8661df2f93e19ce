"""The privilege sensor's record (bpf/events.h `struct nw_priv_event`) in Python: its
layout, its decoder, and the ptrace target read from /proc while it lives (pure but for
that read, whose procfs root is the observer's).

One record layout serves ptrace (and process_vm_writev), setuid-to-root and memfd_create;
`call` says which syscall of a family it was (`enum nw_call`). A ptrace record's detail
is a `PtraceTarget`: the observer calls its `resolve(pid, procfs)` and gets the
`agent.details.Ptrace` with the target's executable and uid filled in.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from agent.details import Memfd, PrivChange, Ptrace
from agent.sources.procfs.parse import parse_status_uid
from agent.sources.recordkind import RecordKind
from agent.text import decode

COMM_LEN = 16
MEMFD_NAME_LEN = 256   # NW_MEMFD_NAME_LEN


class Call(IntEnum):
    """`enum nw_call`: which syscall of a family a record is about."""

    SETUID = 1
    SETREUID = 2
    SETRESUID = 3
    SETFSUID = 4
    SETGID = 5
    SETREGID = 6
    SETRESGID = 7
    SETFSGID = 8
    PTRACE = 9
    PROCESS_VM_WRITEV = 10
    INIT_MODULE = 11
    FINIT_MODULE = 12
    MOVE_MOUNT = 13


# ptrace requests the kernel sends (bpf/privilege.bpf.c `injects`), by the name rules test
PTRACE_REQUESTS: dict[int, str] = {
    4: "poketext", 5: "pokedata", 6: "pokeuser", 13: "setregs", 15: "setfpregs",
    16: "attach", 19: "setfpxregs", 0x4205: "setregset", 0x4206: "seize",
}
# process_vm_writev(2) writes another process's memory without ptrace: reported as a
# ptrace event with this request
VM_WRITEV = "process_vm_writev"

# struct nw_priv_event
PRIV_FIELDS: tuple[tuple[str, str], ...] = (
    ("ts_ns", "Q"), ("kind", "I"), ("pid", "I"), ("uid", "I"), ("call", "I"),
    ("arg", "Q"), ("target", "I"), ("pad", "I"), ("comm", f"{COMM_LEN}s"),
    ("name", f"{MEMFD_NAME_LEN}s"),
)
PRIV_FORMAT = struct.Struct("<" + "".join(code for _, code in PRIV_FIELDS))


class ProcRoot(Protocol):
    """What a resolver needs of the observer's procfs: where it is mounted."""

    root: str


def cstr(raw: bytes) -> str:
    """A NUL-terminated field as text (surrogate escapes for bytes that are not UTF-8)."""
    end = raw.find(b"\0")
    return decode(raw if end < 0 else raw[:end])


@dataclass(frozen=True, slots=True)
class PtraceTarget:
    """A ptrace record before its target is read: `resolve` gives the Ptrace detail."""

    request: str
    target_pid: int

    def resolve(self, pid: int, procfs: ProcRoot) -> Ptrace:
        """The Ptrace detail with the target's executable and effective uid read from
        `procfs` (empty and -1 once the target is gone, or unreadable)."""
        base = f"{procfs.root}/{self.target_pid}"
        try:
            exe = decode(os.fsencode(os.readlink(f"{base}/exe")))
        except OSError:
            exe = ""
        try:
            with open(f"{base}/status", "rb") as f:
                uid = parse_status_uid(f.read())
        except (OSError, ValueError):
            uid = -1
        return Ptrace(request=self.request, target_pid=self.target_pid, target_exe=exe,
                      target_uid=uid)


Decoded = tuple[int, int, int, int, str, object]


def decode_priv(data: bytes | memoryview) -> Decoded:
    """(ts_ns, kind, pid, uid, comm, detail) of a privilege record. Raises ValueError for
    a kind or call this layout does not carry."""
    ts, kind, pid, uid, call, arg, target, _, comm, name = PRIV_FORMAT.unpack_from(data)
    detail: object
    if kind == RecordKind.PTRACE:
        request = VM_WRITEV if call == Call.PROCESS_VM_WRITEV else PTRACE_REQUESTS.get(
            arg, str(arg))
        detail = PtraceTarget(request, target)
    elif kind == RecordKind.SETUID:
        detail = PrivChange(call=Call(call).name.lower(), id=target)
    elif kind == RecordKind.MEMFD:
        detail = Memfd(name=cstr(name), flags=arg)
    else:
        raise ValueError(f"not a privilege record kind: {kind}")
    return ts, kind, pid, uid, cstr(comm), detail
