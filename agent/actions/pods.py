"""The `delete-pod` action: after the process is killed, delete its pod through the API.

Off unless the config says `delete_pod: true` (and the chart then grants pods delete), and
only in enforce mode (audit decisions never reach an enforcer).

Never the wrong pod: the delete carries a uid precondition, so a pod recreated under the
same name (a StatefulSet's, or a workspace restarted by its controller) is refused by the
API server with 409 Conflict rather than deleted. Pods of protected namespaces (by default
kube-system) are never deleted.

Deletes run in a worker thread: an API server that is slow or down must not hold up the
agent's loop, which has already stopped the threat by killing the process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from cachetools import TTLCache

from agent.kubeapi import TIMEOUTS, Kube, status_of
from agent.metrics import Metrics
from agent.model import Pod
from agent.sinks.base import QueuedDelivery, Result

if TYPE_CHECKING:
    from agent.config import Config

log = logging.getLogger("nodewarden.actions")


class PodDeleter(QueuedDelivery[Pod]):
    """Deletes pods, each at most once, with a uid precondition, from its own thread."""

    def __init__(self, api: Any, metrics: Metrics | None = None, grace_seconds: int = 1,
                 protected_namespaces: Collection[str] = ("kube-system",),
                 queue_size: int = 256, attempts: int = 3, rate: float = 10.0,
                 burst: float = 20.0) -> None:
        self.api = api
        self.grace_seconds = grace_seconds
        self.protected_namespaces = frozenset(protected_namespaces)
        # uids deleted or being deleted: a pod is asked to go once (a failure may be retried
        # by the next finding); bounded, and forgotten after an hour
        self._requested: TTLCache[str, bool] = TTLCache(maxsize=4096, ttl=3600)
        self._lock = threading.Lock()
        if metrics is not None:
            metrics.watch_caches({"pod_deletes": lambda: self._requested})
        super().__init__("delete-pod", metrics, rate=rate, burst=burst, queue_size=queue_size,
                         max_attempts=attempts, backoff=1.0)

    @classmethod
    def open(cls, kube: Kube, cfg: Config, metrics: Metrics | None) -> PodDeleter:
        """The deleter the config asks for (`delete_pod_*` keys) on this API connection."""
        return cls(kube.api, metrics, cfg.delete_pod_grace_seconds,
                   cfg.delete_pod_protected_namespaces)

    def reconfigure(self, cfg: Config) -> None:
        """Follow a reloaded config's grace period and protected namespaces."""
        self.grace_seconds = cfg.delete_pod_grace_seconds
        self.protected_namespaces = frozenset(cfg.delete_pod_protected_namespaces)

    def request(self, pod: Pod) -> str:
        """Queue the deletion of `pod`; returns what the finding should say about it."""
        where = f"{pod.namespace}/{pod.name}"
        if pod.namespace in self.protected_namespaces:
            return f"pod {where} not deleted: namespace {pod.namespace} is protected"
        with self._lock:
            if pod.uid in self._requested:
                return f"pod {where} deletion already requested"
            self._requested[pod.uid] = True
        if not self.enqueue(pod):
            with self._lock:
                self._requested.pop(pod.uid, None)
            return f"pod {where} not deleted: too many deletions pending"
        return f"pod {where} deletion requested"

    def deliver(self, item: Pod, timeout: float) -> Result:
        """DELETE the pod with a uid precondition; gone (404) and replaced (409) are done."""
        pod = item
        where = f"{pod.namespace}/{pod.name}"
        body = {"gracePeriodSeconds": self.grace_seconds, "preconditions": {"uid": pod.uid}}
        try:
            self.api.delete_namespaced_pod(pod.name, pod.namespace, body=body,
                                           _request_timeout=(min(TIMEOUTS[0], timeout),
                                                             min(TIMEOUTS[1], timeout)))
            log.warning("deleted pod %s (uid %s)", where, pod.uid)
            return Result.done("deleted")
        except Exception as e:  # noqa: BLE001 - the client raises several kinds
            status = status_of(e)
        if status == 404:
            log.info("pod %s was already gone", where)
            return Result.done("gone")
        if status == 409:
            log.warning("pod %s was not deleted: it is another pod now (uid changed)", where)
            return Result.done("gone")
        if status in (401, 403):
            log.error("deleting pod %s refused (HTTP %d): the ServiceAccount needs pods "
                      "delete (chart value deletePod: true)", where, status)
            return Result.drop("failed")
        return Result.retry(f"deleting pod {where}: " +
                            (f"HTTP {status}" if status else "no answer"))

    def count_done(self, item: Pod, label: str) -> None:
        """actions_total{action="delete-pod", outcome="deleted"|"gone"}."""
        if self.metrics is not None:
            self.metrics.actions.labels(action="delete-pod", outcome=label).inc()

    def count_dropped(self, reason: str, n: int = 1) -> None:
        """A deletion not done is a failed action, whatever the reason."""
        if self.metrics is not None:
            self.metrics.actions.labels(action="delete-pod", outcome="failed").inc(n)

    def gave_up(self, item: Pod, reason: str) -> None:
        """The next finding about this pod tries again."""
        with self._lock:
            self._requested.pop(item.uid, None)
