"""A local HTTP server that speaks the parts of the Kubernetes API server's protocol the
agent uses, so the real kubernetes client can be driven against it (no cluster here).

What it implements, as the API server does:
- bearer-token auth (401 otherwise);
- GET /api/v1/pods: a PodList with metadata.resourceVersion, `fieldSelector=spec.nodeName=X`
  honoured;
- GET /api/v1/pods?watch=true: a chunked stream of newline-delimited watch events newer
  than `resourceVersion` (ADDED, MODIFIED, DELETED, BOOKMARK when allowWatchBookmarks),
  held open until `timeoutSeconds`; a resourceVersion older than the compacted history
  gets an ERROR event with a 410 Status ("too old resource version"), as etcd compaction
  makes the real server do;
- POST/PATCH (JSON patch) of core/v1 Events, 409 AlreadyExists and 404 NotFound Status
  bodies;
- DELETE of a pod with a uid precondition (409 Conflict when the uid differs).
Every request is recorded for the tests' assertions; failures can be injected.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self


def pod(ns: str, name: str, uid: str, node: str, labels: dict[str, str] | None = None,
        containers: tuple[str, ...] = (), init: tuple[str, ...] = (),
        ephemeral: tuple[str, ...] = ()) -> dict[str, Any]:
    """A pod object as the API server returns it (status with containerd ids)."""
    def statuses(ids: tuple[str, ...], prefix: str) -> list[dict[str, Any]]:
        return [{"name": f"{prefix}{i}", "containerID": f"containerd://{cid}", "ready": True,
                 "restartCount": 0, "image": "busybox", "imageID": "", "state": {}}
                for i, cid in enumerate(ids)]
    return {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": labels or {},
                     "resourceVersion": "0"},
        "spec": {"nodeName": node,
                 "containers": [{"name": "c", "image": "busybox",
                                 "env": [{"name": "SECRET", "value": "s3cr3t"}]}]},
        "status": {"phase": "Running", "containerStatuses": statuses(containers, "c"),
                   "initContainerStatuses": statuses(init, "init"),
                   "ephemeralContainerStatuses": statuses(ephemeral, "debug")},
    }


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class FakeApiServer:
    def __init__(self, token: str = "test-token") -> None:
        self.token = token
        self.cond = threading.Condition()
        self.rv = 100
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.history: list[tuple[int, str, dict[str, Any]]] = []
        self.compacted_below = 0
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.inject: list[tuple[str, str, int]] = []   # (method, path prefix, status), once each
        self.watch_generation = 0                     # bumped to end every open watch
        self.open_watches = 0
        self.held = False                             # watches deliver nothing while held
        self.instant_end = False                      # watches end at once, empty (a proxy)
        self.deleted: list[tuple[str, str, dict[str, Any]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self, "GET")

            def do_POST(self) -> None:
                server._handle(self, "POST")

            def do_PATCH(self) -> None:
                server._handle(self, "PATCH")

            def do_DELETE(self) -> None:
                server._handle(self, "DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.end_watches()
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def kubeconfig(self, path: Path) -> str:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "local",
            "clusters": [{"name": "local", "cluster": {"server": self.url}}],
            "users": [{"name": "agent", "user": {"token": self.token}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "agent"}}],
        }))
        return str(path)

    # -- the cluster's state, changed by tests -----------------------------------------------

    def _record(self, kind: str, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.history.append((self.rv, kind, json.loads(json.dumps(obj))))
        self.cond.notify_all()

    def put_pod(self, obj: dict[str, Any]) -> None:
        with self.cond:
            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
            kind = "MODIFIED" if key in self.pods else "ADDED"
            self.pods[key] = obj
            self._record(kind, obj)

    def delete_pod(self, ns: str, name: str) -> None:
        with self.cond:
            obj = self.pods.pop((ns, name))
            self._record("DELETED", obj)

    def compact(self) -> None:
        """Forget the watch history, as etcd compaction does: older versions get 410."""
        with self.cond:
            self.compacted_below = self.rv
            self.history.clear()

    def end_watches(self) -> None:
        """End every open watch stream, as the server does when a watch times out."""
        with self.cond:
            self.watch_generation += 1
            self.cond.notify_all()

    def wait_for(self, pred: Any, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.cond:
                got = pred()
            if got:
                return got
            time.sleep(0.02)
        raise AssertionError("condition not met; requests: " +
                             json.dumps([(r["method"], r["path"]) for r in self.requests[-20:]]))

    def requests_to(self, method: str, prefix: str) -> list[dict[str, Any]]:
        with self.cond:
            return [r for r in self.requests
                    if r["method"] == method and r["path"].startswith(prefix)]

    # -- protocol --------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urllib.parse.urlsplit(h.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        length = int(h.headers.get("Content-Length") or 0)
        body = json.loads(h.rfile.read(length)) if length else None
        with self.cond:
            self.requests.append({"method": method, "path": url.path, "query": query,
                                  "headers": {k.lower(): v for k, v in h.headers.items()},
                                  "body": body, "at": time.monotonic()})
            injected = next((x for x in self.inject
                             if x[0] == method and url.path.startswith(x[1])), None)
            if injected:
                self.inject.remove(injected)
        if h.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(h, 401, _status(401, "Unauthorized", "Unauthorized"))
        if injected:
            return self._send(h, injected[2], _status(injected[2], "Injected", "injected failure"))
        parts = url.path.strip("/").split("/")
        if method == "GET" and url.path == "/api/v1/pods":
            if query.get("watch") in ("true", "1", "True"):
                return self._watch(h, query)
            return self._list(h, query)
        if len(parts) >= 5 and parts[:3] == ["api", "v1", "namespaces"]:
            ns, res = parts[3], parts[4]
            name = parts[5] if len(parts) > 5 else ""
            if res == "events":
                return self._event(h, method, ns, name, body)
            if res == "pods" and method == "DELETE":
                return self._delete(h, ns, name, body)
        self._send(h, 404, _status(404, "NotFound", f"no route {method} {url.path}"))

    def _send(self, h: BaseHTTPRequestHandler, code: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def _selected(obj: dict[str, Any], query: dict[str, str]) -> bool:
        sel = query.get("fieldSelector", "")
        if not sel:
            return True
        field, _, value = sel.partition("=")
        assert field == "spec.nodeName", f"unsupported field selector {sel}"
        return obj["spec"].get("nodeName") == value

    def _list(self, h: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        with self.cond:
            items = [dict(p) for p in self.pods.values() if self._selected(p, query)]
            rv = self.rv
        for it in items:  # list items carry no kind/apiVersion
            it.pop("kind", None)
            it.pop("apiVersion", None)
        self._send(h, 200, {"kind": "PodList", "apiVersion": "v1",
                            "metadata": {"resourceVersion": str(rv)}, "items": items})

    def _watch(self, h: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        since = int(query.get("resourceVersion") or 0)
        timeout = float(query.get("timeoutSeconds") or 1800)
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def chunk(obj: dict[str, Any] | None) -> None:
            data = (json.dumps(obj) + "\n").encode() if obj is not None else b""
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        end = time.monotonic() + timeout
        with self.cond:
            generation = self.watch_generation
            self.open_watches += 1
        try:
            if self.instant_end:
                return
            if since and since < self.compacted_below:
                chunk({"type": "ERROR", "object": _status(
                    410, "Expired", f"too old resource version: {since} ({self.compacted_below})")})
                return
            sent_bookmark = False
            while True:
                with self.cond:
                    pending = self._pending(since, query)
                    bookmarks = query.get("allowWatchBookmarks") == "true"
                    if not pending and (sent_bookmark or not bookmarks):
                        self.cond.wait(max(0.0, min(0.2, end - time.monotonic())))
                        pending = self._pending(since, query)
                    if since and since < self.compacted_below and not pending:
                        # compacted while this watch was open: the real server ends it so
                        chunk({"type": "ERROR",
                               "object": _status(410, "Expired", "too old resource version")})
                        return
                    rv_now = max([since] + [rv for rv, _, _ in pending]) if self.held else self.rv
                    over = generation != self.watch_generation or time.monotonic() >= end
                for rv, kind, obj in pending:
                    chunk({"type": kind, "object": obj})
                    since = rv
                if not sent_bookmark and query.get("allowWatchBookmarks") == "true":
                    chunk({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                           "metadata": {"resourceVersion": str(rv_now)}}})
                    since = max(since, rv_now)
                    sent_bookmark = True
                if over:
                    return
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            with self.cond:
                self.open_watches -= 1
            try:
                # the end of the stream; the connection stays open, as the API server's does
                chunk(None)
            except OSError:
                h.close_connection = True

    def _pending(self, since: int, query: dict[str, str]) -> list[tuple[int, str, dict[str, Any]]]:
        if self.held:
            return []
        return [(rv, k, o) for rv, k, o in self.history if rv > since and self._selected(o, query)]

    def _event(self, h: BaseHTTPRequestHandler, method: str, ns: str, name: str,
               body: Any) -> None:
        with self.cond:
            if method == "POST":
                name = body["metadata"]["name"]
                if (ns, name) in self.events:
                    return self._send(h, 409, _status(409, "AlreadyExists",
                                                      f'events "{name}" already exists'))
                body["metadata"]["namespace"] = ns
                self.events[(ns, name)] = body
                return self._send(h, 201, body)
            if method == "PATCH":
                ev = self.events.get((ns, name))
                if ev is None:
                    return self._send(h, 404,
                                      _status(404, "NotFound", f'events "{name}" not found'))
                ctype = h.headers.get("Content-Type", "")
                assert ctype.startswith("application/json-patch+json"), ctype
                for op in body:
                    assert op["op"] == "replace" and op["path"].count("/") == 1, op
                    ev[op["path"][1:]] = op["value"]
                return self._send(h, 200, ev)
        self._send(h, 405, _status(405, "MethodNotAllowed", method))

    def _delete(self, h: BaseHTTPRequestHandler, ns: str, name: str, body: Any) -> None:
        with self.cond:
            obj = self.pods.get((ns, name))
            if obj is None:
                return self._send(h, 404, _status(404, "NotFound", f'pods "{name}" not found'))
            want = ((body or {}).get("preconditions") or {}).get("uid")
            if want and want != obj["metadata"]["uid"]:
                return self._send(h, 409, _status(
                    409, "Conflict", f"Precondition failed: UID in precondition: {want}, "
                                     f"UID in object meta: {obj['metadata']['uid']}"))
            self.deleted.append((ns, name, body or {}))
            grace = (body or {}).get("gracePeriodSeconds")
            if grace == 0:
                # a force delete: the object goes at once
                del self.pods[(ns, name)]
                self._record("DELETED", obj)
            else:
                # graceful: marked, and removed by the kubelet once its containers stopped
                # (there is no kubelet here: the pod stays, terminating)
                obj["metadata"]["deletionTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                     time.gmtime())
                obj["metadata"]["deletionGracePeriodSeconds"] = 30 if grace is None else grace
                self._record("MODIFIED", obj)
        self._send(h, 200, obj)
