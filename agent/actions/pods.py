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
import queue
import threading
import time
from collections.abc import Collection
from typing import Any

from cachetools import TTLCache

from agent.kubeapi import TIMEOUTS, status_of
from agent.metrics import Metrics
from agent.model import Pod

log = logging.getLogger("nodewarden.actions")


class PodDeleter:
    """Deletes pods, each at most once, with a uid precondition, from its own thread."""

    def __init__(self, api: Any, metrics: Metrics | None = None, grace_seconds: int = 1,
                 protected_namespaces: Collection[str] = ("kube-system",),
                 queue_size: int = 256, attempts: int = 3) -> None:
        self.api = api
        self.metrics = metrics
        self.grace_seconds = grace_seconds
        self.protected_namespaces = frozenset(protected_namespaces)
        self.attempts = attempts
        # uids deleted or being deleted: a pod is asked to go once (a failure may be retried
        # by the next finding); bounded, and forgotten after an hour
        self._requested: TTLCache[str, bool] = TTLCache(maxsize=4096, ttl=3600)
        self._lock = threading.Lock()
        self._queue: queue.Queue[Pod | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="pod-deleter", daemon=True)
        self._thread.start()

    def request(self, pod: Pod) -> str:
        """Queue the deletion of `pod`; returns what the finding should say about it."""
        where = f"{pod.namespace}/{pod.name}"
        if pod.namespace in self.protected_namespaces:
            return f"pod {where} not deleted: namespace {pod.namespace} is protected"
        with self._lock:
            if pod.uid in self._requested:
                return f"pod {where} deletion already requested"
            try:
                self._queue.put_nowait(pod)
            except queue.Full:
                self._count("failed")
                return f"pod {where} not deleted: too many deletions pending"
            self._requested[pod.uid] = True
        return f"pod {where} deletion requested"

    def _run(self) -> None:
        while True:
            pod = self._queue.get()
            if pod is None:
                return
            outcome = self._delete(pod)
            if outcome == "failed":
                with self._lock:
                    self._requested.pop(pod.uid, None)   # the next finding tries again
            self._count(outcome)
            self._queue.task_done()

    def _delete(self, pod: Pod) -> str:
        where = f"{pod.namespace}/{pod.name}"
        body = {"gracePeriodSeconds": self.grace_seconds, "preconditions": {"uid": pod.uid}}
        for attempt in range(1, self.attempts + 1):
            try:
                self.api.delete_namespaced_pod(pod.name, pod.namespace, body=body,
                                               _request_timeout=TIMEOUTS)
                log.warning("deleted pod %s (uid %s)", where, pod.uid)
                return "deleted"
            except Exception as e:  # noqa: BLE001 - the client raises several kinds
                status = status_of(e)
            if status == 404:
                log.info("pod %s was already gone", where)
                return "gone"
            if status == 409:
                log.warning("pod %s was not deleted: it is another pod now (uid changed)", where)
                return "gone"
            if status in (401, 403):
                log.error("deleting pod %s refused (HTTP %d): the ServiceAccount needs pods "
                          "delete (chart value deletePod: true)", where, status)
                return "failed"
            log.warning("deleting pod %s failed (%s), attempt %d/%d", where,
                        f"HTTP {status}" if status else "no answer", attempt, self.attempts)
            if attempt < self.attempts:
                time.sleep(attempt)
        return "failed"

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.actions.labels(action="delete-pod", outcome=outcome).inc()

    def close(self, deadline: float = 5.0) -> None:
        """Let queued deletions finish for up to `deadline` seconds."""
        try:
            self._queue.put(None, timeout=deadline)
        except queue.Full:
            return
        self._thread.join(timeout=deadline)
