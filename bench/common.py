"""What every benchmark script does the same way: report the machine and cProfile excerpts,
and load CPUs with hogs."""

from __future__ import annotations

import contextlib
import io
import os
import platform
import pstats
import signal
import subprocess
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


class Hogs:
    """A busy shell loop pinned to each CPU, at normal priority whatever the bench's (the
    latency benches run in SCHED_FIFO), killed by stop() or when the bench dies. Started
    through setpriv, chrt and taskset rather than a preexec_fn: the bench has threads."""

    def __init__(self, cpus: list[int]) -> None:
        self.cpus = cpus
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for cpu in self.cpus:
            self.procs.append(subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", "chrt", "-o", "0", "taskset", "-c", str(cpu),
                 "sh", "-c", "while :; do :; done"], start_new_session=True))

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        self.procs.clear()
