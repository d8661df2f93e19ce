"""Rule sets checked before, kept by the bytes of their files and of the compiler's code.

Compiling the shipped rules (conditions into closures, every pattern, every macro, the
kernel's forms) is the larger part of what a short `nodewarden scan` spends before it reads
/proc, and on an empty or quiet procfs none of those closures is ever called. Whether a rule
set compiles, and what each rule says about itself (id, severity, kinds, what the rule index
may use), depends only on the bytes of its files, their paths and the compiler's source; so
a set that compiled without a problem is kept as those facts (`Skeleton`), named by the
SHA-256 of all of them, and the next command with the very same inputs builds its RuleSet
from them. Each rule's conditions compile, from the same bytes read at start, the first
time anything asks for them (`Rule.__getattr__`, `materialize`).

A changed byte in a rule file, another file list or a changed compiler module is another
name: that command checks (and reports) everything as before. The entries live in the
parse cache (parsecache.py, `files.CACHE`): root's, written by root alone, read through its
restricted unpickler; an entry holds only tuples, lists, dicts, frozensets, text, numbers
and None.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

from agent.engine import files
from agent.engine.parsecache import sha256

# the modules whose code decides whether a rule compiles and what it says about itself
_AGENT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CODE = ("details.py", "model.py", "errors.py")
# what one rule's entry holds, in order
FIELDS = ("id", "description", "severity", "action", "mode", "enabled", "tags", "kinds",
          "file", "line", "order", "requirement")
_TAG = b"nodewarden checked rule set\0"

Skeleton = list[tuple[Any, ...]]


@functools.cache
def code_stamp() -> bytes:
    """What names the compiler's source: each module of agent/engine and of the event
    model it compiles against, by path, size and modification time (what CPython itself
    trusts a module's bytecode by). An edit, an upgrade or another checkout names every
    entry anew."""
    parts = []
    engine = os.path.join(_AGENT_DIR, "engine")
    try:
        with os.scandir(engine) as it:
            paths = sorted(e.path for e in it if e.name.endswith(".py"))
        paths += [os.path.join(_AGENT_DIR, n) for n in _CODE]
        for path in paths:
            st = os.stat(path)
            parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
    except OSError:
        return b"?"
    return "\0".join(parts).encode()


def name(files: Sequence[tuple[str, bytes]]) -> bytes | None:
    """The entry name of the rule set made of `files` ((path, bytes) in load order); None
    when the compiler's code cannot be read (no entry is used or kept)."""
    stamp = code_stamp()
    if stamp == b"?":
        return None
    h = sha256(_TAG + stamp)
    for path, raw in files:
        h.update(b"\0" + path.encode() + b"\0" + sha256(raw).digest())
    return _TAG + h.hexdigest().encode()


def recall(entry: bytes) -> tuple[str, Skeleton] | None:
    """The digest and the rules of a set kept under `entry`, or None (none kept, or not in
    this form)."""
    if not files.CACHE.usable():
        return None
    parsed = files.CACHE.get(entry)
    if parsed is None or not isinstance(parsed[0], tuple) or len(parsed[0]) != 2:
        return None
    digest, rules = parsed[0]
    if not isinstance(digest, str) or not isinstance(rules, list) or not all(
            isinstance(r, tuple) and len(r) == len(FIELDS) for r in rules):
        return None
    return digest, rules


def keep(entry: bytes, digest: str, rules: Sequence[Any]) -> None:
    """Keep the digest of a set and the facts of its rules (all of them, compiled without
    a problem)."""
    if not files.CACHE.usable():
        return
    skeleton = [tuple(_plain(getattr(r, f)) for f in FIELDS) for r in rules]
    files.CACHE.put(entry, ((digest, skeleton), []))


def _plain(value: Any) -> Any:
    """`value` as the builtin types an entry may hold (enums as their text)."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {str(k): frozenset(str(x) for x in v) for k, v in value.items()}
    return value
