"""Events to and from JSON: the recorded-event format (`--record`, `replay`, rule examples).

One codec serves all three, so a rule example is exactly an event as the agent records it
and a recorded line replays as the event that was judged. Decoding is lenient where a
person writes the event (an example may leave out what does not matter to the rule: comm
defaults to the basename of exe, a string cmdline is split like a shell would) and strict
about everything else (unknown keys, wrong types), naming the key at fault.

Text that was not UTF-8 holds surrogate escapes (agent/text.py); `event_line` writes them
as `\\udcNN` and `json.loads` gives them back, so the bytes round-trip exactly.
"""

from __future__ import annotations

import json
import math
import os
import shlex
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec

from agent import details
from agent.model import COMM_LEN, RULE_KINDS, Connection, Event, Pod, Process
from agent.text import json_line

_PROCESS_KEYS = {"pid", "ppid", "starttime", "id", "comm", "exe", "cmdline", "uid", "ancestors",
                 "container_id", "netns", "cmdline_truncated", "cmdline_cut_bytes"}
# each agent.details family is a key too (`"file": {"path": ...}`)
_EVENT_KEYS = {"kind", "time", "process", "workspace", "container", "pod", "connection",
               "repeat", *details.BY_FAMILY}
_CONN_KEYS = {"src", "sport", "dst", "dport", "family", "direction", "netns", "count"}


class EventFormatError(ValueError):
    """A JSON object is not an event; the message says which key is wrong and why."""


def _int(obj: dict[str, Any], key: str, default: int) -> int:
    v = obj.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise EventFormatError(f"'{key}' must be an integer, not {v!r}")
    return v


def _str(obj: dict[str, Any], key: str, default: str) -> str:
    v = obj.get(key, default)
    if v is None:
        return default
    if not isinstance(v, str):
        raise EventFormatError(f"'{key}' must be a string, not {v!r}")
    return v


def _check_keys(obj: Any, allowed: set[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise EventFormatError(f"{what} must be a mapping, not {obj!r}")
    unknown = sorted(str(k) for k in obj if k not in allowed)
    if unknown:
        raise EventFormatError(f"unknown key '{unknown[0]}' in {what} (expected one of: "
                               f"{', '.join(sorted(allowed))})")
    return obj


def process_from_json(obj: Any, container_id: str = "") -> Process:
    """A Process from its JSON form; missing fields get harmless defaults."""
    obj = _check_keys(obj, _PROCESS_KEYS, "process")
    exe = _str(obj, "exe", "")
    raw_cmd = obj.get("cmdline")
    if raw_cmd is None:
        cmdline: tuple[str, ...] = (exe,) if exe else ()
    elif isinstance(raw_cmd, str):
        try:
            cmdline = tuple(shlex.split(raw_cmd))
        except ValueError as e:
            raise EventFormatError(f"cmdline {raw_cmd!r} is not shell syntax: {e}") from None
    elif isinstance(raw_cmd, list) and all(isinstance(a, str) for a in raw_cmd):
        cmdline = tuple(raw_cmd)
    else:
        raise EventFormatError("'cmdline' must be a list of strings or a string")
    named = exe or (cmdline[0] if cmdline else "")
    default_comm = os.path.basename(named) if named else ""
    truncated = obj.get("cmdline_truncated", False)
    if not isinstance(truncated, bool):
        raise EventFormatError(f"'cmdline_truncated' must be true or false, not {truncated!r}")
    cut = _int(obj, "cmdline_cut_bytes", 0)
    return Process(
        pid=_int(obj, "pid", 4242),
        ppid=_int(obj, "ppid", 1),
        starttime=_int(obj, "starttime", 0),
        comm=_str(obj, "comm", default_comm[:COMM_LEN]),
        exe=exe,
        cmdline=cmdline,
        # a truncated example without the count: some bytes were cut
        cmdline_cut=max(cut, 1) if truncated else 0,
        uid=_int(obj, "uid", 1000),
        container_id=_str(obj, "container_id", container_id),
        netns=_int(obj, "netns", 0),
    )


def connection_from_json(obj: Any) -> Connection:
    """A Connection from its JSON form; the addresses must be IP addresses."""
    obj = _check_keys(obj, _CONN_KEYS, "connection")
    dst = _str(obj, "dst", "0.0.0.0")
    src = _str(obj, "src", "0.0.0.0")
    # the Connection parses each address once (to its integer, -1 when it is none): that
    # parse is the check, so an address is never parsed twice
    conn = Connection(src=src, sport=0, dst=dst, dport=0)
    for key, addr, ip in (("src", src, conn.src_ip), ("dst", dst, conn.dst_ip)):
        if ip == -1:
            raise EventFormatError(f"connection '{key}' {addr!r} is not an IP address")
    family = _str(obj, "family", "ipv6" if ":" in dst else "ipv4")
    if family not in ("ipv4", "ipv6"):
        raise EventFormatError(f"connection 'family' must be ipv4 or ipv6, not {family!r}")
    direction = _str(obj, "direction", "outbound")
    if direction not in ("outbound", "inbound"):
        raise EventFormatError(f"connection 'direction' must be outbound or inbound, not "
                               f"{direction!r}")
    conn.sport, conn.dport = _int(obj, "sport", 0), _int(obj, "dport", 0)
    conn.family, conn.direction, conn.netns = family, direction, _int(obj, "netns", 0)
    conn.count = _int(obj, "count", 1)
    return conn


def event_time(value: Any) -> float:
    """Seconds since the epoch from either form a user has at hand: a number (as `--record`
    writes) or the ISO-8601 text a finding prints (`2026-11-23T10:00:00.123Z`; UTC if it
    names no zone)."""
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise EventFormatError(f"'time' must be seconds since the epoch or an ISO-8601 "
                                   f"time like 2026-11-23T10:00:00.123Z, not {value!r}") from None
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EventFormatError(f"'time' must be seconds since the epoch or an ISO-8601 time, "
                               f"not {value!r}")
    return float(value)


def pod_from_json(obj: Any) -> Pod:
    """A Pod from its JSON form (namespace, name, uid, labels)."""
    obj = _check_keys(obj, {"namespace", "name", "uid", "labels"}, "pod")
    labels = obj.get("labels") or {}
    if not isinstance(labels, dict):
        raise EventFormatError("pod 'labels' must be a mapping")
    return Pod(namespace=_str(obj, "namespace", ""), name=_str(obj, "name", ""),
               uid=_str(obj, "uid", ""), labels={str(k): str(v) for k, v in labels.items()})


def event_from_json(obj: Any) -> Event:
    """An Event from the recorded-event format. Raises EventFormatError."""
    obj = _check_keys(obj, _EVENT_KEYS, "event")
    kind = _str(obj, "kind", "exec")
    if kind not in RULE_KINDS:
        raise EventFormatError(f"'kind' must be one of {', '.join(RULE_KINDS)}, not {kind!r}")
    t = event_time(obj.get("time", 0.0))
    container = obj.get("container") or {}
    cid = _str(_check_keys(container, {"id"}, "container"), "id", "")
    pobj = obj.get("process") or {}
    process = process_from_json(pobj, cid)
    ancestors_raw = pobj.get("ancestors") or []
    if not isinstance(ancestors_raw, list):
        raise EventFormatError("'ancestors' must be a list of processes, parent first")
    ancestors = tuple(process_from_json(a) for a in ancestors_raw)
    ws = obj.get("workspace") or {}
    workspace = _str(_check_keys(ws, {"id"}, "workspace"), "id", "")
    pod = pod_from_json(obj["pod"]) if obj.get("pod") else None
    conn = connection_from_json(obj["connection"]) if obj.get("connection") else None
    return Event(kind=kind, time=t, process=process, ancestors=ancestors,
                 workspace=workspace, pod=pod, connection=conn, detail=_detail_of(obj))


def _detail_of(obj: dict[str, Any]) -> Any:
    """The event's detail (one family key at most), or None."""
    present = [k for k in details.BY_FAMILY if obj.get(k) is not None]
    if len(present) > 1:
        raise EventFormatError(f"an event carries one detail, not {' and '.join(present)}")
    if not present:
        return None
    try:
        return details.from_json(present[0], obj[present[0]])
    except details.DetailFormatError as e:
        raise EventFormatError(str(e)) from None


def event_to_json(ev: Event) -> dict[str, Any]:
    """The recorded-event format of `ev`: what `--record` writes and `event_from_json`
    reads back. Ancestors carry only what rules test of them."""
    return {
        "kind": ev.kind,
        "time": ev.time,
        "process": dict(ev.process.to_json(),
                        ancestors=[_ancestor_json(a) for a in ev.ancestors]),
        "workspace": {"id": ev.workspace} if ev.workspace else None,
        "container": {"id": ev.process.container_id} if ev.process.container_id else None,
        "pod": ev.pod.to_json() if ev.pod else None,
        "connection": ev.connection.to_json() if ev.connection else None,
        **_detail_json(ev.detail),
    }


def _detail_json(detail: Any) -> dict[str, Any]:
    """`{family: its JSON}` for an event or finding with a detail, else nothing."""
    if detail is None:
        return {}
    family, obj = details.to_json(detail)
    return {family: obj}


def _ancestor_json(p: Process) -> dict[str, Any]:
    return {"pid": p.pid, "comm": p.comm, "exe": p.exe, "cmdline": list(p.cmdline),
            "cmdline_truncated": p.cmdline_truncated}


def event_line(ev: Event) -> str:
    """One recorded event as one line of JSON (no newline), valid UTF-8 whatever bytes the
    workload used: the line `--record` writes and `read_events` reads."""
    return json_line(event_to_json(ev))


# -- the fast path ------------------------------------------------------------------------
# A recorded line as `event_line` writes it decodes straight into these typed structs
# (msgspec, in C) and maps onto the event types without a dict in between. They accept
# only what the lenient reader would read to the same event; anything else (a string
# cmdline, an ISO time, a lone surrogate, an empty pod ...) is no struct, and the line
# goes through `event_from_json`, which reads it or names what is wrong. Null stands for
# "left out" in both, as `_str` has it.
# The structs are not tracked by the cycle collector (`gc=False`): they hold only texts,
# numbers, tuples of texts and each other, never a cycle; a replay makes millions.

class _AncestorJ(msgspec.Struct, forbid_unknown_fields=True, frozen=True, gc=False):
    """An ancestor as recorded (hashable: repeated ancestors are made once). The event's own
    process has the same fields, and its ancestors."""

    pid: int = 4242
    ppid: int = 1
    starttime: int = 0
    id: str | None = None
    comm: str | None = None
    exe: str | None = None
    cmdline: tuple[str, ...] | None = None
    uid: int = 1000
    container_id: str | None = None
    netns: int = 0
    cmdline_truncated: bool = False
    cmdline_cut_bytes: int = 0
    ancestors: None = None


class _ProcessJ(_AncestorJ, frozen=True):
    """The event's process as recorded: an ancestor's fields, and its ancestors, left as
    their JSON text (a recording repeats the same few lists: each distinct one is decoded
    once, by `_Ancestors`)."""

    ancestors: msgspec.Raw = msgspec.Raw()  # type: ignore[assignment]


class _IdJ(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A workspace or a container: its id."""

    id: str | None = None


class _PodJ(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A pod as recorded."""

    namespace: str | None = None
    name: str | None = None
    uid: str | None = None
    labels: dict[str, str] | None = None


class _ConnectionJ(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A connection as recorded."""

    src: str | None = None
    sport: int = 0
    dst: str | None = None
    dport: int = 0
    family: str | None = None
    direction: str | None = None
    netns: int = 0
    count: int = 1


class _EventJ(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """An event as recorded."""

    kind: str | None = None
    time: float = 0.0
    process: _ProcessJ | None = None
    workspace: _IdJ | None = None
    container: _IdJ | None = None
    pod: _PodJ | None = None
    connection: _ConnectionJ | None = None
    repeat: Any = None


_DECODER = msgspec.json.Decoder(_EventJ)
_NO_CONNECTION = _ConnectionJ()
# each kind's one str object (a dict hit on it later hashes nothing); a missing kind is exec
_KIND_OF: dict[str | None, str] = {**{str(k): str(k) for k in RULE_KINDS}, None: "exec"}
_ANCESTORS_DECODER = msgspec.json.Decoder(list[_AncestorJ] | None)
_NO_PROCESS = _ProcessJ()
_ANCESTORS_MAX = 4096
_isfinite = math.isfinite


def _process_of(p: _ProcessJ | _AncestorJ, container_id: str) -> Process:
    """The Process `process_from_json` makes of the same JSON."""
    exe = p.exe or ""
    cmdline = p.cmdline if p.cmdline is not None else ((exe,) if exe else ())
    comm = p.comm
    if comm is None:
        named = exe or (cmdline[0] if cmdline else "")
        comm = os.path.basename(named)[:COMM_LEN] if named else ""
    # positional (Process's field order: pid, ppid, starttime, comm, exe, cmdline,
    # cmdline_cut, uid, state, kthread, exe_dev, exe_ino, container_id, netns): a third
    # cheaper than keywords, once per recorded event
    return Process(p.pid, p.ppid, p.starttime, comm, exe, cmdline,
                   max(p.cmdline_cut_bytes, 1) if p.cmdline_truncated else 0, p.uid, "R", False,
                   0, 0, p.container_id if p.container_id is not None else container_id,
                   p.netns)


class _Ancestors:
    """Ancestor processes made once per distinct recorded form (a recording repeats the
    same shell, IDE server and init for every event): each distinct list, by its JSON
    text, and each distinct ancestor in it; bounded, cleared when full. The agent shares
    ancestor Process objects between events the same way."""

    def __init__(self) -> None:
        self.made: dict[_AncestorJ, Process] = {}
        self.lists: dict[bytes, tuple[Process, ...]] = {}

    def of_raw(self, raw: msgspec.Raw) -> tuple[Process, ...] | None:
        """The ancestors of a recorded list (its JSON text), parent first; None when the
        typed structs refuse it (the lenient reader decides)."""
        if not raw:
            return ()
        key = bytes(raw)
        found = self.lists.get(key)
        if found is None:
            try:
                recorded = _ANCESTORS_DECODER.decode(key)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                return None
            found = self.of(recorded) if recorded else ()
            if len(self.lists) >= _ANCESTORS_MAX:
                self.lists.clear()
            self.lists[key] = found
        return found

    def of(self, recorded: list[_AncestorJ]) -> tuple[Process, ...]:
        """The ancestors, parent first."""
        made = self.made
        out = []
        for a in recorded:
            p = made.get(a)
            if p is None:
                if len(made) >= _ANCESTORS_MAX:
                    made.clear()
                p = made[a] = _process_of(a, "")
            out.append(p)
        return tuple(out)


def _connection_of(c: _ConnectionJ) -> Connection | None:
    """The Connection `connection_from_json` makes, or None when it would refuse it."""
    dst = c.dst if c.dst is not None else "0.0.0.0"
    family = c.family if c.family is not None else ("ipv6" if ":" in dst else "ipv4")
    direction = c.direction if c.direction is not None else "outbound"
    if family not in ("ipv4", "ipv6") or direction not in ("outbound", "inbound"):
        return None
    # positional (src, sport, dst, dport, family, direction, netns, count): once per line
    conn = Connection(c.src if c.src is not None else "0.0.0.0", c.sport, dst, c.dport, family,
                      direction, c.netns, c.count)
    return None if conn.src_ip == -1 or conn.dst_ip == -1 else conn


def _fast_event(line: str, ancestors: _Ancestors) -> Event | None:
    """The event of a recorded line, or None when the lenient reader must decide."""
    try:
        e = _DECODER.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None  # (nested too deeply: the lenient reader says so)
    kind = _KIND_OF.get(e.kind)
    if kind is None or not _isfinite(e.time):
        return None
    conn = pod = None
    if e.connection is not None:
        if e.connection == _NO_CONNECTION:  # `{}` is no connection; {"src": null} one
            return None
        conn = _connection_of(e.connection)
        if conn is None:
            return None
    if e.pod is not None:
        p = e.pod
        if p.namespace is None and p.name is None and p.uid is None and p.labels is None:
            return None  # `{}` is no pod; {"name": null} one
        pod = Pod(namespace=p.namespace or "", name=p.name or "", uid=p.uid or "",
                  labels=p.labels or {})
    pj = e.process or _NO_PROCESS
    raw = pj.ancestors
    # a list read before (most lines), without a call; else `of_raw` reads it
    anc = ancestors.lists.get(bytes(raw)) if raw else ()
    if anc is None:
        anc = ancestors.of_raw(raw)
        if anc is None:
            return None
    cid = (e.container.id if e.container is not None else None) or ""
    ws = (e.workspace.id if e.workspace is not None else None) or ""
    return Event(kind, e.time, _process_of(pj, cid), anc, ws, pod, conn)


def event_from_line(line: str) -> Event:
    """The event of one recorded line. Raises EventFormatError (bad JSON included)."""
    ev = _fast_event(line, _Ancestors())
    return ev if ev is not None else _event_from_text(line)


def _event_from_text(line: str) -> Event:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise EventFormatError(str(e)) from None
    except RecursionError:
        # a hostile line of nested brackets: an error that names the line, not a traceback
        raise EventFormatError("JSON nested too deeply to be an event") from None
    return event_from_json(obj)


def read_events(path: str) -> Iterator[Event]:
    """Events of a JSON-lines file; a bad line raises EventFormatError naming path:line."""
    ancestors = _Ancestors()
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            ev = _fast_event(line, ancestors)
            if ev is not None:
                yield ev
                continue
            if not line.strip():
                continue
            try:
                ev = _event_from_text(line)
            except EventFormatError as e:
                raise EventFormatError(f"{path}:{n}: {e}") from None
            yield ev
