"""The Kubernetes edge, driven through the real kubernetes client against a local HTTP
server that speaks the API server's protocol (tests/integration/kube_apiserver.py): list,
streamed watch, 410 Gone, Events, pod deletion. No API server is reachable here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_apiserver import FakeApiServer, pod

from agent.actions.kill import Enforcer
from agent.actions.pods import PodDeleter
from agent.decide import Decision, Protection
from agent.engine.ruleset import Match
from agent.enrich.pods import PodIndex
from agent.errors import ConfigError
from agent.kubeapi import Kube, connect
from agent.metrics import Metrics
from agent.model import Event, Pod
from agent.sinks.findings import Finding
from agent.sinks.kubeevents import PodEventSink
from agent.sources.kubepods import PodWatcher
from agent.sources.procfs import ProcFS
from agent.sources.proctree import ProcessTree
from tests.unit.sample_finding import sample

pytestmark = pytest.mark.integration

NODE = "node-1"
CID = "c0ffee" + "0" * 58
CID2 = "be11" + "1" * 60


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    with FakeApiServer() as s:
        yield s


@pytest.fixture
def kube(server: FakeApiServer, tmp_path: Path) -> Kube:
    k = connect("auto", server.kubeconfig(tmp_path / "kubeconfig"), NODE, env={})
    assert k is not None
    return k


@pytest.fixture
def watcher(kube: Kube) -> Iterator[PodWatcher]:
    w = PodWatcher(kube.api, NODE, PodIndex(), Metrics(), watch_seconds=30)
    yield w
    w.stop()


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    v = metrics.registry.get_sample_value(name, labels) if hasattr(metrics, "registry") else None
    return v or 0.0


# -- pods: list, watch, 410 -------------------------------------------------------------------

def test_lists_then_watches_only_this_nodes_pods_via_local_apiserver(server, watcher):
    server.put_pod(pod("team-a", "ws-1", "uid-1", NODE, {"team": "a"}, (CID,)))
    server.put_pod(pod("team-b", "elsewhere", "uid-2", "node-2", {}, (CID2,)))
    watcher.start()
    assert watcher.synced.wait(10)
    idx = watcher.index
    found = idx.lookup(CID)
    assert found is not None
    assert (found.namespace, found.name, found.uid) == ("team-a", "ws-1", "uid-1")
    assert found.labels == {"team": "a"}
    assert idx.lookup(CID2) is None, "another node's pod must not be indexed"
    # a pod scheduled later, whose container id appears only in a later status update
    server.put_pod(pod("team-a", "ws-3", "uid-3", NODE, {}, ()))
    server.put_pod(pod("team-a", "ws-3", "uid-3", NODE, {}, ("3" * 64,), init=("4" * 64,),
                       ephemeral=("5" * 64,)))
    server.wait_for(lambda: idx.lookup("5" * 64) is not None)
    assert idx.lookup("3" * 64).name == idx.lookup("4" * 64).name == "ws-3"
    lists = server.requests_to("GET", "/api/v1/pods")
    assert all(r["query"].get("fieldSelector") == f"spec.nodeName={NODE}" for r in lists)
    watch = next(r for r in lists if r["query"].get("watch") == "true")
    assert watch["query"]["resourceVersion"] == str(int(watch["query"]["resourceVersion"]))
    assert int(watch["query"]["timeoutSeconds"]) > 0, "every watch must carry a server-side timeout"
    assert watch["query"].get("allowWatchBookmarks") == "true"
    assert watch["headers"].get("authorization") == "Bearer test-token"


def test_watch_resumes_from_the_last_resource_version_without_listing_again(server, watcher):
    server.put_pod(pod("team-a", "ws-1", "uid-1", NODE, {}, (CID,)))
    watcher.start()
    assert watcher.synced.wait(10)
    server.put_pod(pod("team-a", "ws-2", "uid-2", NODE, {}, (CID2,)))
    server.wait_for(lambda: watcher.index.lookup(CID2) is not None)
    seen = watcher.resource_version
    server.end_watches()            # the server's watch timeout
    server.wait_for(lambda: len([r for r in server.requests_to("GET", "/api/v1/pods")
                                 if r["query"].get("watch") == "true"]) >= 2)
    watches = [r for r in server.requests_to("GET", "/api/v1/pods")
               if r["query"].get("watch") == "true"]
    assert watches[1]["query"]["resourceVersion"] == seen
    assert watcher.lists == 1


def test_410_gone_relists_and_retires_pods_deleted_while_not_watching(server, watcher):
    server.put_pod(pod("team-a", "old", "uid-old", NODE, {}, (CID,)))
    watcher.start()
    assert watcher.synced.wait(10)
    assert watcher.index.lookup(CID) is not None
    server.wait_for(lambda: server.open_watches >= 1)   # ended below: open it first
    server.held = True              # the watch misses what follows...
    server.delete_pod("team-a", "old")
    server.put_pod(pod("team-a", "new", "uid-new", NODE, {}, (CID2,)))
    server.compact()                # ...and the history is compacted away: 410 on resume
    server.held = False
    server.end_watches()
    server.wait_for(lambda: watcher.lists == 2)
    server.wait_for(lambda: watcher.index.lookup(CID2) is not None)
    assert len(watcher.index) == 1
    # the deleted pod still resolves for late events, but is no longer a live pod
    assert watcher.index.lookup(CID).name == "old"


def test_unauthorized_is_said_once_and_retried_via_local_apiserver(server, tmp_path, caplog):
    server.token = "rotated"        # our token no longer valid
    k = connect("auto", server.kubeconfig(tmp_path / "kc"), NODE, env={})
    server.token = "test-token"
    sleeps: list[float] = []
    stop_after = threading.Event()

    def sleep(s: float) -> bool:
        sleeps.append(s)
        if len(sleeps) >= 4:
            stop_after.set()
            return True     # stop
        return False

    m = Metrics()
    w = PodWatcher(k.api, NODE, PodIndex(), m, sleep=sleep)
    with caplog.at_level(logging.ERROR, logger="nodewarden.kubernetes"):
        w.run()
    assert sleeps == [1.0, 2.0, 4.0, 8.0], "backoff doubles between retries"
    refused = [r for r in caplog.records if "pods get, list and watch" in r.getMessage()]
    assert len(refused) == 1, "an RBAC problem is logged once, not per retry"
    assert not w.synced.is_set()


@contextlib.contextmanager
def _silent_apiserver() -> Iterator[Any]:
    """A CoreV1Api talking to a socket that accepts connections and never answers."""
    from kubernetes import client

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(64)
    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{lsock.getsockname()[1]}"
    cfg.retries = 0
    try:
        yield client.CoreV1Api(client.ApiClient(cfg))
    finally:
        lsock.close()


def test_a_stalled_apiserver_times_out_instead_of_hanging_via_local_socket():
    """A server that accepts and never answers: the request gives up at its read timeout."""
    with _silent_apiserver() as api:
        _list_times_out(PodWatcher(api, NODE, PodIndex()))


def _list_times_out(w: PodWatcher) -> None:
    import agent.sources.kubepods as kp

    old = kp.TIMEOUTS
    kp.TIMEOUTS = (1.0, 1.0)
    t0 = time.monotonic()
    try:
        with pytest.raises(Exception) as e:
            w.list()
    finally:
        kp.TIMEOUTS = old
    assert time.monotonic() - t0 < 5
    assert "timeout" in type(e.value).__name__.lower() or "timed out" in str(e.value).lower()


def test_a_watch_that_ends_at_once_backs_off_instead_of_spinning_via_local_apiserver(server, kube):
    sleeps: list[float] = []

    def sleep(s: float) -> bool:
        sleeps.append(s)
        return len(sleeps) >= 4

    w = PodWatcher(kube.api, NODE, PodIndex(), Metrics(), watch_seconds=30, sleep=sleep)
    server.instant_end = True             # every watch the server opens ends at once, empty
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    t.join(timeout=20)
    if t.is_alive():
        w.stop()
        server.instant_end = False
        pytest.fail("the watcher never backed off: it is spinning on empty watches")
    watches = [r for r in server.requests_to("GET", "/api/v1/pods") if r["query"].get("watch")]
    assert len(watches) <= 5, f"{len(watches)} watches: the loop spun"
    assert sleeps[:3] == [1.0, 2.0, 4.0]


def test_kubernetes_sensor_is_up_again_after_a_resumed_watch_via_local_apiserver(server, kube):
    m = Metrics()
    w = PodWatcher(kube.api, NODE, PodIndex(), m, watch_seconds=30,
                   sleep=lambda s: w._stop.wait(0.05))
    up = m.sensor_up.labels(sensor="kubernetes")
    w.start()
    assert w.synced.wait(10) and up._value.get() == 1
    # the watch must be open before it is ended: one opened after the end would run its
    # whole 30 s (synced is set by the list, before the watch request)
    server.wait_for(lambda: server.open_watches >= 1)
    server.inject.append(("GET", "/api/v1/pods", 503))   # the next watch request fails
    server.end_watches()
    server.wait_for(lambda: up._value.get() == 0)
    server.put_pod(pod("team-a", "late", "uid-late", NODE, {}, (CID,)))
    server.wait_for(lambda: w.index.lookup(CID) is not None)
    assert up._value.get() == 1 and w.lists == 1, "resumed from the last version, and up"
    w.stop()


def test_close_keeps_its_deadline_when_the_apiserver_stalls_via_local_socket():
    """An API server that accepts and never answers must not hold up the agent's stop."""
    m = Metrics()
    with _silent_apiserver() as api:
        sink = PodEventSink(api, NODE, m)
        for i in range(4):
            sink.submit(_finding(uid=f"uid-{i}", name=f"ws-{i}"))
        time.sleep(0.3)
        t0 = time.monotonic()
        sink.close(deadline=2.0)
        took = time.monotonic() - t0
    assert took < 4.0, f"close(deadline=2) took {took:.1f}s"
    assert m.alerts_dropped.labels(sink="kubernetes", reason="shutdown")._value.get() == 4


def test_outside_a_cluster_the_agent_runs_without_pods_and_says_so(caplog):
    with caplog.at_level(logging.INFO, logger="nodewarden.kubernetes"):
        assert connect("auto", "", NODE, env={}) is None
    assert caplog.text.count("running without Kubernetes pod enrichment") == 1
    with pytest.raises(ConfigError, match="required"):
        connect("required", "", NODE, env={})
    # in a cluster without the downward API's node name: refuse to watch every pod
    with caplog.at_level(logging.WARNING, logger="nodewarden.kubernetes"):
        assert connect("auto", "", "", env={"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) is None
    assert "NODE_NAME" in caplog.text


# -- Events -----------------------------------------------------------------------------------

def _finding(outcome: str = "would_kill", rule: str = "crypto-miner-exec", uid: str = "uid-1",
             name: str = "ws-1", pid: int = 4242, ns: str = "team-a") -> Finding:
    return sample(rule, outcome=outcome, mode="audit", pid=pid, pod=Pod(ns, name, uid),
                  message="known miner binary xmrig started")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_each_finding_becomes_a_warning_event_on_its_pod_via_local_apiserver(server, kube):
    m = Metrics()
    sink = PodEventSink(kube.api, NODE, m)
    sink.submit(_finding("killed"))
    sink.submit(_finding("would_kill", rule="reverse-shell"))
    sink.submit(_finding("reported", rule="curl-pipe-shell"))
    sink.submit(dataclasses.replace(_finding(), pod=None))     # not in a pod: no Event
    server.wait_for(lambda: len(server.events) == 3)
    sink.close()
    reasons = {e["reason"]: e for e in server.events.values()}
    assert set(reasons) == {"NodewardenKilled", "NodewardenWouldKill", "NodewardenDetected"}
    ev = reasons["NodewardenKilled"]
    assert ev["type"] == "Warning"
    assert ev["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "namespace": "team-a",
                                    "name": "ws-1", "uid": "uid-1"}
    assert ev["count"] == 1 and ev["source"] == {"component": "nodewarden", "host": NODE}
    assert "crypto-miner-exec" in ev["message"] and "xmrig" in ev["message"]


def _cache(m: Metrics, cache: str) -> tuple[float | None, float | None]:
    """(entries, capacity) of one cache as /metrics shows it."""
    return (m.registry.get_sample_value("nodewarden_cache_entries", {"cache": cache}),
            m.registry.get_sample_value("nodewarden_cache_capacity", {"cache": cache}))


def test_open_event_series_are_on_metrics_while_events_are_written_via_local_apiserver(
        server, kube):
    import io

    from agent.config import Config
    from agent.sinks.registry import Sinks

    m = Metrics()
    sinks = Sinks.open(Config(listen="off", bpf="off", kubernetes_events=True), m,
                       io.StringIO(), "json", kube=kube)
    assert _cache(m, "kubernetes_event_series") == (0, 2048)
    for i in range(3):
        sinks.submit([_finding(uid=f"uid-{i}", name=f"ws-{i}")])
    sinks.submit([_finding(uid="uid-0", name="ws-0")])      # a repeat counts on its series
    assert _cache(m, "kubernetes_event_series") == (3, 2048)
    server.wait_for(lambda: len(server.events) == 3)
    sinks.close(2.0)
    assert _cache(m, "kubernetes_event_series") == (None, None)  # no sink, no series


def test_event_series_stay_within_max_series_via_local_apiserver(server, kube):
    m = Metrics()
    sink = PodEventSink(kube.api, NODE, m, max_series=4)
    for i in range(10):               # more pods than series: the oldest written ones go
        sink.submit(_finding(uid=f"uid-{i}", name=f"ws-{i}"))
        server.wait_for(lambda n=i + 1: len(server.events) == n)
        assert len(sink.cache()) <= 4
    assert (len(sink.cache()), sink.cache().maxsize) == (4, 4)
    sink.close()


def test_a_flood_of_one_finding_is_one_event_with_a_count_via_local_apiserver(server, kube):
    sink = PodEventSink(kube.api, NODE, Metrics(), patch_interval=0.2)
    for i in range(500):
        sink.submit(_finding(pid=1000 + i))
    server.wait_for(lambda: [e for e in server.events.values() if e.get("count") == 500])
    sink.close()
    assert len(server.events) == 1
    writes = server.requests_to("POST", "/api/v1/namespaces/team-a/events") + \
        server.requests_to("PATCH", "/api/v1/namespaces/team-a/events")
    assert 1 <= len(writes) <= 5, f"{len(writes)} requests for 500 findings"
    patch = server.requests_to("PATCH", "/api/v1/namespaces/team-a/events")
    if patch:
        assert patch[-1]["headers"]["content-type"].startswith("application/json-patch+json")


def test_writes_are_rate_limited_across_pods_via_local_apiserver(server, kube):
    clock = Clock()                 # frozen: the bucket never refills until the test says so
    m = Metrics()
    sink = PodEventSink(kube.api, NODE, m, rate=2.0, burst=5, clock=clock)
    for i in range(40):
        sink.submit(_finding(uid=f"uid-{i}", name=f"ws-{i}"))
    server.wait_for(lambda: len(server.events) == 5)
    time.sleep(0.5)
    assert len(server.events) == 5, "the burst is spent: no more writes until tokens refill"
    clock.t += 1.0                  # one second: two more tokens
    server.wait_for(lambda: len(server.events) == 7)
    time.sleep(0.3)
    assert len(server.events) == 7
    sink.close(deadline=0.2)
    dropped = m.alerts_dropped.labels(sink="kubernetes", reason="shutdown")._value.get()
    assert dropped == 33, "what shutdown leaves unsent is counted, not lost silently"


def test_event_write_failures_retry_recreate_or_drop_via_local_apiserver(server, kube):
    m = Metrics()
    sink = PodEventSink(kube.api, NODE, m, patch_interval=0.0)
    server.inject.append(("POST", "/api/v1/namespaces/team-a/events", 500))
    sink.submit(_finding())
    server.wait_for(lambda: len(server.events) == 1)          # 500, then retried
    # the Event expired (Events live an hour): the next repeat creates a new one
    server.events.clear()
    sink.submit(_finding())
    server.wait_for(lambda: len(server.events) == 1)
    assert next(iter(server.events.values()))["count"] == 2
    # a namespace we may not write to: dropped and counted, not retried forever
    server.inject.append(("POST", "/api/v1/namespaces/locked/events", 403))
    sink.submit(_finding(uid="uid-x", ns="locked", name="p"))
    rejected = m.alerts_dropped.labels(sink="kubernetes", reason="rejected")
    server.wait_for(lambda: rejected._value.get() == 1)
    sink.close()
    assert m.alerts_sent.labels(sink="kubernetes")._value.get() >= 2


def test_an_event_that_already_exists_is_counted_on_via_local_apiserver(server, kube):
    clock = Clock()
    wall = 1_790_000_000.0
    sink = PodEventSink(kube.api, NODE, Metrics(), clock=clock, wall=lambda: wall)
    sink.submit(_finding())
    server.wait_for(lambda: len(server.events) == 1)
    sink.close()
    # an agent restarted within the same second computes the same name: 409, then PATCH
    again = PodEventSink(kube.api, NODE, Metrics(), clock=clock, wall=lambda: wall)
    again.submit(_finding())
    server.wait_for(lambda: server.requests_to("PATCH", "/api/v1/namespaces/team-a/events"))
    again.close()
    assert len(server.events) == 1


# -- delete-pod ---------------------------------------------------------------------------

def _decision(pid: int, starttime: int, pod_: Pod | None, action: str = "delete-pod") -> Decision:
    class Rule:
        id = "delete-it"
        severity = "high"
        mode = "enforce"
    Rule.action = action  # type: ignore[attr-defined]
    p = ProcFS().read(pid)
    assert p.starttime == starttime
    ev = Event("exec", time.time(), p, pod=pod_)
    return Decision(Match(Rule, ev, "m"), "enforce", "kill")  # type: ignore[arg-type]


@pytest.fixture
def victim() -> Iterator[subprocess.Popen]:
    p = subprocess.Popen(["sleep", "60"])
    time.sleep(0.05)
    yield p
    p.kill()
    p.wait()


def _enforcer(deleter: PodDeleter | None = None) -> Enforcer:
    fs = ProcFS()
    return Enforcer(fs, ProcessTree(fs), Protection(), pod_deleter=deleter)


def test_delete_pod_kills_the_process_then_deletes_its_pod_by_uid_via_local_apiserver(
        server, kube, victim):
    server.put_pod(pod("team-a", "ws-1", "uid-1", NODE, {}, (CID,)))
    deleter = PodDeleter(kube.api, Metrics())
    e = _enforcer(deleter)
    st = ProcFS().read(victim.pid).starttime
    d = e.carry_out(_decision(victim.pid, st, Pod("team-a", "ws-1", "uid-1")))
    assert d.outcome == "killed" and "pod team-a/ws-1 deletion requested" in d.reason
    victim.wait(timeout=5)
    assert victim.returncode == -signal.SIGKILL
    server.wait_for(lambda: server.deleted)
    ns, name, body = server.deleted[0]
    assert (ns, name) == ("team-a", "ws-1")
    assert body["preconditions"] == {"uid": "uid-1"}
    # 1 s, not 0: a 0 would force the object away before the kubelet stopped the containers
    assert body["gracePeriodSeconds"] == 1
    assert "deletionTimestamp" in server.pods[("team-a", "ws-1")]["metadata"]
    deleter.close()


def test_delete_pod_never_deletes_a_replacement_pod_of_the_same_name_via_local_apiserver(
        server, kube):
    server.put_pod(pod("team-a", "ws-1", "uid-NEW", NODE, {}, (CID,)))
    m = Metrics()
    deleter = PodDeleter(kube.api, m)
    deleter.request(Pod("team-a", "ws-1", "uid-OLD"))
    server.wait_for(lambda: server.requests_to("DELETE", "/api/v1/namespaces/team-a/pods/ws-1"))
    deleter.close()
    assert ("team-a", "ws-1") in server.pods, "the pod with another uid must survive"
    assert "deletionTimestamp" not in server.pods[("team-a", "ws-1")]["metadata"]
    assert m.actions.labels(action="delete-pod", outcome="gone")._value.get() == 1


def test_requested_pod_deletions_are_on_metrics_via_local_apiserver(server, kube):
    server.put_pod(pod("team-a", "ws-1", "uid-1", NODE, {}, (CID,)))
    m = Metrics()
    deleter = PodDeleter(kube.api, m)
    assert _cache(m, "pod_deletes") == (0, 4096)
    deleter.request(Pod("team-a", "ws-1", "uid-1"))
    deleter.request(Pod("team-a", "ws-1", "uid-1"))       # asked once
    assert _cache(m, "pod_deletes") == (1, 4096)
    server.wait_for(lambda: server.requests_to("DELETE", "/api/v1/namespaces/team-a/pods/ws-1"))
    deleter.close()


def test_a_failed_delete_is_tried_again_by_the_next_finding_via_local_apiserver(server, kube):
    server.put_pod(pod("team-a", "ws-1", "uid-1", NODE, {}, (CID,)))
    for _ in range(3):                    # every attempt of the first request fails
        server.inject.append(("DELETE", "/api/v1/namespaces/team-a/pods/ws-1", 503))
    m = Metrics()
    deleter = PodDeleter(kube.api, m, attempts=3)
    assert "requested" in deleter.request(Pod("team-a", "ws-1", "uid-1"))
    failed = m.actions.labels(action="delete-pod", outcome="failed")
    server.wait_for(lambda: failed._value.get() == 1,
                    timeout=15)
    assert "requested" in deleter.request(Pod("team-a", "ws-1", "uid-1"))
    server.wait_for(lambda: server.deleted)
    assert "already requested" in deleter.request(Pod("team-a", "ws-1", "uid-1"))
    deleter.close()


def test_delete_pod_is_off_unless_configured_and_spares_protected_namespaces(server, kube, victim):
    e = _enforcer()                                     # no deleter: delete_pod is off
    st = ProcFS().read(victim.pid).starttime
    d = e.carry_out(_decision(victim.pid, st, Pod("team-a", "ws-1", "uid-1")))
    assert d.outcome == "killed" and "delete_pod is off" in d.reason
    deleter = PodDeleter(kube.api, Metrics())
    assert "protected" in deleter.request(Pod("kube-system", "coredns-1", "uid-k"))
    deleter.close()
    assert not server.requests_to("DELETE", "/api")


# -- the agent, end to end ------------------------------------------------------------------

CGROUP2 = Path("/sys/fs/cgroup/unified")


def _kubelet_cgroup(pod_uid: str, cid: str) -> Path:
    """A cgroup named as the kubelet (systemd driver) and containerd name a container's."""
    if os.geteuid() != 0 or not (CGROUP2 / "cgroup.procs").exists():
        pytest.skip("needs root and a cgroup v2 hierarchy at /sys/fs/cgroup/unified")
    u = pod_uid.replace("-", "_")
    d = (CGROUP2 / f"kubepods-nwtest{os.getpid()}.slice" / f"kubepods-besteffort-pod{u}.slice"
         / f"cri-containerd-{cid}.scope")
    d.mkdir(parents=True)
    return d


def _event_of(server: FakeApiServer, rule: str) -> dict | None:
    return next((e for e in server.events.values() if f"] {rule}:" in e["message"]), None)


def _rmdirs(d: Path) -> None:
    for _ in range(100):
        try:
            d.rmdir()
            d.parent.rmdir()
            d.parent.parent.rmdir()
            return
        except OSError:
            time.sleep(0.05)


@pytest.mark.parametrize("mode", ["audit", "enforce"])
def test_agent_labels_a_finding_with_its_pod_and_writes_an_event_via_local_apiserver(
        server, tmp_path, mode):
    pod_uid = "3f2e1d0c-9b8a-4766-a554-433221100fed"
    server.put_pod(pod("payments", "checkout-7d9", pod_uid, NODE,
                       {"tier": "prod", "app": "checkout"}, (CID,)))
    server.put_pod(pod("payments", "on-node-2", "uid-2", "node-2", {"tier": "prod"}, (CID2,)))
    rules = tmp_path / "rules.d"
    rules.mkdir()
    (rules / "team.yaml").write_text(
        "rules:\n"
        "  - id: prod-payments-debug-tool\n"
        "    severity: high\n"
        "    action: delete-pod\n"
        "    on: [exec]\n"
        "    match:\n"
        "      proc.exe_name: nw-debugtool\n"
        "      pod.namespace: payments\n"
        "      pod.labels.tier: prod\n"
        "    message: \"debug tool in {pod.namespace}/{pod.name}\"\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"mode: {mode}\nkubernetes: required\n"
                   f"kubeconfig: {server.kubeconfig(tmp_path / 'kubeconfig')}\n"
                   f"node_name: {NODE}\ndelete_pod: true\nrules: [bundled, {rules}]\n")
    tool = tmp_path / "nw-debugtool"
    shutil.copy("/bin/sleep", tool)
    cg = _kubelet_cgroup(pod_uid, CID)
    agent = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(cfg),
                              "--listen", "off", "--format", "json", "--interval", "0.5"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    stderr: list[str] = []
    ready = threading.Event()

    def read_err() -> None:
        for x in agent.stderr:
            stderr.append(x)
            if "ready:" in x:
                ready.set()
    threading.Thread(target=lambda: [lines.put(x) for x in agent.stdout], daemon=True).start()
    err_reader = threading.Thread(target=read_err, daemon=True)
    err_reader.start()
    victim = None
    err = ""
    finding: dict = {}
    try:
        assert ready.wait(60), "".join(stderr)
        # a process that joins the container's cgroup, then execs the tool
        victim = subprocess.Popen(["sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec {tool} 30'])
        deadline = time.monotonic() + 30
        while not finding and time.monotonic() < deadline:
            try:
                f = json.loads(lines.get(timeout=1))
            except queue.Empty:
                continue
            if f["rule"] == "prod-payments-debug-tool":
                finding = f
        server.wait_for(lambda: _event_of(server, "prod-payments-debug-tool"), timeout=10)
        if mode == "enforce":
            server.wait_for(lambda: server.deleted, timeout=10)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
        err_reader.join(timeout=5)
        err = "".join(stderr)
        if victim is not None:
            victim.kill()
            victim.wait()
        _rmdirs(cg)
    assert agent.returncode == 0, err
    assert finding["pod"] == {"namespace": "payments", "name": "checkout-7d9", "uid": pod_uid,
                              "labels": {"tier": "prod", "app": "checkout"}}
    assert finding["container"] == {"id": CID}
    assert finding["message"] == "debug tool in payments/checkout-7d9"
    ev = _event_of(server, "prod-payments-debug-tool")
    assert ev["involvedObject"]["uid"] == pod_uid and ev["metadata"]["namespace"] == "payments"
    if mode == "audit":
        assert finding["outcome"] == "would_kill"
        assert ev["reason"] == "NodewardenWouldKill"
        assert not server.deleted and not server.requests_to("DELETE", "/api"), \
            "audit mode touches nothing"
    else:
        assert finding["outcome"] == "killed", finding
        assert ev["reason"] == "NodewardenKilled"
        assert server.deleted[0][:2] == ("payments", "checkout-7d9")
        assert server.deleted[0][2]["preconditions"] == {"uid": pod_uid}
    assert "s3cr3t" not in err + json.dumps(finding), "a pod's env never reaches our output"
    assert err.count("Kubernetes API: ") == 1


def test_the_agent_outside_a_cluster_says_once_and_runs_or_exits_2_when_required(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    cmd = [sys.executable, "-m", "agent", "run", "--once", "--no-bpf", "--listen", "off",
           "--format", "json"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("running without Kubernetes pod enrichment") == 1
    cfg = tmp_path / "config.yaml"
    cfg.write_text("kubernetes: required\n")
    res = subprocess.run([*cmd, "--config", str(cfg)], env=env, capture_output=True, text=True,
                         check=False,
                         timeout=120)
    assert res.returncode == 2
    assert "kubernetes: required, but not in a Kubernetes cluster" in res.stderr
