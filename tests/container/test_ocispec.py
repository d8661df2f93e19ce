"""The pod spec -> OCI runtime spec translation, on the chart's rendered DaemonSet and test
pod (both security modes) and on hand-made specs for what it refuses. No runc needed."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.container.ocispec import ALL_CAPS, Image, Node, UnsupportedField, translate

REPO = Path(__file__).resolve().parents[2]
HELM = Path(sys.executable).parent / "helm"
IMAGE = Image(env=("PATH=/opt/nodewarden/bin:/usr/bin", "PYTHONUNBUFFERED=1"),
              entrypoint=("nodewarden",), cmd=("run",))
VOLUMES = {"config": "/k/config", "rules": "/k/rules", "tmp": "/k/tmp"}
NODE = Node(rootfs="/r", node_name="node-7", volumes=VOLUMES,
            host_paths={"/run/nodewarden": "/k/lock"}, cgroups_path="/kubepods/pod1/c1")
CHART_CAPS = {"BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH", "KILL",
              "SYS_RESOURCE", "SYS_NICE"}


def render(*sets: str) -> dict[str, dict]:
    if not HELM.exists() and not shutil.which("helm"):
        pytest.skip("no helm (scripts/setup.sh installs it)")
    helm = str(HELM) if HELM.exists() else "helm"
    args = [a for s in sets for a in ("--set", s)]
    out = subprocess.run([helm, "template", "nw", str(REPO / "charts" / "nodewarden"), *args],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return {d["kind"]: d for d in yaml.safe_load_all(out) if d}


def agent(*sets: str, node: Node = NODE) -> dict:
    ds = render(*sets)["DaemonSet"]
    return translate(ds["spec"]["template"], "nodewarden", IMAGE, node).config


def mount(config: dict, dest: str) -> dict:
    [m] = [m for m in config["mounts"] if m["destination"] == dest]
    return m


def test_privileged_pod_shares_the_hosts_pids_and_gets_every_capability():
    c = agent()
    types = [n["type"] for n in c["linux"]["namespaces"]]
    assert "pid" not in types and "network" in types and "cgroup" not in types
    assert set(c["process"]["capabilities"]["effective"]) == {f"CAP_{x}" for x in ALL_CAPS}
    assert "seccomp" not in c["linux"] and "maskedPaths" not in c["linux"]
    assert "ro" not in mount(c, "/sys")["options"]
    assert c["root"] == {"path": "/r", "readonly": True}
    assert c["process"]["user"]["uid"] == 0
    assert c["process"]["args"] == ["nodewarden", "run", "--config",
                                    "/etc/nodewarden/config/config.yaml"]
    assert "NODE_NAME=node-7" in c["process"]["env"]
    assert "PYTHONUNBUFFERED=1" in c["process"]["env"]   # the image's own environment
    assert c["linux"]["cgroupsPath"] == "/kubepods/pod1/c1"
    assert c["linux"]["resources"]["memory"] == {"limit": 512 * 2**20}
    assert c["linux"]["resources"]["cpu"] == {"period": 100000, "quota": 100000,
                                              "shares": 102}


def test_host_mounts_and_configmaps_land_where_the_chart_mounts_them():
    c = agent()
    expect = {"/host/proc": ("/proc", "ro"), "/sys/kernel/tracing": ("/sys/kernel/tracing", "ro"),
              "/sys/fs/cgroup": ("/sys/fs/cgroup", "rw"), "/lib/modules": ("/lib/modules", "ro"),
              "/usr/src": ("/usr/src", "ro"), "/run/nodewarden": ("/k/lock", "rw"),
              "/etc/nodewarden/config": ("/k/config", "ro"),
              "/etc/nodewarden/rules.d": ("/k/rules", "ro"), "/tmp": ("/k/tmp", "rw")}
    for dest, (source, mode) in expect.items():
        m = mount(c, dest)
        assert m["source"] == source and m["type"] == "bind", m
        assert "rbind" in m["options"] and mode in m["options"], m
    # the default mounts come first, the pod's bind mounts after, over them
    dests = [m["destination"] for m in c["mounts"]]
    assert dests.index("/sys") < dests.index("/sys/fs/cgroup")


def test_host_path_types_are_handed_to_the_runner():
    ds = render()["DaemonSet"]
    t = translate(ds["spec"]["template"], "nodewarden", IMAGE, NODE)
    kinds = {h.path: h.type for h in t.host_paths}
    assert kinds["/proc"] == "Directory" and kinds["/usr/src"] == ""
    assert kinds["/k/lock"] == "DirectoryOrCreate"


def test_least_privilege_gets_exactly_the_charts_capabilities():
    c = agent("securityContext.mode=leastPrivilege")
    caps = c["process"]["capabilities"]
    assert set(caps["effective"]) == {f"CAP_{x}" for x in CHART_CAPS}
    assert caps["bounding"] == caps["effective"] == caps["permitted"]
    assert "seccomp" not in c["linux"]                     # Unconfined, as the chart says
    assert "apparmorProfile" not in c["process"]
    assert "/proc/kcore" in c["linux"]["maskedPaths"]
    assert "ro" in mount(c, "/sys")["options"]


def test_capabilities_the_runtime_lacks_are_withheld_and_said():
    node = Node(**{**NODE.__dict__, "missing_caps": frozenset({"SYS_RESOURCE"})})
    ds = render("securityContext.mode=leastPrivilege")["DaemonSet"]
    t = translate(ds["spec"]["template"], "nodewarden", IMAGE, node)
    assert t.withheld_caps == ["SYS_RESOURCE"]
    assert "CAP_SYS_RESOURCE" not in t.config["process"]["capabilities"]["effective"]


def test_localhost_apparmor_profile_is_named():
    c = agent("securityContext.mode=leastPrivilege",
              "securityContext.leastPrivilege.appArmorProfile.type=Localhost",
              "securityContext.leastPrivilege.appArmorProfile.localhostProfile=nw")
    assert c["process"]["apparmorProfile"] == "nw"


def test_the_helm_test_pod_runs_as_nobody_without_capabilities_and_with_seccomp():
    hook = render()["Pod"]
    with pytest.raises(UnsupportedField, match="RuntimeDefault"):
        translate(hook, "endpoints", IMAGE, Node(rootfs="/r", node_name="n"))
    profile = {"defaultAction": "SCMP_ACT_ALLOW"}
    node = Node(rootfs="/r", node_name="n", runtime_default_seccomp=profile, netns="/ns")
    c = translate(hook, "endpoints", IMAGE, node).config
    assert c["process"]["user"]["uid"] == 65534
    assert c["process"]["capabilities"]["effective"] == []
    assert c["process"]["noNewPrivileges"] is True
    assert c["linux"]["seccomp"] == profile
    assert {"type": "network", "path": "/ns"} in c["linux"]["namespaces"]
    assert {"type": "pid"} in c["linux"]["namespaces"]
    assert c["process"]["args"][:2] == ["python3", "-c"]


def _template(*sets: str) -> dict:
    return copy.deepcopy(render(*sets)["DaemonSet"]["spec"]["template"])


@pytest.mark.parametrize("where, field, value", [
    ("pod", "shareProcessNamespace", True),
    ("pod", "initContainers", []),
    ("container", "lifecycle", {}),
    ("container", "envFrom", []),
    ("securityContext", "procMount", "Unmasked"),
    ("securityContext", "sysctls", []),
])
def test_a_field_it_does_not_understand_fails_the_translation(where, field, value):
    t = _template()
    target = {"pod": t["spec"], "container": t["spec"]["containers"][0],
              "securityContext": t["spec"]["containers"][0]["securityContext"]}[where]
    target[field] = value
    with pytest.raises(UnsupportedField, match=field):
        translate(t, "nodewarden", IMAGE, NODE)


def test_values_it_does_not_understand_fail_too():
    t = _template()
    t["spec"]["containers"][0]["env"].append(
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    with pytest.raises(UnsupportedField, match="status.podIP"):
        translate(t, "nodewarden", IMAGE, NODE)
    t = _template()
    t["spec"]["volumes"][-1]["hostPath"]["type"] = "Socket"
    with pytest.raises(UnsupportedField, match="Socket"):
        translate(t, "nodewarden", IMAGE, NODE)
    t = _template()
    t["spec"]["volumes"].append({"name": "x", "persistentVolumeClaim": {"claimName": "c"}})
    with pytest.raises(UnsupportedField, match="persistentVolumeClaim"):
        translate(t, "nodewarden", IMAGE, NODE)
    # a ConfigMap volume the runner gave no directory for
    with pytest.raises(UnsupportedField, match="rules"):
        translate(_template(), "nodewarden", IMAGE,
                  Node(rootfs="/r", node_name="n", volumes={"config": "/c", "tmp": "/t"}))
    t = _template("securityContext.mode=leastPrivilege")
    t["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_FLY"]
    with pytest.raises(UnsupportedField, match="NET_FLY"):
        translate(t, "nodewarden", IMAGE, NODE)
