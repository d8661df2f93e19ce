"""Container id from the text of /proc/PID/cgroup (pure).

Covers the shapes the container runtimes leave there, for both cgroup drivers and both
cgroup versions, e.g.::

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
from functools import lru_cache

_PREFIXES = ("docker-", "cri-containerd-", "crio-", "libpod-", "containerd-")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_QOS = ("burstable", "besteffort", "guaranteed")
_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
                      r"(?:\.slice)?$")


@lru_cache(maxsize=4096)
def cgroup_identity(text: str) -> tuple[str, str]:
    """(container id, pod uid) of a process from its cgroup text; "" for what is absent.

    Cached: the processes of a host share a few distinct cgroup texts, and parsing one
    costs about as much as reading it."""
    return container_id_from_cgroup(text), pod_uid_from_cgroup(text)


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
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        found = _id_from_path(parts[2])
        if not found:
            continue
        if parts[0] == "0" and parts[1] == "":
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
