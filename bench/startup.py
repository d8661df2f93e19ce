"""`nodewarden scan` start-up on an empty procfs in instructions (issue 10, target 7: <= 2.5x
`python -c pass`), counted by callgrind, so the figure does not move with the machine's load.

    .venv/bin/python bench/startup.py [--vs OTHER_CHECKOUT] [--runs 2]

Each command runs once to warm the caches (bytecode compiled as pip would; the rule parse
and rule-set caches filled, as on a node after its first command), then `--runs` times
under `valgrind --tool=callgrind --dump-instr=no`; the minimum is reported. `--vs` counts the
same scan of another checkout (its own .venv) in the same run. Wall time: bench/scan.py
--startup-only.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def instructions(argv: list[str], cwd: str) -> int:
    """Instructions callgrind counts for one run of `argv` (which must exit 0 or 1)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(["valgrind", "--tool=callgrind", "--dump-instr=no",
                              f"--callgrind-out-file={tmp}/cg.out", *argv], cwd=cwd,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    found = _REFS.search(out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count for {argv}: {out.stderr[-500:]}")
    return int(found.group(1).replace(",", ""))


def main() -> int:
    """Count and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vs", metavar="CHECKOUT", help="another checkout to count the same scan of")
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    repo = os.path.dirname(HERE)
    empty = tempfile.mkdtemp(prefix="nodewarden-empty-proc-")
    env_note = "PYTHONDONTWRITEBYTECODE" in os.environ
    rows: list[tuple[str, list[str], str]] = [
        ("`python -c pass`", [sys.executable, "-c", "pass"], repo),
        ("`nodewarden scan --proc-root EMPTY`",
         [sys.executable, "-m", "agent", "scan", "--proc-root", empty], repo)]
    if args.vs:
        python = os.path.join(args.vs, ".venv", "bin", "python")
        rows.append((f"the same, {args.vs}",
                     [python, "-m", "agent", "scan", "--proc-root", empty], args.vs))
    counts: dict[str, int] = {}
    for name, argv, cwd in rows:
        subprocess.run([argv[0], "-m", "compileall", "-q", os.path.join(cwd, "agent")],
                       cwd=cwd, stdout=subprocess.DEVNULL, check=False)
        subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False)
        counts[name] = min(instructions(argv, cwd) for _ in range(args.runs))
    base = counts[rows[0][0]]
    print(f"### start-up in instructions (callgrind, min of {args.runs}; "
          f"bytecode compiled{' (PYTHONDONTWRITEBYTECODE set)' if env_note else ''})\n")
    print("| command | instructions | / `python -c pass` |")
    print("|---|---:|---:|")
    for name, _, _ in rows:
        print(f"| {name} | {counts[name]:,} | {counts[name] / base:.2f}x |")
    os.rmdir(empty)
    return 0


if __name__ == "__main__":
    sys.exit(main())
