"""Pod enrichment's pure parts: pod objects -> index -> the pod of a process."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_containers import CASES, POD, POD_

from agent.enrich.pods import PodIndex, container_ids, pod_from
from agent.sources.procfs import ProcFS, parse_cgroup, pod_uid_from_cgroup
from agent.sources.proctree import ProcessTree

CID = "a" * 64
CID2 = "b" * 64
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "proc"


def pod_obj(uid: str = "uid-1", name: str = "ws-1", ns: str = "team-a",
            containers: tuple[str, ...] = (CID,), init: tuple[str, ...] = (),
            ephemeral: tuple[str, ...] = (), last: str = "") -> dict:
    def st(ids: tuple[str, ...]) -> list[dict]:
        return [{"name": f"c{i}", "containerID": f"containerd://{c}"} for i, c in enumerate(ids)]
    status = {"containerStatuses": st(containers), "initContainerStatuses": st(init),
              "ephemeralContainerStatuses": st(ephemeral)}
    if last:
        status["containerStatuses"][0]["lastState"] = {"terminated": {"containerID": f"cri-o://{last}"}}
    return {"metadata": {"namespace": ns, "name": name, "uid": uid, "labels": {"team": "a"}},
            "spec": {"containers": [{"env": [{"name": "TOKEN", "value": "s3cr3t"}]}]},
            "status": status}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_container_ids_cover_init_ephemeral_and_the_previous_instance():
    obj = pod_obj(containers=(CID,), init=("1" * 64,), ephemeral=("2" * 64,), last="3" * 64)
    assert container_ids(obj) == {CID, "1" * 64, "2" * 64, "3" * 64}
    # a pending pod has no statuses yet; a waiting container has no id yet
    assert container_ids({"metadata": {}, "status": {}}) == set()
    assert container_ids({"status": {"containerStatuses": [{"name": "c"}]}}) == set()


def test_a_pod_keeps_only_its_identity_and_labels_never_its_spec():
    p = pod_from(pod_obj())
    assert (p.namespace, p.name, p.uid, p.labels) == ("team-a", "ws-1", "uid-1", {"team": "a"})
    assert "s3cr3t" not in repr(p) and "s3cr3t" not in str(p.to_json())


def test_lookup_by_container_id_and_by_pod_uid_from_the_cgroup(clock):
    idx = PodIndex(clock=clock)
    idx.upsert(pod_obj())
    assert idx.lookup(CID).name == "ws-1"
    assert idx.lookup("f" * 64) is None
    # a container not yet in the pod's status still resolves through the cgroup's pod uid
    assert idx.lookup("f" * 64, "uid-1").name == "ws-1"
    assert idx.lookup("", "uid-unknown") is None
    assert len(idx) == 1


def test_a_deleted_pod_resolves_for_a_minute_then_is_forgotten(clock):
    idx = PodIndex(grace=60, clock=clock)
    idx.upsert(pod_obj())
    idx.delete(pod_obj())
    clock.t += 59
    assert idx.lookup(CID).uid == "uid-1", "a late event after deletion must still name the pod"
    assert len(idx) == 0, "a deleted pod is not counted as live"
    clock.t += 2
    assert idx.lookup(CID) is None
    assert idx.lookup("", "uid-1") is None


def test_a_restarted_containers_old_id_resolves_for_the_grace_period(clock):
    idx = PodIndex(grace=60, clock=clock)
    idx.upsert(pod_obj(containers=(CID,)))
    idx.upsert(pod_obj(containers=(CID2,)))       # restarted, lastState not reported
    assert idx.lookup(CID).name == idx.lookup(CID2).name == "ws-1"
    clock.t += 61
    idx.upsert(pod_obj(containers=(CID2,)))       # any write prunes
    assert idx.lookup(CID) is None
    assert idx.lookup(CID2).name == "ws-1"


def test_a_relist_retires_pods_deleted_while_not_watching(clock):
    idx = PodIndex(grace=60, clock=clock)
    idx.upsert(pod_obj(uid="uid-1", containers=(CID,)))
    idx.upsert(pod_obj(uid="uid-2", name="ws-2", containers=(CID2,)))
    idx.replace([pod_obj(uid="uid-2", name="ws-2", containers=(CID2,)),
                 pod_obj(uid="uid-3", name="ws-3", containers=("c" * 64,))])
    assert len(idx) == 2
    assert idx.lookup("c" * 64).name == "ws-3"
    assert idx.lookup(CID).name == "ws-1"         # gone, but within the grace period
    clock.t += 61
    assert idx.lookup(CID) is None
    assert idx.lookup(CID2).name == "ws-2"


def test_a_pod_recreated_under_the_same_name_is_another_pod(clock):
    idx = PodIndex(clock=clock)
    idx.upsert(pod_obj(uid="uid-1", containers=(CID,)))
    idx.delete(pod_obj(uid="uid-1"))
    idx.upsert(pod_obj(uid="uid-9", containers=(CID2,)))
    assert idx.lookup(CID).uid == "uid-1"
    assert idx.lookup(CID2).uid == "uid-9"


@pytest.mark.parametrize("name,text,cid", CASES, ids=[c[0] for c in CASES])
def test_pod_uid_from_every_kubelet_cgroup_shape(name, text, cid):
    want = POD if ("pod" + POD in text or "pod" + POD_ in text) else ""
    if name == "kind node running a pod":
        # seen from the host, kind's pods sit below a docker container's cgroup: not this
        # node's kubelet (an agent inside the kind node sees /kubelet.slice/... and resolves)
        want = ""
    assert pod_uid_from_cgroup(text) == want
    cg = parse_cgroup(text)
    assert (cg.container_id, cg.pod_uid) == (cid, want)


def test_events_of_a_process_in_a_pod_carry_the_pod():
    idx = PodIndex()
    idx.upsert({"metadata": {"namespace": "ci", "name": "runner-7", "uid": POD},
                "status": {}})  # the pod is known; its container ids are not yet
    tree = ProcessTree(ProcFS(str(FIXTURES)), pod_of=idx.lookup)
    procs = {p.pid: p for p in tree.scan()}
    ev = tree.event("scan", procs[2101], 0.0)
    assert ev.pod is not None and (ev.pod.namespace, ev.pod.name) == ("ci", "runner-7")
    assert tree.event("scan", procs[1], 0.0).pod is None


KIND_INSIDE = (f"0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{POD_}.slice/"
               f"cri-containerd-{CID}.scope\n")
FORGED = (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/"
          f"cri-containerd-{CID}.scope/{'c' * 64}/pod11111111-2222-3333-4444-555555555555\n")


def test_only_the_kubelets_pod_cgroup_names_the_pod():
    assert pod_uid_from_cgroup(KIND_INSIDE) == POD
    in_namespace = f"0::/../../kubepods-besteffort.slice/kubepods-besteffort-pod{POD_}.slice/x\n"
    assert pod_uid_from_cgroup(in_namespace) == POD
    # a container that makes its own sub-cgroup named after another pod: its own pod counts
    assert pod_uid_from_cgroup(FORGED) == POD
    assert pod_uid_from_cgroup("0::/system.slice/docker-x.scope/kubepods/pod" + POD + "/x\n") == ""


def test_a_forged_nested_cgroup_never_resolves_to_another_tenants_pod(clock):
    victim_uid = "11111111-2222-3333-4444-555555555555"
    idx = PodIndex(clock=clock)
    idx.upsert(pod_obj(uid=POD, name="ci-runner", ns="tenant-a", containers=(CID,)))
    idx.upsert(pod_obj(uid=victim_uid, name="payments", ns="tenant-b", containers=(CID2,)))
    cg = parse_cgroup(FORGED)
    cid, uid = cg.container_id, cg.pod_uid
    assert idx.lookup(cid, uid).name == "ci-runner"
    # nor by naming the victim's container id below its own cgroup
    forged_cid = FORGED.replace("c" * 64, CID2)
    cg = parse_cgroup(forged_cid)
    cid, uid = cg.container_id, cg.pod_uid
    assert cid == CID2
    assert idx.lookup(cid, uid).name == "ci-runner", "the kubelet's pod uid wins over a cid"
