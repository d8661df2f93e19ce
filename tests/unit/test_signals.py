"""Signals before the agent is up (issue 13, defect 12): recorded, then acted on in order by
`run`, or delivered again with the default action to any other command. Each case runs in a
child interpreter, so the test process keeps its own handlers."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest


def child(code: str) -> subprocess.CompletedProcess[str]:
    prelude = "import os, signal, sys\nfrom agent import signals\nsignals.record_early()\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True,
                          text=True, timeout=60, check=False)


def test_recorded_signals_are_drained_in_arrival_order() -> None:
    res = child("os.kill(os.getpid(), signal.SIGHUP)\nos.kill(os.getpid(), signal.SIGTERM)\n"
                "print([signal.Signals(n).name for n in signals.drain()])\n")
    assert res.stdout.strip() == "['SIGHUP', 'SIGTERM']", res.stderr


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_other_commands_get_the_default_action_for_what_came(sig: int) -> None:
    res = child(f"os.kill(os.getpid(), {int(sig)})\nprint('survived', flush=True)\n"
                "signals.restore_defaults()\nprint('not reached')\n")
    assert res.stdout.split() == ["survived"] and res.returncode == -sig


def test_the_entry_point_catches_signals_before_it_imports_the_cli() -> None:
    code = ("import sys, signal, agent.main\n"
            "agent.main.signals.record_early()\n"
            "print('agent.cli' in sys.modules, signal.getsignal(signal.SIGHUP))")
    res = subprocess.run([sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=60, check=True)
    assert res.stdout.startswith("False <function _record")
