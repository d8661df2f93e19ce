"""The vocabulary of the rule language: fields, their types, and operators.

Each field compiles to a getter `Event -> value` once, at load time. A field's type says
which operators make sense on it; list fields (`proc.args`, `ancestor.*`) match when any
element does. `None` means "no value" (no parent, no connection) and matches nothing but
`exists: false`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from agent import details
from agent.engine.indexkeys import EXE_PREFIX_INDEX as EXE_PREFIX_INDEX
from agent.engine.indexkeys import NORM_NEEDLE_INDEX as NORM_NEEDLE_INDEX
from agent.engine.indexkeys import TRUNCATED as TRUNCATED
from agent.engine.indexkeys import TRUNCATED_INDEX as TRUNCATED_INDEX
from agent.engine.indexkeys import args_norm as args_norm
from agent.engine.indexkeys import cmdline_norm as cmdline_norm
from agent.engine.indexkeys import normalise as normalise
from agent.model import COMM_LEN, RULE_KINDS, Event, EventKind, Process

STR, INT, PORT, IP, STRS, BOOL = "string", "integer", "port", "ip", "list of strings", "boolean"

Getter = Callable[[Event], Any]

ACTIONS = ("report", "kill", "kill-workspace", "kill-container", "delete-pod")
MODES = ("audit", "enforce")
KINDS = RULE_KINDS


@dataclass(frozen=True)
class Field:
    """A field a rule can test: its name, type, getter, and whether it is a list that
    matches when any element matches.

    `comm`: its value is a kernel comm, which the kernel cuts at COMM_LEN bytes, so names
    compare on their first COMM_LEN bytes too. `index`: the Process attribute under which
    the rule index (ruleset.py) looks up rules that test this field for equality, if any.
    `expr`: the same value as `get` gives, as an expression (codegen.py)."""

    name: str
    type: str
    get: Getter
    many: bool = False
    help: str = ""
    comm: bool = False
    index: str | None = None
    # the value as Python expression text over `ev`, for rules compiled into one function
    # (codegen.py); fixed text of this module, never a rule's. None: the getter serves.
    expr: str | None = None
    # the event kinds on which it has a value (None: any kind); a rule on other kinds that
    # tests it is an error at load time
    kinds: frozenset[EventKind] | None = None


# Process attributes exposed as proc.X, parent.X and ancestor.X: (field suffix, attribute, type)
_PROC_ATTRS: tuple[tuple[str, str, str, str], ...] = (
    ("name", "comm", STR, ("comm (what ps shows); a 15-byte comm continued by the executable's "
                           "or script's name is that whole name")),
    ("exe", "exe", STR, "full path of the executable"),
    ("exe_name", "exe_name", STR, "basename of the executable (comm if unknown)"),
    ("argv0", "argv0", STR, "basename of argv[0]"),
    ("cmdline", "cmdline_str", STR, "argv joined with spaces"),
    ("args", "args", STRS, "argv[1:], each argument a token"),
    ("argv", "cmdline", STRS, "argv including argv[0]"),
    ("cmdline_truncated", "cmdline_truncated", BOOL,
     "the command line was too long: only its head and tail are kept (and tested)"),
    ("uid", "uid", INT, "effective uid"),
    ("pid", "pid", INT, "process id"),
    ("ppid", "ppid", INT, "parent process id"),
)

# proc.X and parent.X the rule index can look up by value (the attribute is the index key)
_INDEXED = frozenset({"name", "exe_name", "argv0"})
# fields whose value is the kernel's comm (cut at COMM_LEN bytes)
_COMM = "name"


def whole_name(p: Process) -> str:
    """The program's name: comm, unless comm is 15 bytes long (the kernel keeps no more, so
    it may be cut) and the executable's name or a script path among the first arguments
    continues it; then that whole name, so `cpuminer` is not `cpuminer-avx512-benchmark`."""
    comm = p.comm
    if len(comm) < COMM_LEN and comm.isascii():
        return comm
    raw = comm.encode("utf-8", "surrogateescape")
    if len(raw) < COMM_LEN:
        return comm
    # a binary: its exe; a `#!` script: comm is the script's name, a path among the first
    # argv entries (interpreter, optional interpreter argument, script)
    for cand in (p.exe_name, *(os.path.basename(a) for a in p.cmdline[:3])):
        if len(cand) > len(comm) and cand.encode("utf-8", "surrogateescape").startswith(raw):
            return cand
    return comm


# Process fields computed when a rule asks, not stored per process: field suffix -> function
_PROC_DERIVED: dict[str, Callable[[Process], Any]] = {
    "name": whole_name, "cmdline_norm": cmdline_norm, "args_norm": args_norm}
# derived fields that are not also in _PROC_ATTRS: (suffix, type, help)
_PROC_EXTRA: tuple[tuple[str, str, str], ...] = (
    ("cmdline_norm", STR, "argv joined, quotes and backslashes removed, lower case"),
    ("args_norm", STRS, "argv[1:], each with quotes and backslashes removed, lower case"),
)


def _proc_getter(attr: Callable[[Process], Any]) -> Getter:
    def get(ev: Event) -> Any:
        return attr(ev.process)

    return get


def _proc_expr(suffix: str, attr: str, obj: str) -> str:
    """The expression of process field `suffix` of the process `obj` (text)."""
    return f"_d_{suffix}({obj})" if suffix in _PROC_DERIVED else f"{obj}.{attr}"


# what the expressions of Field.expr call, by the names they use
EXPR_GLOBALS: dict[str, Any] = {f"_d_{k}": fn for k, fn in _PROC_DERIVED.items()}


def _parent_getter(attr: Callable[[Process], Any]) -> Getter:
    def get(ev: Event) -> Any:
        anc = ev.ancestors
        return attr(anc[0]) if anc else None

    return get


def _ancestor_getter(attr: Callable[[Process], Any], many: bool) -> Getter:
    # "any ancestor": for a list attribute (args), the elements of every ancestor
    if many:
        def get_many(ev: Event) -> Any:
            out: list[Any] = []
            for a in ev.ancestors:
                out.extend(attr(a))
            return out

        return get_many

    def get(ev: Event) -> Any:
        return [attr(a) for a in ev.ancestors]

    return get


def _conn_getter(attr: str) -> Getter:
    def get(ev: Event) -> Any:
        c = ev.connection
        return getattr(c, attr) if c is not None else None

    return get


def _pod_getter(attr: str) -> Getter:
    def get(ev: Event) -> Any:
        p = ev.pod
        return getattr(p, attr) if p is not None else None

    return get


def _build_fields() -> dict[str, Field]:
    f: dict[str, Field] = {}
    procs = [(suffix, _PROC_DERIVED.get(suffix) or attrgetter(attr), typ, help_)
             for suffix, attr, typ, help_ in _PROC_ATTRS]
    procs += [(suffix, _PROC_DERIVED[suffix], typ, help_) for suffix, typ, help_ in _PROC_EXTRA]
    attrs = {suffix: attr for suffix, attr, _, _ in _PROC_ATTRS}
    for suffix, get, typ, help_ in procs:
        many = typ == STRS
        comm = suffix == _COMM
        index = attrs[suffix] if suffix in _INDEXED else None
        attr = attrs.get(suffix, suffix)
        plain = suffix not in _PROC_DERIVED
        f[f"proc.{suffix}"] = Field(
            f"proc.{suffix}", typ, attrgetter(f"process.{attr}") if plain else _proc_getter(get),
            many, help_, comm, index, _proc_expr(suffix, attr, "ev.process"))
        f[f"parent.{suffix}"] = Field(
            f"parent.{suffix}", typ, _parent_getter(get), many, f"the parent's {suffix}", comm,
            f"parent.{index}" if index else None,
            f"({_proc_expr(suffix, attr, '_a[0]')} if (_a := ev.ancestors) else None)")
        f[f"ancestor.{suffix}"] = Field(f"ancestor.{suffix}", STR if many else typ,
                                        _ancestor_getter(get, many), True,
                                        f"any ancestor's {suffix}", comm)
    f["kind"] = Field("kind", STR, attrgetter("kind"), help="event kind: " + ", ".join(KINDS),
                      expr="ev.kind")
    f["workspace.id"] = Field("workspace.id", STR, lambda ev: ev.workspace or None,
                              help="workspace id from the environ marker",
                              expr="(ev.workspace or None)")
    f["container.id"] = Field("container.id", STR, lambda ev: ev.process.container_id or None,
                              help="container id from the cgroup",
                              expr="(ev.process.container_id or None)")
    for name in ("namespace", "name"):
        f[f"pod.{name}"] = Field(f"pod.{name}", STR, _pod_getter(name),
                                 expr=_optional("ev.pod", name))
    conn: list[tuple[str, str, str, str]] = [
        ("src", "src_ip", IP, "src address"), ("dst", "dst_ip", IP, "dst address"),
        ("sport", "sport", PORT, ""), ("dport", "dport", PORT, ""),
        ("family", "family", STR, "ipv4 or ipv6"),
        ("direction", "direction", STR, "outbound or inbound"), ("netns", "netns", INT, "")]
    for name, attr, typ, help_ in conn:
        f[f"conn.{name}"] = Field(f"conn.{name}", typ, _conn_getter(attr), help=help_,
                                  expr=_optional("ev.connection", attr))
    for fam in details.FAMILIES:
        f.update(_detail_fields(fam))
    # a field of two values: the language compares a field with literals only
    f["ptrace.same_uid"] = Field(
        "ptrace.same_uid", BOOL, _ptrace_same_uid, kinds=details.Ptrace.kinds,
        help="the traced process runs as the tracer's uid (proc.uid); no value if unknown")
    return f


def _ptrace_same_uid(ev: Event) -> bool | None:
    """A debugger on the user's own process (true) or on another user's (false)."""
    d = ev.detail
    if type(d) is not details.Ptrace or d.target_uid < 0:
        return None
    return d.target_uid == ev.process.uid


def _detail_fields(cls: type[Any]) -> dict[str, Field]:
    """The rule fields of one agent.details family: `FAMILY.SUFFIX`, a value only on events
    that carry a detail of that class."""
    out: dict[str, Field] = {}
    glob = f"_dt_{cls.__name__}"
    EXPR_GLOBALS[glob] = cls
    for suffix, attr, typ, help_ in cls.FIELDS:
        def get(ev: Event, _attr: str = attr) -> Any:
            d = ev.detail
            return getattr(d, _attr) if type(d) is cls else None

        name = f"{cls.family}.{suffix}"
        out[name] = Field(name, typ, get, typ == STRS, help_,
                          expr=f"(_o.{attr} if type(_o := ev.detail) is {glob} else None)",
                          kinds=cls.kinds)
    return out


def _optional(obj: str, attr: str) -> str:
    """The expression of `obj.attr`, None when `obj` is None (text)."""
    return f"(_o.{attr} if (_o := {obj}) is not None else None)"


FIELDS: dict[str, Field] = _build_fields()
LABEL_PREFIX = "pod.labels."


def field(name: str) -> Field | None:
    """The Field for `name`, including the open family `pod.labels.<key>`."""
    found = FIELDS.get(name)
    if found is not None:
        return found
    if name.startswith(LABEL_PREFIX) and len(name) > len(LABEL_PREFIX):
        key = name[len(LABEL_PREFIX):]

        def get(ev: Event) -> Any:
            return ev.pod.labels.get(key) if ev.pod is not None else None

        return Field(name, STR, get)
    return None


def field_names() -> list[str]:
    """Every field name a rule may use (for "did you mean" suggestions)."""
    return sorted(FIELDS) + [LABEL_PREFIX + "<key>"]


# Operators valid for each field type (list fields use their element type).
OPERATORS: dict[str, tuple[str, ...]] = {
    STR: ("equals", "in", "prefix", "suffix", "contains", "glob", "regex", "exists"),
    STRS: ("equals", "in", "prefix", "suffix", "contains", "glob", "regex", "exists"),
    INT: ("equals", "in", "exists"),
    PORT: ("equals", "in", "ports", "exists"),
    IP: ("equals", "in", "cidr", "exists"),
    BOOL: ("equals", "exists"),
}
ALL_OPERATORS = sorted({op for ops in OPERATORS.values() for op in ops})

# The rule index (Field.index) also keys `proc.exe` prefixes, the needles of the normalised
# command line and a cut command line under names of its own: indexkeys.py (EXE_PREFIX_INDEX,
# NORM_NEEDLE_INDEX, TRUNCATED_INDEX, TRUNCATED), re-exported above.
