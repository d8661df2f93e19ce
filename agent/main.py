"""The `nodewarden` entry point (console script and `python -m agent`).

Signal handlers go in before the CLI and its heavy imports: see agent.signals.
"""

from __future__ import annotations

from agent import signals


def main() -> int:
    """Record early signals first, then import and run the CLI (its imports are slow); a
    command other than `run` ends the process as soon as its output is flushed."""
    signals.record_early()
    from agent.cli import main as cli_main

    return cli_main(quick_exit=True)
