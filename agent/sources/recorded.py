"""Events from JSON: the recorded-event format (`--record`, `replay`) and rule examples.

One parser serves both, so a rule example is exactly an event as the agent records it;
examples may leave out what does not matter to the rule (comm defaults to the basename
of exe, a string cmdline is split like a shell would).
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import shlex
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from agent.engine.schema import KINDS
from agent.model import Connection, Event, Pod, Process

_PROCESS_KEYS = {"pid", "ppid", "starttime", "id", "comm", "exe", "cmdline", "uid", "ancestors",
                 "container_id", "netns", "cmdline_truncated", "cmdline_cut_bytes"}
_EVENT_KEYS = {"kind", "time", "process", "workspace", "container", "pod", "connection",
               "repeat"}
_CONN_KEYS = {"src", "sport", "dst", "dport", "family", "direction", "netns"}


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
    default_comm = os.path.basename(exe) if exe else (os.path.basename(cmdline[0]) if cmdline else "")
    truncated = obj.get("cmdline_truncated", False)
    if not isinstance(truncated, bool):
        raise EventFormatError(f"'cmdline_truncated' must be true or false, not {truncated!r}")
    cut = _int(obj, "cmdline_cut_bytes", 0)
    return Process(
        pid=_int(obj, "pid", 4242),
        ppid=_int(obj, "ppid", 1),
        starttime=_int(obj, "starttime", 0),
        comm=_str(obj, "comm", default_comm[:15]),
        exe=exe,
        cmdline=cmdline,
        # a truncated example without the count: some bytes were cut
        cmdline_cut=max(cut, 1) if truncated else 0,
        uid=_int(obj, "uid", 1000),
        container_id=_str(obj, "container_id", container_id),
        netns=_int(obj, "netns", 0),
    )


def connection_from_json(obj: Any) -> Connection:
    obj = _check_keys(obj, _CONN_KEYS, "connection")
    dst = _str(obj, "dst", "0.0.0.0")
    src = _str(obj, "src", "0.0.0.0")
    for key, addr in (("src", src), ("dst", dst)):
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            raise EventFormatError(f"connection '{key}' {addr!r} is not an IP address") from None
    family = _str(obj, "family", "ipv6" if ":" in dst else "ipv4")
    if family not in ("ipv4", "ipv6"):
        raise EventFormatError(f"connection 'family' must be ipv4 or ipv6, not {family!r}")
    direction = _str(obj, "direction", "outbound")
    if direction not in ("outbound", "inbound"):
        raise EventFormatError(f"connection 'direction' must be outbound or inbound, not {direction!r}")
    return Connection(src=src, sport=_int(obj, "sport", 0), dst=dst, dport=_int(obj, "dport", 0),
                      family=family, direction=direction, netns=_int(obj, "netns", 0))


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


def event_from_json(obj: Any) -> Event:
    """An Event from the recorded-event format. Raises EventFormatError."""
    obj = _check_keys(obj, _EVENT_KEYS, "event")
    kind = _str(obj, "kind", "exec")
    if kind not in KINDS:
        raise EventFormatError(f"'kind' must be one of {', '.join(KINDS)}, not {kind!r}")
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
    pod = None
    if obj.get("pod"):
        pobj2 = _check_keys(obj["pod"], {"namespace", "name", "uid", "labels"}, "pod")
        labels = pobj2.get("labels") or {}
        if not isinstance(labels, dict):
            raise EventFormatError("pod 'labels' must be a mapping")
        pod = Pod(namespace=_str(pobj2, "namespace", ""), name=_str(pobj2, "name", ""),
                  uid=_str(pobj2, "uid", ""), labels={str(k): str(v) for k, v in labels.items()})
    conn = connection_from_json(obj["connection"]) if obj.get("connection") else None
    return Event(kind=kind, time=t, process=process, ancestors=ancestors,
                 workspace=workspace, pod=pod, connection=conn)


def read_events(path: str) -> Iterator[Event]:
    """Events of a JSON-lines file; a bad line raises EventFormatError naming path:line."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                yield event_from_json(obj)
            except (json.JSONDecodeError, EventFormatError) as e:
                raise EventFormatError(f"{path}:{n}: {e}") from None
