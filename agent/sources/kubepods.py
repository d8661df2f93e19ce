"""The pods of this node, from the API server: list, then watch, into a `PodIndex`.

Only this node's pods are asked for (field selector spec.nodeName), so the API server's
cost and ours do not grow with the cluster. The loop is the informer pattern of client-go
reduced to one resource:

- list, and replace the index with the answer; remember its resourceVersion;
- watch from that resourceVersion (bookmarks on), applying ADDED, MODIFIED and DELETED;
  when the server ends the watch (its timeout), watch again from the last version seen;
- 410 Gone (the version fell out of etcd's window) means events were missed: list again;
- any other failure: back off (1 s doubling to 30 s) and resume from the last version.

Objects stay JSON dicts (`Watch(return_type="object")`, a raw list): the typed models would
cost a deserialization per object and we read four fields.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from agent.enrich.pods import PodIndex
from agent.kubeapi import TIMEOUTS, status_of
from agent.metrics import Metrics

log = logging.getLogger("nodewarden.kubernetes")

WATCH_SECONDS = 300       # the server ends each watch after this; we then watch again
MAX_BACKOFF = 30.0


class PodsAPI(Protocol):
    """The call of the Kubernetes CoreV1Api the watcher makes (listed, or streamed by a
    watch); its answers are raw JSON, so they stay `Any`."""

    def list_pod_for_all_namespaces(self, **kwargs: Any) -> Any:
        """List (or, through a Watch, stream) pods across namespaces."""
        ...


class _Stoppable(Protocol):
    def stop(self) -> None: ...


class PodWatcher:
    """Keeps `index` equal to the API server's view of this node's pods, in a thread."""

    def __init__(self, api: PodsAPI, node: str, index: PodIndex, metrics: Metrics | None = None,
                 watch_seconds: int = WATCH_SECONDS, sleep: Callable[[float], bool] | None = None
                 ) -> None:
        self.api = api
        self.node = node
        self.index = index
        self.metrics = metrics
        self.watch_seconds = watch_seconds
        self.resource_version = ""
        self.lists = 0
        self.synced = threading.Event()   # set after the first successful list
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._watch: _Stoppable | None = None
        self._thread: threading.Thread | None = None
        self._denied_logged = False
        if metrics is not None:
            metrics.watch_caches({"pods": lambda: _Held(index)})

    @property
    def selector(self) -> str:
        """The field selector of this node's pods."""
        return f"spec.nodeName={self.node}"

    def start(self) -> None:
        """Run the list-and-watch loop in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="pod-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the loop, and the watch under way at once."""
        self._stop.set()
        w = self._watch
        if w is not None:
            w.stop()  # shuts the streaming socket down, so the thread ends now

    def run(self) -> None:
        """The thread's loop: list, watch, watch again, until `stop`; every failure is
        retried after a back-off, so the thread never dies."""
        backoff = 1.0
        gone_streak = 0
        while not self._stop.is_set():
            try:
                if not self.resource_version:
                    self.list()
                if self._stop.is_set():
                    break
                started = time.monotonic()
                seen = self.watch()
                gone_streak = 0
                if seen or time.monotonic() - started >= 1.0:
                    backoff = 1.0
                    continue
                # a watch that ends at once with nothing in it (a proxy, an API server
                # going down) is a failure: back off, as client-go does, instead of spinning
                self._count("watch_empty")
            except Exception as e:  # noqa: BLE001 - every failure is retried; the thread must not die
                if self._stop.is_set():
                    break
                if status_of(e) == 410:
                    self._expired()
                    gone_streak += 1
                    # a server that answers 410 to a fresh list's version too must not be
                    # hammered with lists: back off from the second one in a row
                    if gone_streak < 2:
                        continue
                else:
                    self._failed(e, backoff)
            if self._sleep(backoff):
                break
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _expired(self) -> None:
        """410 Gone: the version fell out of the server's window; list again."""
        log.info("pod watch: resourceVersion %s expired (410 Gone), listing again",
                 self.resource_version)
        self.resource_version = ""
        self._count("relist_gone")

    def _failed(self, e: Exception, backoff: float) -> None:
        """Any other failure: said once per kind (a refusal once for good), counted."""
        status = status_of(e)
        self._up(False)
        self._count(f"http_{status}" if status else "error")
        if status in (401, 403):
            if not self._denied_logged:
                log.error("pod watch refused (%d): the ServiceAccount needs pods get, "
                          "list and watch (see charts/nodewarden RBAC)", status)
                self._denied_logged = True
        else:
            log.warning("pod watch failed (%s), retrying in %.0fs", _describe(e), backoff)

    def list(self) -> None:
        """One full list of this node's pods into the index.

        The first list asks for resourceVersion "0": the API server answers from its watch
        cache instead of reading every pod of the cluster from etcd to filter by node
        (what an unversioned list costs before Kubernetes 1.31), which matters when every
        node of a cluster starts at once. A relist after 410 asks for the current state."""
        rv = "0" if self.lists == 0 else None
        resp = self.api.list_pod_for_all_namespaces(
            field_selector=self.selector, resource_version=rv, _preload_content=False,
            _request_timeout=TIMEOUTS)
        try:
            body = json.loads(resp.data)
        finally:
            resp.release_conn()
        items = body.get("items") or []
        self.index.replace(items)
        self.resource_version = str((body.get("metadata") or {}).get("resourceVersion", ""))
        self.lists += 1
        self._count("list")
        if not self.synced.is_set():
            log.info("pod enrichment on: %d pods on node %s", len(items), self.node)
        self.synced.set()
        self._up(True)
        self._pods()

    def watch(self) -> int:
        """One watch, from the last resourceVersion, until the server ends it; returns how
        many events it carried."""
        from kubernetes import watch

        w = watch.Watch(return_type="object")
        self._watch = w
        seen = 0
        try:
            for ev in w.stream(self.api.list_pod_for_all_namespaces,
                               field_selector=self.selector,
                               resource_version=self.resource_version,
                               allow_watch_bookmarks=True,
                               timeout_seconds=self.watch_seconds,
                               _request_timeout=(TIMEOUTS[0], self.watch_seconds + 30)):
                kind = ev.get("type")
                obj = ev.get("raw_object") or {}
                if kind in ("ADDED", "MODIFIED"):
                    self.index.upsert(obj)
                elif kind == "DELETED":
                    self.index.delete(obj)
                if w.resource_version:
                    self.resource_version = str(w.resource_version)
                if not seen:
                    self._up(True)      # the stream works again (a resumed watch)
                seen += 1
                self._pods()
                if self._stop.is_set():
                    w.stop()
        finally:
            self._watch = None
        return seen

    def _count(self, what: str) -> None:
        if self.metrics is not None:
            self.metrics.kube_requests.labels(what=what).inc()

    def _up(self, up: bool) -> None:
        if self.metrics is not None:
            self.metrics.sensor_up.labels(sensor="kubernetes").set(1 if up else 0)

    def _pods(self) -> None:
        if self.metrics is not None:
            self.metrics.pods.set(len(self.index))


class _Held:
    """The pod index as a cache for the metrics: pods held (deleted ones kept for late
    events included) against its capacity."""

    def __init__(self, index: PodIndex) -> None:
        self.index = index
        self.maxsize = index.maxsize

    def __len__(self) -> int:
        return self.index.held()


def _describe(e: BaseException) -> str:
    """A short, secret-free description of a client error (never the response body)."""
    status = status_of(e)
    if status:
        return f"HTTP {status} {getattr(e, 'reason', '')}".strip()
    return type(e).__name__

