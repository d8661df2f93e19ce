"""cgroup v2 ids to cgroup paths, for a process gone before /proc/PID/cgroup could be read.

An exec record carries `bpf_get_current_cgroup_id()`: the id of the process's cgroup in
the unified (v2) hierarchy, which is the inode number of that cgroup's directory under the
cgroup2 mount. A process killed in the kernel at its exec (or one that exits at once) has
no /proc/PID/cgroup left when the agent looks, but its cgroup's directory is still there
(a container's cgroup lives as long as the container): walking the mount for the directory
with that inode gives the path, and the path names the container and the pod on every
kubelet-shaped host, hybrid (v1 controllers plus unified) ones included.

One walk records every directory it passes (bounded), so a node's containers cost one walk
between them; an id not found is remembered as such (ids are not reused while the kernel
runs). Reading a directory listing is all it does: no file of the tenant's is opened.
"""

from __future__ import annotations

import os

from cachetools import LRUCache

# cgroup directories remembered, and looked at in one walk at most
MAX_PATHS = 16384
MAX_WALK = 65536


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> str:
    """Where the unified (cgroup2) hierarchy is mounted here; "" when it is not."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return ""
    for line in lines:
        fields, _, fs = line.partition(" - ")
        parts = fields.split()
        if fs.split(" ", 1)[0] == "cgroup2" and len(parts) > 4 and parts[3] == "/":
            return parts[4]
    return ""


class CgroupPaths:
    """Path (as /proc/PID/cgroup writes it: "/kubepods/...") of a cgroup v2 id."""

    def __init__(self, root: str | None = None, maxsize: int = MAX_PATHS,
                 max_walk: int = MAX_WALK) -> None:
        self.root = cgroup2_mount() if root is None else root
        self.max_walk = max_walk
        # id -> path ("" for an id no walk found)
        self._paths: LRUCache[int, str] = LRUCache(maxsize=maxsize)
        self.walks = 0

    def __len__(self) -> int:
        return len(self._paths)

    @property
    def maxsize(self) -> int:
        """At most this many ids are remembered."""
        return int(self._paths.maxsize)

    def path_of(self, cgroup_id: int) -> str:
        """The cgroup's path, "" when it cannot be found (no cgroup2 mount, or gone)."""
        if not cgroup_id or not self.root:
            return ""
        known = self._paths.get(cgroup_id)
        if known is not None:
            return known
        found = self._walk(cgroup_id)
        self._paths[cgroup_id] = found
        return found

    def _walk(self, wanted: int) -> str:
        """Every directory under the mount, remembered by inode, until `wanted` is met."""
        self.walks += 1
        stack = [(self.root, "")]
        seen = 0
        found = ""
        while stack and seen < self.max_walk:
            where, rel = stack.pop()
            try:
                with os.scandir(where) as entries:
                    for e in entries:
                        if not e.is_dir(follow_symlinks=False):
                            continue
                        seen += 1
                        path = f"{rel}/{e.name}"
                        ino = e.inode()
                        self._paths[ino] = path
                        if ino == wanted:
                            found = path
                        stack.append((e.path, path))
            except OSError:
                continue  # removed meanwhile, or not readable
        return found
