"""A rule's `message:` template compiled into a function of the event.

Placeholders name fields (`{proc.exe_name}`, `{conn.dst}`) and are checked at load time;
a missing value renders as `-`, a list as its elements joined with spaces, an address as
the text the event carries.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from agent.engine import yamlsrc
from agent.engine.problems import Problems, suggest
from agent.engine.schema import IP, Field, field, field_names
from agent.model import Event

_PLACEHOLDER = re.compile(r"\{([a-z_.]+(?:\.[A-Za-z0-9_./-]+)?)\}")

Render = Callable[[Event], str]


def compile_message(node: yamlsrc.Node, default: str, problems: Problems) -> Render:
    """The renderer of the rule's `message` (or of `default`, its description or id)."""
    template = node.get("message", default)
    line = node.line_of("message")
    if not isinstance(template, str):
        raise problems.fail(line, "'message' must be a string")
    parts: list[str | Field] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(template):
        f = field(m.group(1))
        if f is None:
            raise problems.fail(line, f"message placeholder '{{{m.group(1)}}}' is not a field"
                                      f"{suggest(m.group(1), field_names())}")
        parts.append(template[pos : m.start()])
        parts.append(f)
        pos = m.end()
    parts.append(template[pos:])
    if len(parts) == 1:
        return lambda ev: template

    def render(ev: Event) -> str:
        return "".join(p if isinstance(p, str) else _text(ev, p) for p in parts)

    return render


def _text(ev: Event, f: Field) -> str:
    v: Any = f.get(ev)
    if f.type == IP and v is not None:
        v = _ip_text(ev, f.name)
    if v is None or v == "":
        return "-"
    return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def _ip_text(ev: Event, name: str) -> str:
    c = ev.connection
    if c is None:
        return "-"
    return c.src if name.endswith("src") else c.dst
