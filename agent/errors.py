"""Exceptions that carry meaning between layers.

`ProcessGone` and `AccessDenied` are normal control flow in a procfs scan (processes exit
while we read them); `RuleError` carries the file and line a user must fix.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass


class NodewardenError(Exception):
    """Base of every error this package raises on purpose."""


class ProcessGone(NodewardenError):
    """The process exited (or its pid directory vanished) while we were reading it."""

    def __init__(self, pid: int) -> None:
        super().__init__(f"process {pid} is gone")
        self.pid = pid


class AccessDenied(NodewardenError):
    """We may not read this part of the process (not root, or a protected pid 1)."""

    def __init__(self, pid: int, what: str) -> None:
        super().__init__(f"access to /proc/{pid}/{what} denied")
        self.pid = pid
        self.what = what


@dataclass(frozen=True)
class RuleProblem:
    """One problem in a rule file, printed as `file:line: message`."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        if self.line <= 0:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}: {self.message}"


class RuleError(NodewardenError):
    """A rule set could not be loaded; carries every problem found, not just the first."""

    def __init__(self, problems: list[RuleProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class ConfigError(NodewardenError):
    """The agent configuration is invalid; the message names the key and the fix."""


# EMFILE (this process) and ENFILE (the system): no file descriptor left
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE})


class FdExhausted(OSError):
    """The agent ran out of file descriptors (EMFILE, or the system's table: ENFILE).

    Not a property of the process being read: whatever was being read is retried later,
    never judged on the empty data a failed open would leave."""
