"""Regex patterns known to compile, kept beside the parsed rule files for the next command.

Loading checks every `regex` pattern on its own, so that a bad one is a problem at its file
and line; with RE2 that check is a whole compile, most of what a short `nodewarden scan`
spent on regexes. Whether a pattern compiles depends only on its text and the RE2 build,
so the patterns that did are kept (in the parse cache, under the same root-only rules: see
parsecache.py) and not compiled again to be checked. A pattern that did not compile is
never kept: it is checked, and reported, every time.
"""

from __future__ import annotations

import os

import re2

from agent.engine import files, operators

# at most this many patterns are kept (past it, those of the latest load)
MAX_KEPT = 4096


def _entry_name() -> bytes:
    """The cache entry's name: another RE2 build (its file's size and mtime) is a miss."""
    try:
        st = os.stat(re2._re2.__file__)
        build = f"{st.st_size}:{st.st_mtime_ns}"
    except (OSError, AttributeError, TypeError):
        build = "?"
    return f"nodewarden regex patterns known to compile\0{build}".encode()


def recall() -> int:
    """Put the patterns an earlier command found to compile in operators.KNOWN_VALID;
    returns how many it holds now (give it to `keep`)."""
    parsed = files.CACHE.get(_entry_name()) if files.CACHE.usable() else None
    if parsed is not None and isinstance(parsed[0], frozenset):
        operators.KNOWN_VALID.update(p for p in parsed[0] if isinstance(p, str))
    return len(operators.KNOWN_VALID)


def keep(recalled: int) -> None:
    """Keep operators.KNOWN_VALID for the next command, when it grew since `recall`."""
    known = operators.KNOWN_VALID
    if len(known) == recalled or not files.CACHE.usable():
        return
    if len(known) > MAX_KEPT:
        known.clear()  # bounded: the next load checks, and keeps, what it uses
        return
    files.CACHE.put(_entry_name(), (frozenset(known), []))
