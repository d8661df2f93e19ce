"""The `nodewarden` command line: arguments parsed and dispatched to agent/commands.py.

Findings go to stdout, logs to stderr. Exit codes follow DESIGN.md: scan and replay exit 1
when they found something, every command exits 2 on bad input, never with a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from agent import __version__, commands, signals
from agent.errors import ConfigError

log = logging.getLogger("nodewarden")

Command = Callable[[argparse.Namespace, TextIO, TextIO], int]


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (float() takes 'nan' and 'inf')."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nodewarden", description="Node runtime security agent: "
                                "judges processes and connections against YAML rules.")
    p.add_argument("--version", action="version", version=f"nodewarden {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def rules_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--rules", nargs="+", action="extend", metavar="PATH",
                        help="rule files or directories (default: the shipped rules)")

    run = sub.add_parser("run", help="the agent: watch this host and judge what happens")
    run.add_argument("--config", help="YAML config file")
    rules_opt(run)
    run.add_argument("--dry-run", action="store_true", help="audit mode: act on nothing")
    run.add_argument("--proc-root", help="procfs root (default /proc)")
    run.add_argument("--listen", help="metrics address HOST:PORT (default 127.0.0.1:9808); "
                                      "'off' disables")
    run.add_argument("--format", choices=("table", "json"),
                     help="findings format (default: table on a terminal, else json)")
    run.add_argument("--record", metavar="FILE", help="write every judged event as JSON lines")
    run.add_argument("--findings-file", metavar="FILE", help="also append findings as JSON lines")
    run.add_argument("--interval", type=_seconds, help="seconds between procfs scans")
    run.add_argument("--once", action="store_true", help="stop after the first scan")
    run.add_argument("--no-bpf", action="store_true", help="procfs scans only, no eBPF sensors")
    run.add_argument("--print-bpf", action="store_true", help="print the BPF program and exit")
    run.add_argument("--ring-pages", type=int, metavar="N",
                     help="ring buffer size in pages (power of two; default 1024)")

    scan = sub.add_parser("scan", help="one procfs pass, judged and reported; never kills")
    rules_opt(scan)
    scan.add_argument("--proc-root", default="/proc")
    scan.add_argument("--config", help="YAML config file (markers, protected names)")
    scan.add_argument("--format", choices=("table", "json"), default="table")

    rules = sub.add_parser("rules", help="check or test rule files")
    rsub = rules.add_subparsers(dest="rules_command", required=True, metavar="SUBCOMMAND")
    rc = rsub.add_parser("check", help="validate rule files")
    rc.add_argument("paths", nargs="*", metavar="PATH")
    rt = rsub.add_parser("test", help="run the rules' example events")
    rt.add_argument("paths", nargs="*", metavar="PATH")
    rt.add_argument("--verbose", action="store_true", help="list passing examples too")

    rp = sub.add_parser("replay", help="judge recorded events (backtest a rule set)")
    rp.add_argument("file", metavar="EVENTS.jsonl")
    rules_opt(rp)
    rp.add_argument("--format", choices=("table", "json"), default="table")
    rp.add_argument("--config", help="YAML config file")
    return p


COMMANDS: dict[str, Command] = {
    "run": commands.run,
    "scan": commands.scan,
    "replay": commands.replay,
    "rules check": commands.rules_check,
    "rules test": commands.rules_test,
}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None, quick_exit: bool = False) -> int:
    """Parse `argv` and run its command; the exit code. With `quick_exit` (the entry
    point's), a command other than `run` ends the process once its output is flushed
    (`_exit`)."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=err,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command != "run":
        signals.restore_defaults()
    name = f"rules {args.rules_command}" if args.command == "rules" else args.command
    try:
        code = COMMANDS[name](args, out, err)
    except ConfigError as e:
        print(f"nodewarden: {e}", file=err)
        code = 2
    except BrokenPipeError:
        code = 0
    if quick_exit and name != "run":
        _exit(code, out, err)
    return code


def _exit(code: int, out: TextIO, err: TextIO) -> None:
    """End a short command now, its output flushed: the interpreter's own shutdown (freeing
    every module and object one by one) is ~10% of a `scan` of an empty procfs, and such a
    command leaves nothing else to finish (`run`, whose sensors and threads clean up at
    exit, never comes here). A reader gone from stdout is no error, as above."""
    for stream in (out, err):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
