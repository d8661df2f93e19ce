"""The host's cgroup hierarchy as a container kill needs it: where a cgroup is, what it holds.

/proc/PID/cgroup (parsed by agent.sources.procfs) names a process's cgroups as the agent's
own cgroup namespace sees them; this module finds the directory of such a path under the
host hierarchy mounted at `root` (/sys/fs/cgroup, or a test's temporary directory laid out
like it), lists its processes (`cgroup.procs`) and kills it whole (`cgroup.kill`, v2).

A directory found by searching (the agent in a cgroup namespace of its own) counts only
if the process is in it: a container kill never lands on a cgroup the process is not in.
"""

from __future__ import annotations

import os
from pathlib import Path

# the v1 hierarchies whose cgroup of a container lists its processes (any one will do)
V1_CONTROLLERS = ("pids", "freezer", "memory", "name=systemd")
# bound on the directories searched for a path seen from inside a cgroup namespace
MAX_SEARCH_DIRS = 20000


def usable_v1(controllers: str) -> bool:
    """Whether the v1 hierarchy of `controllers` (as /proc/PID/cgroup names it) is one a
    container's processes are listed in."""
    return controllers in V1_CONTROLLERS or "pids" in controllers


def _below_namespace(path: str) -> tuple[int, Path]:
    """How many `..` lead out of the agent's cgroup namespace, and the path below them."""
    parts = [p for p in path.split("/") if p]
    ups = 0
    while parts and parts[0] == "..":
        parts.pop(0)
        ups += 1
    return ups, Path(*parts) if parts else Path()


def _holds(d: Path, pid: int) -> bool:
    try:
        return str(pid) in (d / "cgroup.procs").read_text().split()
    except OSError:
        return False


def _subdirs(base: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(base) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def host_dir(mount: Path, path: str, pid: int, max_dirs: int = MAX_SEARCH_DIRS) -> Path | None:
    """The directory of cgroup `path` (as /proc/PID/cgroup shows it to the agent) under
    the host hierarchy mounted at `mount`.

    In a pod the agent usually has a cgroup namespace of its own, so other containers'
    paths read relative to it, as `/../../kubepods-besteffort.slice/...`. How far up
    the namespace root sits is not visible, so the path below the `..`s is searched
    for (breadth first, bounded), and a candidate counts only if `pid` is in it."""
    ups, rel = _below_namespace(path)
    if ups == 0:
        return mount / rel
    frontier, seen = [mount], 0
    while frontier and seen < max_dirs:
        nxt: list[Path] = []
        for base in frontier:
            if _holds(base / rel, pid):
                return base / rel
            subdirs = _subdirs(base)
            seen += len(subdirs)
            nxt.extend(subdirs)
        frontier = nxt
    return None


class CgroupFS:
    """The cgroup hierarchy mounted at `root` (v2, or v1 with the unified one beside it)."""

    def __init__(self, root: str = "/sys/fs/cgroup") -> None:
        self.root = Path(root)

    def _v2_mount(self) -> Path:
        # hybrid hosts mount the unified hierarchy at <root>/unified
        unified = self.root / "unified"
        return unified if (unified / "cgroup.procs").exists() else self.root

    def kill_file(self, v2_path: str, pid: int) -> Path | None:
        """The `cgroup.kill` of v2 cgroup `v2_path` of process `pid`, when there is one."""
        d = host_dir(self._v2_mount(), v2_path, pid)
        if d is None or not (d / "cgroup.kill").exists():
            return None
        return d / "cgroup.kill"

    def v1_procs(self, controllers: str, path: str, pid: int) -> list[int]:
        """The pids in the v1 cgroup `path` of hierarchy `controllers` of process `pid`."""
        d = host_dir(self.root / controllers.removeprefix("name="), path, pid)
        try:
            text = (d / "cgroup.procs").read_text() if d is not None else ""
        except OSError:
            return []
        return [int(x) for x in text.split() if x.isdigit()]
