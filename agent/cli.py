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
from typing import TYPE_CHECKING, TextIO

from agent import __version__, commands, signals
from agent.errors import ConfigError

log = logging.getLogger("nodewarden")

Command = Callable[[argparse.Namespace, TextIO, TextIO], int]
if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _seconds(text: str) -> float:
    """A positive, finite number of seconds (float() takes 'nan' and 'inf')."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of command `only` alone (`_command`): each parser
    argparse makes costs a few gettext look-ups, ~7% of a `scan` of an empty procfs."""
    p = argparse.ArgumentParser(prog="nodewarden", description="Node runtime security agent: "
                                "judges processes and connections against YAML rules.")
    p.add_argument("--version", action="version", version=f"nodewarden {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, add in _SUBPARSERS.items():
        if only is None or name == only:
            add(sub)
    return p


def _rules_opt(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--rules", nargs="+", action="extend", metavar="PATH",
                    help="rule files or directories (default: the shipped rules)")


def _run_parser(sub: Subparsers) -> None:
    run = sub.add_parser("run", help="the agent: watch this host and judge what happens")
    run.add_argument("--config", help="YAML config file")
    _rules_opt(run)
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


def _scan_parser(sub: Subparsers) -> None:
    scan = sub.add_parser("scan", help="one procfs pass, judged and reported; never kills")
    _rules_opt(scan)
    scan.add_argument("--proc-root", default="/proc")
    scan.add_argument("--config", help="YAML config file (markers, protected names)")
    scan.add_argument("--format", choices=("table", "json"), default="table")


def _rules_parser(sub: Subparsers) -> None:
    rules = sub.add_parser("rules", help="check or test rule files")
    rsub = rules.add_subparsers(dest="rules_command", required=True, metavar="SUBCOMMAND")
    rc = rsub.add_parser("check", help="validate rule files")
    rc.add_argument("paths", nargs="*", metavar="PATH")
    rt = rsub.add_parser("test", help="run the rules' example events")
    rt.add_argument("paths", nargs="*", metavar="PATH")
    rt.add_argument("--verbose", action="store_true", help="list passing examples too")


def _replay_parser(sub: Subparsers) -> None:
    rp = sub.add_parser("replay", help="judge recorded events (backtest a rule set)")
    rp.add_argument("file", metavar="EVENTS.jsonl")
    _rules_opt(rp)
    rp.add_argument("--format", choices=("table", "json"), default="table")
    rp.add_argument("--config", help="YAML config file")


# in the order `nodewarden --help` lists them
_SUBPARSERS: dict[str, Callable[[Subparsers], None]] = {
    "run": _run_parser, "scan": _scan_parser, "rules": _rules_parser, "replay": _replay_parser}


def _command(argv: Sequence[str]) -> str | None:
    """The command `argv` names, when it is plain to see: its first word, after nothing but
    -v/--verbose. None otherwise (help, --version, a word that is no command, an option
    argparse might expand): then every command's parser is made, as for help."""
    for word in argv:
        if word in ("-v", "--verbose"):
            continue
        return word if word in _SUBPARSERS else None
    return None


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
    words = sys.argv[1:] if argv is None else argv
    args = _parser(_command(words)).parse_args(words)
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
