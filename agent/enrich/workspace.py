"""Workspace markers from the bytes of /proc/PID/environ (pure).

Only the configured marker names are looked for and only their values are returned: the
rest of the environment (tokens, passwords) is never decoded, stored or logged.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_MARKERS: tuple[str, ...] = ("NODEWARDEN_WORKSPACE_ID", "WORKSPACE_ID",
                                    "GITPOD_WORKSPACE_ID")

# A workspace id is an identifier, not free text: bound it so a hostile environ cannot
# inflate findings, logs or metric cardinality.
MAX_WORKSPACE_ID = 253


def find_marker(environ: bytes, markers: Sequence[str]) -> tuple[str, str] | None:
    """(marker name, workspace id) for the first configured marker set in `environ`.

    Markers are tried in configuration order; an empty value does not mark a workspace.
    Works on a truncated environ (the last entry may lack its terminating NUL).
    """
    for name in markers:
        key = name.encode() + b"="
        if environ.startswith(key):
            start = len(key)
        else:
            at = environ.find(b"\0" + key)
            if at < 0:
                continue
            start = at + 1 + len(key)
        end = environ.find(b"\0", start)
        raw = environ[start:] if end < 0 else environ[start:end]
        if not raw:
            continue
        # "replace": one character per bad byte, so the bound holds in characters too
        value = raw[:MAX_WORKSPACE_ID].decode("utf-8", "replace")
        if value.isprintable():
            return name, value
    return None
