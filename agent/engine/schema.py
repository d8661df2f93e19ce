"""The vocabulary of the rule language: fields, their types, and operators.

Each field compiles to a getter `Event -> value` once, at load time. A field's type says
which operators make sense on it; list fields (`proc.args`, `ancestor.*`) match when any
element does. `None` means "no value" (no parent, no connection) and matches nothing but
`exists: false`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.model import Event

STR, INT, PORT, IP, STRS, BOOL = "string", "integer", "port", "ip", "list of strings", "boolean"

Getter = Callable[[Event], Any]

SEVERITIES = ("info", "low", "medium", "high", "critical")
ACTIONS = ("report", "kill", "kill-workspace", "kill-container", "delete-pod")
MODES = ("audit", "enforce")
KINDS = ("exec", "scan", "connect", "accept", "close", "exit")
PROCESS_KINDS = ("exec", "scan")
CONNECTION_KINDS = ("connect", "accept")


@dataclass(frozen=True)
class Field:
    """A field a rule can test: its name, type, getter, and whether it is a list that
    matches when any element matches."""

    name: str
    type: str
    get: Getter
    many: bool = False
    help: str = ""


# Process attributes exposed as proc.X, parent.X and ancestor.X: (field suffix, attribute, type)
_PROC_ATTRS: tuple[tuple[str, str, str, str], ...] = (
    ("name", "comm", STR, "the kernel's comm (15 chars, what ps shows)"),
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


def _proc_getter(attr: str) -> Getter:
    def get(ev: Event) -> Any:
        return getattr(ev.process, attr)

    return get


def _parent_getter(attr: str) -> Getter:
    def get(ev: Event) -> Any:
        anc = ev.ancestors
        return getattr(anc[0], attr) if anc else None

    return get


def _ancestor_getter(attr: str, many: bool) -> Getter:
    # "any ancestor": for a list attribute (args), the elements of every ancestor
    if many:
        def get_many(ev: Event) -> Any:
            out: list[Any] = []
            for a in ev.ancestors:
                out.extend(getattr(a, attr))
            return out

        return get_many

    def get(ev: Event) -> Any:
        return [getattr(a, attr) for a in ev.ancestors]

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
    for suffix, attr, typ, help_ in _PROC_ATTRS:
        many = typ == STRS
        f[f"proc.{suffix}"] = Field(f"proc.{suffix}", typ, _proc_getter(attr), many, help_)
        f[f"parent.{suffix}"] = Field(f"parent.{suffix}", typ, _parent_getter(attr), many,
                                      f"the parent's {suffix}")
        f[f"ancestor.{suffix}"] = Field(f"ancestor.{suffix}", STR if many else typ,
                                        _ancestor_getter(attr, many), True,
                                        f"any ancestor's {suffix}")
    f["kind"] = Field("kind", STR, lambda ev: ev.kind, help="event kind: " + ", ".join(KINDS))
    f["workspace.id"] = Field("workspace.id", STR, lambda ev: ev.workspace or None,
                              help="workspace id from the environ marker")
    f["container.id"] = Field("container.id", STR, lambda ev: ev.process.container_id or None,
                              help="container id from the cgroup")
    f["pod.namespace"] = Field("pod.namespace", STR, _pod_getter("namespace"))
    f["pod.name"] = Field("pod.name", STR, _pod_getter("name"))
    for name, typ in (("src", IP), ("dst", IP)):
        f[f"conn.{name}"] = Field(f"conn.{name}", typ, _conn_getter(f"{name}_ip"),
                                  help=f"{name} address")
    for name in ("sport", "dport"):
        f[f"conn.{name}"] = Field(f"conn.{name}", PORT, _conn_getter(name))
    f["conn.family"] = Field("conn.family", STR, _conn_getter("family"), help="ipv4 or ipv6")
    f["conn.direction"] = Field("conn.direction", STR, _conn_getter("direction"),
                                help="outbound or inbound")
    f["conn.netns"] = Field("conn.netns", INT, _conn_getter("netns"))
    return f


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

# Fields whose equality the rule index can use, by index name: an event looks its values
# up in a dict and only rules that could match run. `exe_dir` indexes `proc.exe` prefixes
# that are whole directories ("/tmp/").
INDEXED_FIELDS: dict[str, str] = {
    "proc.name": "comm", "proc.exe_name": "exe_name", "proc.argv0": "argv0",
    "parent.name": "parent.comm", "parent.exe_name": "parent.exe_name",
    "parent.argv0": "parent.argv0",
}
EXE_DIR_INDEX = "exe_dir"
