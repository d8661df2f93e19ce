"""Which rules the kernel can enforce itself, and what goes into its maps.

A rule compiles into the BPF program when its condition is executable names (compared
with the 15-byte comm the kernel sets at exec) or full executable paths, or an `any` with
such branches, with action `kill`, no exceptions and no window: then `sched_process_exec`
itself sends SIGKILL before the new image runs an instruction (or, in audit, marks the
exec would_kill). The whole rule is still evaluated in userspace, which catches what the
kernel cannot test (argv0, other branches) and everything else keeps the userspace path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

COMM_LEN = 15
PATH_LEN = 255
MAX_KERNEL_RULES = 64

_NAME_FIELDS = ("proc.name", "proc.exe_name")


@dataclass
class KernelExecSpec:
    """Names (comm) and paths that make a rule fire at exec."""

    names: set[str] = field(default_factory=set)
    paths: set[str] = field(default_factory=set)


def exec_spec(match: Any, expand: Callable[[Any], list[Any]], macro: Callable[[str], Any],
              ) -> KernelExecSpec | None:
    """The kernel form of a rule's `match`, or None when it has any other test. `expand`
    resolves values and `$lists`; `macro` returns a macro's condition node."""
    spec = KernelExecSpec()
    if not _collect(match, spec, expand, macro, ()):
        return None
    return spec if spec.names or spec.paths else None


def _collect(node: Any, spec: KernelExecSpec, expand: Callable[[Any], list[Any]],
             macro: Callable[[str], Any], stack: tuple[str, ...]) -> bool:
    # only a single term per mapping: {any: [...]}, {macro: m} or {field: values}
    if not isinstance(node, dict) or len(node) != 1:
        return False
    (key, value), = node.items()
    if key == "any":
        # the branches the kernel can test go to the kernel; the rest stay in userspace
        # (the whole rule is still evaluated there), so one compilable branch is enough
        if not isinstance(value, list):
            return False
        found = False
        for v in value:
            part = KernelExecSpec()
            if _collect(v, part, expand, macro, stack):
                spec.names |= part.names
                spec.paths |= part.paths
                found = True
        return found
    if key == "macro":
        if not isinstance(value, str) or value in stack:
            return False
        return _collect(macro(value), spec, expand, macro, (*stack, value))
    if key in _NAME_FIELDS or key == "proc.exe":
        values = _values(value, expand)
        if values is None or not all(isinstance(v, str) and v for v in values):
            return False
        if key == "proc.exe":
            if any(len(v) > PATH_LEN for v in values):
                return False
            spec.paths.update(values)
        else:
            # exe_name is compared with comm: exact only up to 15 bytes
            if key == "proc.exe_name" and any(len(v.encode()) > COMM_LEN for v in values):
                return False
            spec.names.update(v.encode()[:COMM_LEN].decode(errors="ignore") for v in values)
        return True
    return False


def _values(spec: Any, expand: Callable[[Any], list[Any]]) -> list[Any] | None:
    if isinstance(spec, dict):
        if len(spec) != 1:
            return None
        (op, arg), = spec.items()
        return expand(arg) if op in ("equals", "in") else None
    return expand(spec)


def kernel_rules(rules: Sequence[Any]) -> list[Any]:
    """The enabled rules the kernel will enforce, at most MAX_KERNEL_RULES (the first ones
    in file order; the rest stay in userspace)."""
    out = [r for r in rules if r.enabled and r.kernel is not None]
    return out[:MAX_KERNEL_RULES]
