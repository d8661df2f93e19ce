"""Pods on this node, by container id and pod uid (pure: objects in, `Pod`s out).

The Kubernetes watcher (agent/sources/kubepods.py) feeds pod objects, as the API server's
JSON, into a `PodIndex`; the process tree asks it which pod a container belongs to.

Why keep a deleted pod for a while: the kernel reports a process's exit, its last
connections and our kill's aftermath after the kubelet has already told the API server
the pod is gone, and a finding about a just-deleted pod must still name it. Why also
index by pod uid: the kubelet names the pod's cgroup after the uid before any container
starts, while a container id only appears in the pod's status after the container runs,
so the first exec in a new container resolves by uid.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from agent.model import Pod

# how long a deleted pod (or a container id the pod's status no longer lists) still resolves
DEFAULT_GRACE = 60.0
# pods held, deleted ones kept for `grace` included: past it the deleted ones that expire
# first go early (a node runs at most a few hundred pods; churn must not grow the index)
MAX_PODS = 4096
_STATUS_LISTS = ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")
_FOREVER = float("inf")


def container_ids(obj: dict[str, Any]) -> set[str]:
    """The container ids of a pod object: running, init and ephemeral containers, and the
    previous instance of each restarted container ("containerd://<id>" -> "<id>")."""
    status = obj.get("status") or {}
    out: set[str] = set()
    for key in _STATUS_LISTS:
        for cs in status.get(key) or ():
            if not isinstance(cs, dict):
                continue
            for cid in (cs.get("containerID"),
                        ((cs.get("lastState") or {}).get("terminated") or {}).get("containerID")):
                if isinstance(cid, str) and cid:
                    out.add(cid.rpartition("://")[2])
    return out


def pod_from(obj: dict[str, Any]) -> Pod:
    """The part of a pod object a finding carries: never its spec (env, secrets)."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    return Pod(namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")),
               uid=str(meta.get("uid", "")),
               labels=({str(k): str(v) for k, v in labels.items()}
                       if isinstance(labels, dict) else {}))


class PodIndex:
    """Pods by uid and container id; thread-safe (the watcher writes, the agent reads).

    A deleted pod, a pod missing from a relist, and a container id that left a pod's status
    all keep resolving for `grace` seconds, then are forgotten.
    """

    def __init__(self, grace: float = DEFAULT_GRACE,
                 clock: Callable[[], float] = time.monotonic, maxsize: int = MAX_PODS) -> None:
        self.grace = grace
        self.clock = clock
        self.maxsize = maxsize
        self._lock = threading.Lock()
        self._pods: dict[str, Pod] = {}
        self._pod_expiry: dict[str, float] = {}
        self._ids: dict[str, set[str]] = {}          # pod uid -> its container ids
        self._owner: dict[str, str] = {}             # container id -> pod uid
        self._id_expiry: dict[str, float] = {}
        self._next_prune = 0.0

    def __len__(self) -> int:
        """Live pods (not counting deleted ones kept for late events)."""
        with self._lock:
            return sum(1 for e in self._pod_expiry.values() if e == _FOREVER)

    def held(self) -> int:
        """Pods held, deleted ones still resolving included (at most `maxsize`)."""
        return len(self._pods)

    def upsert(self, obj: dict[str, Any]) -> None:
        """A pod was added or changed."""
        pod = pod_from(obj)
        if not pod.uid:
            return
        ids = container_ids(obj)
        now = self.clock()
        with self._lock:
            self._pods[pod.uid] = pod
            self._pod_expiry[pod.uid] = _FOREVER
            for old in self._ids.get(pod.uid, set()) - ids:
                self._id_expiry[old] = now + self.grace
            for cid in ids:
                self._owner[cid] = pod.uid
                self._id_expiry[cid] = _FOREVER
            self._ids[pod.uid] = ids
            self._prune(now)
            if len(self._pods) > self.maxsize:
                self._shed()

    def delete(self, obj: dict[str, Any]) -> None:
        """A pod was deleted: it keeps resolving for `grace` seconds."""
        uid = str((obj.get("metadata") or {}).get("uid", ""))
        with self._lock:
            self._retire(uid, self.clock())

    def replace(self, objs: Iterable[dict[str, Any]]) -> None:
        """A full list: pods not in it were deleted while we were not watching."""
        objs = list(objs)
        listed = {str((o.get("metadata") or {}).get("uid", "")) for o in objs}
        now = self.clock()
        with self._lock:
            for uid, exp in list(self._pod_expiry.items()):
                if exp == _FOREVER and uid not in listed:
                    self._retire(uid, now)
        for o in objs:
            self.upsert(o)

    def lookup(self, container_id: str, pod_uid: str = "") -> Pod | None:
        """The pod of a process from its container id and the pod uid of its kubelet cgroup.

        The kubelet's pod uid wins when the two disagree: a container that can make its
        own sub-cgroups can name one after another pod's container id, but it cannot move
        above its own pod's cgroup. The container id answers when there is no pod uid
        (kubelets without per-pod cgroups)."""
        now = self.clock()
        with self._lock:
            uid = self._owner.get(container_id) if container_id else None
            if uid is not None and self._id_expiry.get(container_id, 0.0) < now:
                uid = None
            uid = pod_uid or uid
            if not uid or self._pod_expiry.get(uid, 0.0) < now:
                return None
            return self._pods.get(uid)

    def _retire(self, uid: str, now: float) -> None:
        if uid not in self._pods:
            return
        self._pod_expiry[uid] = min(self._pod_expiry[uid], now + self.grace)
        for cid in self._ids.get(uid, ()):
            self._id_expiry[cid] = min(self._id_expiry.get(cid, _FOREVER), now + self.grace)
        self._prune(now)

    def _shed(self) -> None:
        """Over `maxsize`: forget the deleted pods that expire first, then (never on a real
        node) the oldest live ones."""
        excess = len(self._pods) - self.maxsize
        for uid in heapq.nsmallest(excess, self._pod_expiry, key=self._pod_expiry.__getitem__):
            self._forget(uid)

    def _forget(self, uid: str) -> None:
        self._pod_expiry.pop(uid, None)
        self._pods.pop(uid, None)
        for cid in self._ids.pop(uid, ()):
            self._owner.pop(cid, None)
            self._id_expiry.pop(cid, None)

    def _prune(self, now: float) -> None:
        """Forget what expired; at most once a second, so a busy watch costs no sweeps."""
        if now < self._next_prune:
            return
        self._next_prune = now + 1.0
        for cid in [c for c, e in self._id_expiry.items() if e < now]:
            del self._id_expiry[cid]
            uid = self._owner.pop(cid, "")
            ids = self._ids.get(uid)
            if ids is not None:
                ids.discard(cid)
        for uid in [u for u, e in self._pod_expiry.items() if e < now]:
            self._forget(uid)
