"""Signals that arrive before the agent is ready for them are kept, not fatal.

Importing the CLI (the Kubernetes client, Prometheus, RE2) and loading the rules take a good
part of a second; with the default actions, a SIGHUP in that time (a config reloader, a
tenant's script run as root) killed the agent before it started. `record_early` installs
handlers that only write the signal down, first thing in the entry point (agent.main), and
they stay: the agent's loop `drain`s what came, in order, on each turn (a SIGHUP becomes a
reload, a SIGTERM a clean stop). A handler runs between two bytecodes of the main thread,
possibly while it holds a lock (an Event's, inside `wait` or `set`); appending to a list takes
none, so a signal storm cannot re-enter one. Commands that are not the agent get the default
actions back with `restore_defaults`.

Only the standard library here: this module runs before anything else is imported.
"""

from __future__ import annotations

import signal
from types import FrameType

HANDLED = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)

_pending: list[int] = []


def _record(signum: int, _frame: FrameType | None) -> None:
    _pending.append(signum)


def record_early() -> None:
    """Write down SIGHUP, SIGTERM and SIGINT from now on; and unblock them, so a launcher that
    started the process with them blocked (none lost meanwhile) has them delivered now."""
    for sig in HANDLED:
        signal.signal(sig, _record)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)


def drain() -> list[int]:
    """The signals recorded since the last drain, in arrival order. A signal that lands
    while this runs is kept for the next drain."""
    came = _pending[:]
    del _pending[:len(came)]
    return came


def restore_defaults() -> None:
    """The default actions back (SIGINT raises KeyboardInterrupt); a signal recorded before
    is delivered again, now with its default action."""
    for sig in HANDLED:
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    while _pending:
        signal.raise_signal(_pending.pop(0))
