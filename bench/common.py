"""What every benchmark script reports the same way: the machine, and cProfile excerpts."""

from __future__ import annotations

import io
import os
import platform
import pstats
from datetime import UTC, datetime
from typing import Any


def machine(**extra: Any) -> dict[str, Any]:
    """Date, CPUs, kernel and Python of this run, plus the script's own `extra` versions."""
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "nproc": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), **extra,
            "affinity": sorted(os.sched_getaffinity(0))}


def pstats_top(stats: pstats.Stats, top: int) -> str:
    """The `top` costliest functions by own time, as pstats prints them, header trimmed."""
    buf = io.StringIO()
    stats.stream = buf  # type: ignore[attr-defined]
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    lines = buf.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    head = [line for line in lines[:start] if "function calls" in line]
    return "\n".join(head + lines[start:]).rstrip()
