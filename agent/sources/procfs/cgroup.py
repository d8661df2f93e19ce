"""The text of /proc/PID/cgroup (pure): the process's cgroup paths, container id, pod uid.

One parser for every reader: the process reader takes the container id and pod uid from
it, the container kill (agent/actions/kill.py) the v2 path and the v1 controller paths.
Each line is `hierarchy-id:controllers:path`; the unified (v2) hierarchy is `0::path`.

Container ids cover the shapes the container runtimes leave there, for both cgroup drivers
and both cgroup versions, e.g.::

    0::/system.slice/docker-<64 hex>.scope                                 docker, systemd, v2
    0::/docker/<64 hex>                                                    docker, cgroupfs, v2
    0::/kubepods.slice/.../cri-containerd-<64 hex>.scope                   containerd, systemd
    0::/kubepods/burstable/pod<uid>/<64 hex>                               kubelet cgroupfs
    0::/kubepods.slice/.../crio-<64 hex>.scope                             cri-o, systemd
    12:memory:/docker/<64 hex>                                             docker, v1

Nested runtimes (docker in docker) yield the innermost id: the last one in the path.

Kubelet also names the pod's own cgroup after the pod uid (`pod<uid>`, with `_` for `-`
under the systemd driver). The uid is known to the API server before any container of the
pod starts, so it resolves a pod even when the container id is not yet in the pod's status.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from agent.text import decode

_PREFIXES = ("docker-", "cri-containerd-", "crio-", "libpod-", "containerd-")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_QOS = ("burstable", "besteffort", "guaranteed")
_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}"
                      r"[-_][0-9a-f]{12})(?:\.slice)?$")


@dataclass(frozen=True, slots=True)
class Cgroup:
    """What /proc/PID/cgroup says about one process; "" and () for what is absent."""

    # the path in the unified (v2) hierarchy, e.g. /system.slice/docker-<id>.scope
    v2: str = ""
    # (controllers, path) of each v1 hierarchy in file order, e.g. ("name=systemd", "/x")
    v1: tuple[tuple[str, str], ...] = ()
    container_id: str = ""
    pod_uid: str = ""


def _lines(text: str) -> list[tuple[str, str, str]]:
    """(hierarchy id, controllers, path) of each well-formed line."""
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out.append((parts[0], parts[1], parts[2]))
    return out


def parse_cgroup(text: str) -> Cgroup:
    """Parse the text of /proc/PID/cgroup (uncached: readers go through `CGROUPS`)."""
    v2 = ""
    v1 = []
    for hid, controllers, path in _lines(text):
        if hid == "0" and controllers == "":
            v2 = path
        else:
            v1.append((controllers, path))
    return Cgroup(v2, tuple(v1), container_id_from_cgroup(text), pod_uid_from_cgroup(text))


def same_in_v2_cgroup(cg: Cgroup) -> bool:
    """Whether every process of `cg`'s cgroup v2 (unified) path has `cg`'s container id and
    pod uid, so they may be remembered by that cgroup's id (what an exec record carries).

    On a v2-only host the file is the v2 path and nothing else. On a mixed host (v1
    controllers beside the unified hierarchy) the v1 paths can tell processes of one v2
    cgroup apart (docker's cgroupfs driver leaves its containers in the v2 cgroup of the
    daemon, `/` on some hosts, and names them in the v1 paths only): it holds there only
    when the v2 path itself names a container (whose id then wins over the v1 ones) and
    gives the pod uid the whole file gives. Moving a process into another pod's v1 cgroup
    alone takes write access to the host's v1 hierarchies."""
    if not cg.v2:
        return False
    if not cg.v1:
        return True
    return (bool(cg.container_id) and _id_from_path(cg.v2) == cg.container_id
            and pod_uid_from_cgroup(f"0::{cg.v2}") == cg.pod_uid)


def pod_uid_from_cgroup(text: str) -> str:
    """The uid of the Kubernetes pod whose cgroup holds the process, or "".

    Only the kubelet's own pod cgroup counts: the `pod<uid>` component must come first
    below the kubepods hierarchy (`kubepods[.slice]`, its QoS level, or `kubelet.slice`
    as kind names it). A container that can make cgroups below its own (privileged, or
    docker-in-docker on a CI runner) could name one `pod<another pod's uid>`; that one
    sits below a container's cgroup and is not taken.
    """
    for line in text.splitlines():
        parts = [c for c in line.split(":", 2)[-1].split("/") if c]
        while parts and parts[0] == "..":   # relative to the agent's cgroup namespace
            parts.pop(0)
        for comp in parts[:5]:
            m = _POD_UID.search(comp)
            if m and ("kubepods" in comp or comp.startswith("pod")):
                return m.group(1).replace("_", "-")
            if not ("kubepods" in comp or comp in _QOS or comp == "kubelet.slice"):
                break
    return ""


def container_id_from_cgroup(text: str) -> str:
    """The container id of a process, or "" when it runs in no container."""
    v2 = ""
    v1 = ""
    for hid, controllers, path in _lines(text):
        found = _id_from_path(path)
        if not found:
            continue
        if hid == "0" and controllers == "":
            v2 = found
        elif not v1:
            v1 = found
    return v2 or v1


def _id_from_path(path: str) -> str:
    for comp in reversed(path.split("/")):
        comp = comp.removesuffix(".scope")
        if comp.startswith("crio-conmon-"):
            # the conmon monitor of a cri-o container, not the container itself
            continue
        for prefix in _PREFIXES:
            if comp.startswith(prefix):
                comp = comp[len(prefix):]
                break
        if len(comp) == 64 and _HEX64.fullmatch(comp):
            return comp
    return ""


class CgroupCache:
    """Parsed /proc/PID/cgroup files by their bytes, at most `maxsize` of them (the oldest
    is dropped first).

    The processes of a host share a few distinct cgroup files, and parsing one costs about
    as much as reading it, so a scan parses each distinct one once. A tenant that makes
    cgroups by the thousand only cycles the cache: its size is bounded and on /metrics
    (`nodewarden_cache_entries{cache="cgroups"}`)."""

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._parsed: dict[bytes, Cgroup] = {}
        self._lock = threading.Lock()  # scans may run off the event thread

    def __len__(self) -> int:
        return len(self._parsed)

    def get(self, data: bytes) -> Cgroup | None:
        """The Cgroup of these bytes if parsed already (a dict lookup, no call of `parse`:
        a first scan asks once per process)."""
        return self._parsed.get(data)

    def parse(self, data: bytes) -> Cgroup:
        """The Cgroup of the bytes of a /proc/PID/cgroup file."""
        found = self._parsed.get(data)
        if found is not None:
            return found
        parsed = parse_cgroup(decode(data))
        with self._lock:
            while len(self._parsed) >= self.maxsize:
                del self._parsed[next(iter(self._parsed))]
            self._parsed[data] = parsed
        return parsed

    def clear(self) -> None:
        """Forget every parsed file."""
        with self._lock:
            self._parsed.clear()


# the one cache of every ProcFS
CGROUPS = CgroupCache()
