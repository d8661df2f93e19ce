"""What the rule index keys besides a Process attribute, and the normal form of a command
line its needles are looked for in (ruleset.py builds the index; schema.py re-exports all of
this for the fields and the compiler). Kept apart from schema.py, whose field tables and
detail families a rule set recalled by `scan` (setcache.py) never needs to import.
"""

from __future__ import annotations

from agent.model import Process

# The rule index (schema.Field.index) also keys `proc.exe` prefixes ("/tmp/", "/memfd:") and the
# needles of `proc.cmdline_norm: {contains: ...}` under these names: an event is checked
# against them (one `startswith` over a tuple; one `in` per needle on the normalised
# command line, made once per process) and only rules that could match run.
EXE_PREFIX_INDEX = "exe_prefix"
NORM_NEEDLE_INDEX = "cmdline_norm_contains"
# and `proc.cmdline_truncated: true` under this name, its one value TRUNCATED
TRUNCATED_INDEX = "cmdline_truncated"
TRUNCATED = "true"


# one event is judged by several rules in a row: keep the last process's normal forms
_norm_cache: tuple[Process | None, str] = (None, "")
_args_norm_cache: tuple[Process | None, tuple[str, ...]] = (None, ())


def normalise(text: str) -> str:
    """Quotes and backslashes removed, lower case: what a shell makes of `/dev/tc""p/` and
    `/dev/t\\cp/`, and what case-blind programs make of `STRATUM+TCP://`. An approximation
    (`$'\\x2f'` and variables are not expanded) for matching, never for display."""
    # str.replace finds nothing at memchr speed: 10x faster than str.translate here
    if "'" in text:
        text = text.replace("'", "")
    if '"' in text:
        text = text.replace('"', "")
    if "\\" in text:
        text = text.replace("\\", "")
    return text.lower()


def cmdline_norm(p: Process) -> str:
    """The command line joined with spaces, normalised: one cheap substring gate."""
    global _norm_cache
    last, norm = _norm_cache
    if last is not p:
        norm = normalise(p.cmdline_str)
        _norm_cache = (p, norm)
    return norm


def args_norm(p: Process) -> tuple[str, ...]:
    """argv[1:], each argument normalised: per-token patterns on `sh -c` strings."""
    global _args_norm_cache
    last, norm = _args_norm_cache
    if last is not p:
        norm = tuple(normalise(a) for a in p.args)
        _args_norm_cache = (p, norm)
    return norm
