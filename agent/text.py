"""Workload text in and out: one reversible scheme for bytes that are not UTF-8.

A tenant names its files, its argv and its comm with any bytes. They are decoded with
Python's `surrogateescape` (PEP 383): an undecodable byte 0xNN becomes the lone surrogate
U+DCNN, which no valid UTF-8 text contains, so the original bytes come back exactly with
`encode()`. A lone surrogate cannot be written as UTF-8, so everywhere text leaves the agent
it is written as the escape `\\udcNN`:

- JSON (findings, --record, replay): `json_line()`, where it is the JSON string escape
  `\\udcNN` (other Unicode, an emoji, stays as it is); `json.loads()` gives the surrogate
  back and `encode()` the bytes.
- Text for people (logs, the table, Slack, Kubernetes Events): `human()`, which also
  escapes the backslash and every character that is not printable (newlines, terminal
  escapes, bidi controls), so a file name cannot forge a log line or a table row.
"""

from __future__ import annotations

import json
import re

# Lone surrogates, whatever made them (surrogateescape, or a `\ud800` in JSON input).
_SURROGATE = re.compile("[\ud800-\udfff]")
_SHORT = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def decode(raw: bytes) -> str:
    """Bytes from the kernel (procfs, event records) as text; reversible with `encode`."""
    return raw.decode("utf-8", "surrogateescape")


def encode(text: str) -> bytes:
    """The bytes `decode` was given (also for text read back from our JSON)."""
    return text.encode("utf-8", "surrogateescape")


def escape_surrogates(text: str) -> str:
    """`text` with each lone surrogate as the six characters `\\udcNN`: valid UTF-8, and
    inside a JSON string the JSON escape for the same code point."""
    if text.isascii():
        return text
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def json_line(obj: object, ascii_only: bool = False) -> str:
    """One JSON object on one line, valid UTF-8 whatever bytes the workload used.
    `ascii_only` escapes all non-ASCII (for a stream whose encoding is not UTF-8)."""
    line = json.dumps(obj, separators=(",", ":"), ensure_ascii=ascii_only)
    # json.dumps passes lone surrogates through unescaped unless ensure_ascii; they can
    # only stand inside a JSON string there, where `\udcNN` is their escape
    return line if ascii_only else escape_surrogates(line)


def _escape_char(c: str) -> str:
    short = _SHORT.get(c)
    if short is not None:
        return short
    n = ord(c)
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def human(text: str) -> str:
    """Workload text for a log line, a table cell or a chat message: one line, no control
    or formatting characters, no lone surrogates; the backslash is escaped too, so every
    backslash starts an escape and the text is reversible."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c != "\\" else _escape_char(c) for c in text)
