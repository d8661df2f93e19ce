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


# A C loop of argv[1] open(O_RDONLY)+close of argv[2]/file-0..99 (file_cost, bpf_cost)
OPENLOOP_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    char path[100][512];
    for (int i = 0; i < 100; i++)
        snprintf(path[i], sizeof(path[i]), "%s/file-%d", argv[2], i);
    for (long i = 0; i < n; i++) {
        int fd = open(path[i % 100], O_RDONLY);
        if (fd < 0) { perror("open"); return 1; }
        close(fd);
    }
    return 0;
}
"""
