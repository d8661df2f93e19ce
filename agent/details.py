"""What a non-process event is about: the file opened, the process traced, the filesystem
mounted, the name resolved. One small frozen dataclass per family, carried as `Event.detail`.

Each family says, in one place, what rules can test of it (`FIELDS`: the rule field
`FAMILY.SUFFIX` reads attribute `attr`), how it is written in findings and recordings
(`to_json`, under the family's name) and read back (`from_json`, strict about keys and
types as the rest of the event codec is). The schema, the codec and the findings take every
family from `FAMILIES`, so a new family is one class here and one line in that table.

Values are what the kernel saw at the syscall: paths as the caller passed them (relative
paths are made absolute against the caller's working directory by the sensor when it can),
numbers as the UAPI defines them. Text that was not UTF-8 holds surrogate escapes
(agent/text.py), as everywhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from agent.model import EventKind

# field types, the same names as agent.engine.schema's (kept here so this module imports
# nothing of the engine)
STR, INT, STRS, BOOL = "string", "integer", "list of strings", "boolean"

# (rule field suffix, attribute, type, help)
FieldSpec = tuple[str, str, str, str]


class DetailFormatError(ValueError):
    """A recorded detail is malformed; the message names the key at fault."""


class Detail(Protocol):
    """What every family provides (the dataclasses below)."""

    family: ClassVar[str]
    kinds: ClassVar[frozenset[EventKind]]
    FIELDS: ClassVar[tuple[FieldSpec, ...]]

    def to_json(self) -> dict[str, Any]:
        """Its recorded and finding form."""
        ...


class _Base:
    """to_json / from_json for the dataclasses below, from their fields' defaults: a
    default "" is text, 0 an integer, () a list of text, False a boolean."""

    __slots__ = ()
    family: ClassVar[str]
    kinds: ClassVar[frozenset[EventKind]]
    FIELDS: ClassVar[tuple[FieldSpec, ...]]

    def to_json(self) -> dict[str, Any]:
        """Its recorded and finding form: every field, tuples as lists."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Any:
        """The detail of its recorded form (missing keys take their defaults)."""
        if not isinstance(obj, Mapping):
            raise DetailFormatError(f"'{cls.family}' must be a mapping, not {obj!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(str(k) for k in obj if k not in fields)
        if unknown:
            raise DetailFormatError(
                f"unknown key '{unknown[0]}' in {cls.family} (expected one of: "
                f"{', '.join(sorted(fields))})")
        kw: dict[str, Any] = {}
        for name, v in obj.items():
            kw[name] = _checked(cls.family, name, fields[name].default, v)
        return cls(**kw)


def _checked(family: str, name: str, default: Any, v: Any) -> Any:
    where = f"'{family}.{name}'"
    if isinstance(default, bool):
        if not isinstance(v, bool):
            raise DetailFormatError(f"{where} must be true or false, not {v!r}")
        return v
    if isinstance(default, int):
        if isinstance(v, bool) or not isinstance(v, int):
            raise DetailFormatError(f"{where} must be an integer, not {v!r}")
        return v
    if isinstance(default, tuple):
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise DetailFormatError(f"{where} must be a list of strings, not {v!r}")
        return tuple(v)
    if not isinstance(v, str):
        raise DetailFormatError(f"{where} must be a string, not {v!r}")
    return v


# file.op values
FILE_OPS = ("read", "write", "create", "truncate", "unlink", "rename", "chmod")


@dataclass(frozen=True, slots=True)
class FileOp(_Base):
    """A file opened, created, truncated, removed, renamed or made executable under a
    prefix some loaded rule watches (bpf/file.bpf.c filters the rest in the kernel)."""

    family: ClassVar[str] = "file"
    kinds: ClassVar[frozenset[EventKind]] = frozenset({EventKind.FILE})
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        ("path", "path", STR, "the file's path (rename: the old path)"),
        ("name", "name", STR, "the path's last component"),
        ("op", "op", STR, "read, write, create, truncate, unlink, rename or chmod"),
        ("flags", "flags", INT, "open(2) flags (O_WRONLY 1, O_RDWR 2, O_CREAT 64, ...)"),
        ("dest", "dest", STR, "rename: the new path"),
        ("mode", "mode", INT, "chmod: the mode asked for; create: the mode given"),
        ("made_executable", "made_executable", BOOL,
         "chmod: the mode sets an execute bit"),
    )

    path: str = ""
    op: str = ""
    flags: int = 0
    dest: str = ""
    mode: int = 0

    @property
    def name(self) -> str:
        """The last component of the path."""
        return self.path.rpartition("/")[2]

    @property
    def made_executable(self) -> bool:
        """Whether a chmod gives any execute bit."""
        return self.op == "chmod" and bool(self.mode & 0o111)


@dataclass(frozen=True, slots=True)
class Ptrace(_Base):
    """A ptrace(2) request that reads or changes another process: attach, seize, pokes,
    register writes. The target is read from procfs while it lives."""

    family: ClassVar[str] = "ptrace"
    kinds: ClassVar[frozenset[EventKind]] = frozenset({EventKind.PTRACE})
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        ("request", "request", STR,
         "attach, seize, traceme, poketext, pokedata, pokeuser, setregs, ..."),
        ("target_pid", "target_pid", INT, "the traced process"),
        ("target_exe", "target_exe", STR, "the traced process's executable"),
        ("target_uid", "target_uid", INT, "the traced process's uid (-1: unknown)"),
    )

    request: str = ""
    target_pid: int = 0
    target_exe: str = ""
    target_uid: int = -1


@dataclass(frozen=True, slots=True)
class PrivChange(_Base):
    """A non-root process asking for root: setuid/setreuid/setresuid/setfsuid (or the gid
    calls) with an id of 0. The kernel sends only those."""

    family: ClassVar[str] = "priv"
    kinds: ClassVar[frozenset[EventKind]] = frozenset({EventKind.SETUID})
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        ("call", "call", STR, "setuid, setreuid, setresuid, setfsuid, setgid, ..."),
        ("id", "id", INT, "the uid or gid asked for (0: root)"),
    )

    call: str = ""
    id: int = 0


@dataclass(frozen=True, slots=True)
class Memfd(_Base):
    """memfd_create(2): an anonymous file, the usual first step of a fileless execution."""

    family: ClassVar[str] = "memfd"
    kinds: ClassVar[frozenset[EventKind]] = frozenset({EventKind.MEMFD})
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        ("name", "name", STR, "the name given (shown as /memfd:NAME)"),
        ("flags", "flags", INT, "MFD_* flags (MFD_CLOEXEC 1, MFD_ALLOW_SEALING 2, ...)"),
    )

    name: str = ""
    flags: int = 0


@dataclass(frozen=True, slots=True)
class Mount(_Base):
    """mount(2): what was mounted where."""

    family: ClassVar[str] = "mount"
    kinds: ClassVar[frozenset[EventKind]] = frozenset({EventKind.MOUNT})
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        ("source", "source", STR, "the device, directory or name mounted"),
        ("target", "target", STR, "where"),
        ("fstype", "fstype", STR, "the filesystem type (empty for a bind or remount)"),
        ("flags", "flags", INT, "MS_* flags"),
        ("options", "options", STRS,
         "the MS_* flags by name, lower case: bind, rdonly, remount, move, ..."),
    )

    source: str = ""
    target: str = ""
    fstype: str = ""
    flags: int = 0
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Namespaces(_Base):
    """setns(2) or unshare(2): a process entering other namespaces or making new ones."""

    family: ClassVar[str] = "ns"
    kinds: ClassVar[frozenset[EventKind]] = frozenset({EventKind.SETNS, EventKind.UNSHARE})
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        ("call", "call", STR, "setns or unshare"),
        ("types", "types", STRS, "the namespace types: mnt, pid, net, uts, ipc, user, cgroup, "
                                 "time"),
        ("host", "host", BOOL, "setns: a namespace entered is one of pid 1's"),
        ("target_pid", "target_pid", INT, "setns through a pidfd: the process whose "
                                          "namespaces were entered (0: unknown)"),
    )

    call: str = ""
    types: tuple[str, ...] = ()
    host: bool = False
    target_pid: int = 0


@dataclass(frozen=True, slots=True)
class ModuleLoad(_Base):
    """init_module(2) or finit_module(2): code loaded into the kernel."""

    family: ClassVar[str] = "module"
    kinds: ClassVar[frozenset[EventKind]] = frozenset({EventKind.MODULE})
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        ("call", "call", STR, "init_module or finit_module"),
        ("path", "path", STR, "finit_module: the module file"),
        ("name", "name", STR, "the module's name when known"),
    )

    call: str = ""
    path: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class BpfLoad(_Base):
    """bpf(BPF_PROG_LOAD) by any process but the agent."""

    family: ClassVar[str] = "bpf"
    kinds: ClassVar[frozenset[EventKind]] = frozenset({EventKind.BPF})
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        ("cmd", "cmd", STR, "the bpf(2) command: prog_load"),
        ("prog_type", "prog_type", STR,
         "the program type, lower case without BPF_PROG_TYPE_: kprobe, tracepoint, ..."),
        ("prog_name", "prog_name", STR, "the program's name (up to 15 bytes)"),
    )

    cmd: str = ""
    prog_type: str = ""
    prog_name: str = ""


@dataclass(frozen=True, slots=True)
class Dns(_Base):
    """A DNS query as sent to a resolver (UDP port 53): the name asked for. The event's
    connection is the resolver."""

    family: ClassVar[str] = "dns"
    kinds: ClassVar[frozenset[EventKind]] = frozenset({EventKind.DNS})
    FIELDS: ClassVar[tuple[FieldSpec, ...]] = (
        ("name", "name", STR, "the name queried, lower case, without the final dot"),
        ("qtype", "qtype", STR, "the query type: A, AAAA, TXT, ..."),
    )

    name: str = ""
    qtype: str = ""


FAMILIES: tuple[type[_Base], ...] = (
    FileOp, Ptrace, PrivChange, Memfd, Mount, Namespaces, ModuleLoad, BpfLoad, Dns)
BY_FAMILY: dict[str, type[_Base]] = {cls.family: cls for cls in FAMILIES}


def to_json(detail: Any) -> tuple[str, dict[str, Any]]:
    """(family name, its JSON form): the key and value an event or finding carries."""
    return detail.family, detail.to_json()


def from_json(family: str, obj: Any) -> Any:
    """The detail of family `family` read from its JSON form. Raises DetailFormatError."""
    return BY_FAMILY[family].from_json(obj)
