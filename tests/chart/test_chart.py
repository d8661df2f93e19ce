"""The Helm chart (charts/nodewarden), rendered by a real helm binary.

helm comes from scripts/setup.sh (scripts/get-helm.sh puts it beside the venv's python).
Every rendered object is validated, strictly, against the Kubernetes schemas of each minor
version the chart claims in Chart.yaml; then the tests check what the agent needs from its
pod (host PID, the host's mounts, config and rules mounted for hot reload, least RBAC) and
that the Slack webhook URL never lands anywhere but a Secret.
"""

from __future__ import annotations

import base64
import functools
import http.server
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions, major_minor

import agent
from agent.engine import loader

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "nodewarden"
NONDEFAULT = Path(__file__).with_name("values-nondefault.yaml")
HELM = Path(sys.executable).parent / "helm"
RELEASE, NAMESPACE = "nw", "security"
SLACK_URL = "https://hooks.slack.com/services/T000/B000/SECRET-TEST"
WITH_SLACK_URL = ("--set", "slack.enabled=true", "--set", f"slack.webhookUrl={SLACK_URL}")
NONDEFAULT_VALUES = ("-f", str(NONDEFAULT))
VALUE_SETS = {"default": (), "nondefault": NONDEFAULT_VALUES, "slack-url": WITH_SLACK_URL}
# the issue's list, plus DAC_READ_SEARCH (SECURITY.md: environ and fd of other users)
LEAST_PRIVILEGE_CAPS = {"BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH", "KILL",
                        "SYS_RESOURCE", "SYS_NICE"}

Doc = dict[str, Any]


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def _claimed_minimum() -> str | None:
    """X.Y of Chart.yaml's kubeVersion '>=X.Y.0-0' (None for any other form)."""
    claim = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    m = re.fullmatch(r">=\s*(\d+\.\d+)\.0-0", claim)
    return m.group(1) if m else None


# every minor version kubernetes-validate has schemas for, and those the chart claims (all
# of them when the claim is of a form these tests do not understand: that test fails)
KNOWN_VERSIONS = sorted({major_minor(v) for v in all_versions()}, key=_version_key)
CLAIMED_VERSIONS = [v for v in KNOWN_VERSIONS
                    if _version_key(v) >= _version_key(_claimed_minimum() or "0.0")]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real helm (offline, with its own config and cache directories)."""
    if not HELM.exists():
        pytest.fail(f"no helm at {HELM}: run scripts/setup.sh (scripts/get-helm.sh installs it)")
    home = Path(tempfile.gettempdir()) / "nodewarden-helm-home"
    env = dict(os.environ, HELM_CACHE_HOME=str(home / "cache"),
               HELM_CONFIG_HOME=str(home / "config"), HELM_DATA_HOME=str(home / "data"))
    p = subprocess.run([str(HELM), *args], capture_output=True, text=True, env=env, timeout=60,
                       check=False)
    if check and p.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} exited {p.returncode}:\n{p.stdout}{p.stderr}")
    return p


@functools.cache
def template_text(*args: str) -> str:
    return helm("template", RELEASE, str(CHART), "-n", NAMESPACE, *args).stdout


def render(*args: str) -> list[Doc]:
    """The objects `helm template` renders with these extra arguments."""
    return [d for d in yaml.safe_load_all(template_text(*args)) if d]


def refused(*args: str) -> str:
    """helm template must fail with these arguments; returns its error output."""
    p = helm("template", RELEASE, str(CHART), "-n", NAMESPACE, *args, check=False)
    assert p.returncode != 0, f"helm template {' '.join(args)} rendered:\n{p.stdout}"
    return p.stderr


def one(docs: list[Doc], kind: str, name_suffix: str = "") -> Doc:
    found = [d for d in docs if d["kind"] == kind
             and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"{len(found)} {kind} named *{name_suffix}"
    return found[0]


def daemonset(docs: list[Doc]) -> Doc:
    return one(docs, "DaemonSet")


def container(docs: list[Doc]) -> Doc:
    [c] = daemonset(docs)["spec"]["template"]["spec"]["containers"]
    return c


def config(docs: list[Doc]) -> dict[str, Any]:
    """The agent's config file as the chart writes it."""
    text = one(docs, "ConfigMap", "-config")["data"]["config.yaml"]
    cfg = yaml.safe_load(text)
    assert isinstance(cfg, dict)
    return cfg


def config_path(docs: list[Doc]) -> str:
    args = container(docs)["args"]
    return args[args.index("--config") + 1]


def volume_of_mount(docs: list[Doc], mount_path: str) -> Doc:
    pod = daemonset(docs)["spec"]["template"]["spec"]
    [m] = [m for m in container(docs)["volumeMounts"] if m["mountPath"] == mount_path]
    [v] = [v for v in pod["volumes"] if v["name"] == m["name"]]
    return v


def host_mounts(docs: list[Doc]) -> dict[str, tuple[str, bool]]:
    """hostPath on the node -> (path in the container, read-only)."""
    pod = daemonset(docs)["spec"]["template"]["spec"]
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    return {host[m["name"]]: (m["mountPath"], m.get("readOnly", False))
            for m in container(docs)["volumeMounts"] if m["name"] in host}


# --- helm's own checks -------------------------------------------------------------------

@pytest.mark.parametrize("values", ["default", "nondefault"])
@pytest.mark.parametrize("strict", [False, True], ids=["lint", "lint-strict"])
def test_helm_lint(values, strict):
    p = helm("lint", str(CHART), *VALUE_SETS[values], *(["--strict"] if strict else []))
    assert "0 chart(s) failed" in p.stdout, p.stdout


def test_values_schema_refuses_typos_and_bad_enums():
    assert "mode" in refused("--set", "mode=enforced")
    assert "deletepod" in refused("--set", "deletepod=true")
    assert "securityContext" in refused("--set", "securityContext.mode=root")
    assert "rules.txt" in refused("--set", "customRules.rules\\.txt=x")


def test_inconsistent_values_are_refused_with_the_fix():
    assert "slack.webhookUrl or slack.existingSecret" in refused("--set", "slack.enabled=true")
    assert "not both" in refused(*WITH_SLACK_URL, "--set", "slack.existingSecret=s")
    assert "not both" in refused(*NONDEFAULT_VALUES, "--set", "existingRulesConfigMap=mine")
    # a key the chart manages from its own value is not taken from `config`
    assert "config.mode is set by the chart" in refused("--set", "config.mode=enforce")
    assert "config.proc_root" in refused("--set", "config.proc_root=/proc")


# --- Kubernetes schemas --------------------------------------------------------------------

def test_kube_version_claim_is_what_helm_enforces():
    """Chart.yaml's kubeVersion: helm renders for each claimed version, refuses older ones,
    and kubernetes-validate has schemas for the claimed ones (from the minimum up)."""
    assert _claimed_minimum(), "Chart.yaml kubeVersion: the tests understand only '>=X.Y.0-0'"
    assert CLAIMED_VERSIONS and CLAIMED_VERSIONS[0] == _claimed_minimum()
    for v in KNOWN_VERSIONS:
        p = helm("template", RELEASE, str(CHART), "--kube-version", f"{v}.0", check=False)
        assert (p.returncode == 0) == (v in CLAIMED_VERSIONS), f"{v}: {p.stderr}"


def check_service_monitor(sm: Doc, docs: list[Doc]) -> None:
    """No schema for the Prometheus Operator's CRD in kubernetes-validate: check by hand
    that it would select the chart's Service and scrape its metrics port."""
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm) == {"apiVersion", "kind", "metadata", "spec"}
    svc = one(docs, "Service")
    spec = sm["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    selector = spec["selector"]["matchLabels"]
    assert selector and selector.items() <= svc["metadata"]["labels"].items()
    assert spec["namespaceSelector"]["matchNames"] == [svc["metadata"]["namespace"]]
    ports = {p["name"] for p in svc["spec"]["ports"]}
    assert spec["endpoints"], "no endpoints"
    for ep in spec["endpoints"]:
        assert ep["port"] in ports
        assert ep["path"] == "/metrics"
        assert re.fullmatch(r"(\d+(ms|s|m|h))+", ep["interval"]), ep["interval"]


@pytest.mark.parametrize("version", CLAIMED_VERSIONS)
def test_every_object_validates_strictly(version):
    for name, values in VALUE_SETS.items():
        docs = render("--kube-version", f"{version}.0", *values)
        assert len(docs) >= 8, f"{name}: only {[d['kind'] for d in docs]}"
        for doc in docs:
            what = f"{name} values, {doc['kind']} {doc['metadata']['name']}, Kubernetes {version}"
            if doc["apiVersion"] == "monitoring.coreos.com/v1":
                check_service_monitor(doc, docs)
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{what}: {'.'.join(map(str, e.path))}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                pytest.fail(f"{what}: {e.message}")


# --- what the agent needs from its pod ------------------------------------------------------

@pytest.mark.parametrize("values", ["default", "nondefault"])
def test_host_pid_and_the_hosts_mounts(values):
    docs = render(*VALUE_SETS[values])
    assert daemonset(docs)["spec"]["template"]["spec"]["hostPID"] is True
    mounts = host_mounts(docs)
    assert mounts["/proc"] == ("/host/proc", True)
    assert config(docs)["proc_root"] == "/host/proc"
    assert mounts["/sys/kernel/tracing"] == ("/sys/kernel/tracing", True)
    # writable: cgroup.kill for kill-container
    assert mounts["/sys/fs/cgroup"] == ("/sys/fs/cgroup", False)
    # BCC's /lib/modules/$(uname -r)/build links into /usr/src: the same paths, read-only
    assert mounts["/lib/modules"] == ("/lib/modules", True)
    assert mounts["/usr/src"] == ("/usr/src", True)
    # one agent per node: the lock's directory is the host's, writable
    assert mounts["/run/nodewarden"] == ("/run/nodewarden", False)
    assert config(docs)["lock_file"] == "/run/nodewarden/agent.lock"


def test_agents_of_two_releases_on_a_node_share_one_lock():
    """A second release's agent must see the first one's lock file and refuse to start."""
    def lock_volume(release: str) -> Doc:
        docs = [d for d in yaml.safe_load_all(
            helm("template", release, str(CHART), "-n", NAMESPACE).stdout) if d]
        return volume_of_mount(docs, str(Path(config(docs)["lock_file"]).parent))["hostPath"]

    assert lock_volume("one") == lock_volume("two") == {"path": "/run/nodewarden",
                                                        "type": "DirectoryOrCreate"}
    assert "config.lock_file is set by the chart" in refused("--set", "config.lock_file=/x")


def test_node_name_from_the_downward_api():
    env = {e["name"]: e for e in container(render())["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert "TZ" in {e["name"] for e in container(render(*NONDEFAULT_VALUES))["env"]}


def test_mode_is_audit_by_default_and_enforce_when_asked():
    assert yaml.safe_load((CHART / "values.yaml").read_text())["mode"] == "audit"
    assert config(render())["mode"] == "audit"
    assert config(render(*NONDEFAULT_VALUES))["mode"] == "enforce"
    assert config(render("--set", "mode=enforce"))["mode"] == "enforce"


@pytest.mark.parametrize("values", ["default", "nondefault"])
def test_config_file_is_what_the_pod_mounts_and_serves(values):
    docs = render(*VALUE_SETS[values])
    cfg = config(docs)
    assert cfg["rules"] == ["bundled", "/etc/nodewarden/rules.d"]
    port = one(docs, "Service")["spec"]["ports"][0]["port"]
    assert cfg["listen"] == f"0.0.0.0:{port}"
    [metrics] = [p for p in container(docs)["ports"] if p["name"] == "metrics"]
    assert metrics["containerPort"] == port
    path = Path(config_path(docs))
    assert path.name == "config.yaml"
    assert volume_of_mount(docs, str(path.parent))["configMap"]["name"].endswith("-config")
    assert container(docs)["command"] == ["nodewarden"]
    assert container(docs)["args"][0] == "run"


def test_nondefault_config_keys_and_switches_reach_the_config():
    cfg = config(render(*NONDEFAULT_VALUES))
    assert cfg["scan_interval"] == 5 and cfg["bpf"] == "required"
    assert cfg["delete_pod"] is True and cfg["kubernetes_events"] is False
    assert cfg["slack_min_severity"] == "critical"
    default = config(render())
    assert default["delete_pod"] is False and default["kubernetes_events"] is True
    assert "slack_webhook_url_file" not in default


@pytest.mark.parametrize("values", list(VALUE_SETS))
def test_config_loads_with_the_agents_loader(values, tmp_path):
    from agent.config import load_config

    docs = render(*VALUE_SETS[values])
    path = tmp_path / "config.yaml"
    path.write_text(one(docs, "ConfigMap", "-config")["data"]["config.yaml"])
    cfg = load_config(str(path))
    rendered = config(docs)
    assert cfg.mode == rendered["mode"]
    assert cfg.proc_root == "/host/proc" and cfg.listen == rendered["listen"]
    assert cfg.rules == ["bundled", "/etc/nodewarden/rules.d"]
    assert cfg.delete_pod is rendered["delete_pod"]
    assert cfg.kubernetes_events is rendered["kubernetes_events"]
    assert cfg.slack_webhook_url_file == rendered.get("slack_webhook_url_file", "")
    assert cfg.realtime is True


def test_the_chart_turns_realtime_on_and_config_can_turn_it_off():
    assert config(render())["realtime"] is True
    assert config(render("--set", "config.realtime=false"))["realtime"] is False


def test_config_and_rules_are_mounted_as_directories_for_hot_reload():
    """subPath mounts never see the kubelet's ..data swap: hot reload needs directories."""
    for values in VALUE_SETS.values():
        docs = render(*values)
        for m in container(docs)["volumeMounts"]:
            assert "subPath" not in m and "subPathExpr" not in m, m
        rules = volume_of_mount(docs, "/etc/nodewarden/rules.d")["configMap"]["name"]
        assert rules == one(docs, "ConfigMap", "-rules")["metadata"]["name"]
        # a checksum annotation would roll every agent on each rules edit
        annotations = daemonset(docs)["spec"]["template"]["metadata"].get("annotations", {})
        assert not [a for a in annotations if a.startswith("checksum/")]


def kubelet_configmap_dir(where: Path, data: dict[str, str]) -> Path:
    """A ConfigMap volume as the kubelet writes it: the files in a timestamped directory,
    a ..data symlink to it, and one symlink per key through ..data."""
    where.mkdir()
    stamp = where / "..2026_01_01_00_00_00.000000001"
    stamp.mkdir()
    for name, text in data.items():
        (stamp / name).write_text(text)
        (where / name).symlink_to(Path("..data") / name)
    (where / "..data").symlink_to(stamp.name)
    return where


def test_custom_rules_load_after_the_bundled_ones(tmp_path):
    docs = render(*NONDEFAULT_VALUES)
    data = one(docs, "ConfigMap", "-rules")["data"]
    assert set(data) == set(yaml.safe_load(NONDEFAULT.read_text())["customRules"])
    mounted = kubelet_configmap_dir(tmp_path / "rules.d", data)
    # the config's rule paths, with the mount replaced by the kubelet-like directory
    paths = [str(mounted) if p == "/etc/nodewarden/rules.d" else p for p in config(docs)["rules"]]
    assert str(mounted) in paths
    ruleset, problems = loader.check(paths)
    assert not problems, [str(p) for p in problems]
    assert ruleset is not None
    ids = {r.id for r in ruleset.all_rules}
    bundled = {r.id for r in loader.load([loader.bundled_rules_dir()]).all_rules}
    assert ids == bundled | {"chart-test-curl-from-workspace"}
    assert one(render(), "ConfigMap", "-rules")["data"] == {}


def test_existing_rules_config_map_replaces_the_charts():
    docs = render("--set", "existingRulesConfigMap=my-rules")
    assert not [d for d in docs if d["metadata"]["name"].endswith("-rules")]
    assert volume_of_mount(docs, "/etc/nodewarden/rules.d")["configMap"]["name"] == "my-rules"


# --- RBAC -----------------------------------------------------------------------------------

def granted(docs: list[Doc]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs of the chart's ClusterRole."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in one(docs, "ClusterRole")["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_cluster_role_grants_only_the_verbs_used():
    pods, events = ("", "pods"), ("", "events")
    assert granted(render()) == {pods: {"get", "list", "watch"}, events: {"create", "patch"}}
    assert granted(render(*NONDEFAULT_VALUES)) == {
        pods: {"get", "list", "watch", "delete"}, events: {"create", "patch"}}
    assert granted(render("--set", "deletePod=true"))[pods] == {"get", "list", "watch", "delete"}


@pytest.mark.parametrize("values", ["default", "nondefault"])
def test_binding_ties_the_role_to_the_pods_service_account(values):
    docs = render(*VALUE_SETS[values])
    account = daemonset(docs)["spec"]["template"]["spec"]["serviceAccountName"]
    assert one(docs, "ServiceAccount")["metadata"]["name"] == account
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": one(docs, "ClusterRole")["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account,
                                    "namespace": NAMESPACE}]


def test_rbac_and_service_account_can_be_left_to_the_user():
    docs = render("--set", "rbac.create=false", "--set", "serviceAccount.create=false",
                  "--set", "serviceAccount.name=mine")
    assert not {"ClusterRole", "ClusterRoleBinding", "ServiceAccount"} & {d["kind"] for d in docs}
    assert daemonset(docs)["spec"]["template"]["spec"]["serviceAccountName"] == "mine"
    assert "serviceAccount.name" in refused("--set", "serviceAccount.create=false")


# --- the Slack webhook URL ------------------------------------------------------------------

def test_slack_url_is_only_in_a_secret_mounted_as_the_configured_file():
    text = template_text(*WITH_SLACK_URL)
    assert SLACK_URL not in text, "the URL appears in clear in the rendered manifests"
    encoded = base64.b64encode(SLACK_URL.encode()).decode()
    docs = render(*WITH_SLACK_URL)
    holders = [d for d in docs if encoded in yaml.safe_dump(d)]
    assert [d["kind"] for d in holders] == ["Secret"]
    secret = holders[0]
    assert base64.b64decode(secret["data"]["webhook-url"]).decode() == SLACK_URL
    for m in container(docs)["volumeMounts"]:
        v = volume_of_mount(docs, m["mountPath"])
        if "secret" in v:
            assert v["secret"]["secretName"] == secret["metadata"]["name"]
            [item] = v["secret"]["items"]
            assert item["key"] == "webhook-url"
            assert config(docs)["slack_webhook_url_file"] == f"{m['mountPath']}/{item['path']}"
    assert "slack_webhook_url_file" in config(docs)
    for e in container(docs)["env"]:
        assert "value" not in e or encoded not in e["value"]


def test_slack_existing_secret_is_mounted_and_no_secret_rendered():
    docs = render(*NONDEFAULT_VALUES)
    assert "Secret" not in {d["kind"] for d in docs}
    mount = "/etc/nodewarden/slack"
    v = volume_of_mount(docs, mount)["secret"]
    assert v["secretName"] == "team-slack"
    assert v["items"] == [{"key": "url", "path": "url"}]
    assert config(docs)["slack_webhook_url_file"] == f"{mount}/url"


# --- security context, probes, scheduling ---------------------------------------------------

def test_privileged_by_default():
    sc = container(render())["securityContext"]
    assert sc["privileged"] is True
    assert "capabilities" not in sc
    assert sc["runAsUser"] == 0 and sc["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("version", ["1.29", "1.30"])
def test_least_privilege_drops_all_but_the_documented_capabilities(version):
    docs = render("--kube-version", f"{version}.0", *NONDEFAULT_VALUES)
    sc = container(docs)["securityContext"]
    assert sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == LEAST_PRIVILEGE_CAPS
    assert len(sc["capabilities"]["add"]) == len(LEAST_PRIVILEGE_CAPS)
    assert sc["seccompProfile"] == {"type": "Unconfined"}
    annotations = daemonset(docs)["spec"]["template"]["metadata"]["annotations"]
    apparmor_annotation = "container.apparmor.security.beta.kubernetes.io/nodewarden"
    if version == "1.29":  # the field arrived in 1.30
        assert "appArmorProfile" not in sc
        assert annotations[apparmor_annotation] == "unconfined"
    else:
        assert sc["appArmorProfile"] == {"type": "Unconfined"}
        assert apparmor_annotation not in annotations
    readme = (CHART / "README.md").read_text()
    for cap in LEAST_PRIVILEGE_CAPS:
        assert f"| `{cap}` |" in readme, f"README does not say why {cap} is needed"


@pytest.mark.parametrize("values", ["default", "nondefault"])
def test_probes_on_healthz_and_readyz(values):
    docs = render(*VALUE_SETS[values])
    c = container(docs)
    ports = {p["name"] for p in c["ports"]}
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["port"] in ports
        paths[probe] = get["path"]
    assert paths == {"startupProbe": "/healthz", "livenessProbe": "/healthz",
                     "readinessProbe": "/readyz"}


def test_scheduling_defaults():
    pod = daemonset(render())["spec"]["template"]["spec"]
    for taint in ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master"):
        assert any(tolerates(t, taint, "NoSchedule") for t in pod["tolerations"]), taint
    assert pod["priorityClassName"] == "system-node-critical"
    ds = daemonset(render())["spec"]
    assert ds["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    res = container(render())["resources"]
    assert set(res) == {"requests", "limits"}
    nd = daemonset(render(*NONDEFAULT_VALUES))["spec"]["template"]["spec"]
    assert "priorityClassName" not in nd
    assert nd["hostNetwork"] is True and nd["dnsPolicy"] == "ClusterFirstWithHostNet"


def tolerates(t: Doc, key: str, effect: str) -> bool:
    """Kubernetes' toleration matching, for a taint without a value."""
    if t.get("effect") not in (None, "", effect):
        return False
    if t.get("operator", "Equal") == "Exists":
        return t.get("key") in (None, "", key)
    return t.get("key") == key and t.get("value", "") == ""


def test_image_defaults_to_the_agents_version():
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"] == agent.__version__
    assert container(render())["image"] == f"ghcr.io/nodewarden/nodewarden:{agent.__version__}"
    assert container(render(*NONDEFAULT_VALUES))["image"] == \
        "registry.example.com/sec/nodewarden:9.9.9-test"


# --- Service, ServiceMonitor, helm test, NOTES ------------------------------------------------

def test_service_selects_the_agents_and_not_the_test_pod():
    docs = render()
    selector = one(docs, "Service")["spec"]["selector"]
    pod_labels = daemonset(docs)["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert selector == daemonset(docs)["spec"]["selector"]["matchLabels"]
    test_pod = one(docs, "Pod", "-test-endpoints")
    assert not selector.items() <= test_pod["metadata"]["labels"].items()


def test_service_monitor_only_when_enabled():
    assert "ServiceMonitor" not in {d["kind"] for d in render()}
    docs = render(*NONDEFAULT_VALUES)
    sm = one(docs, "ServiceMonitor")
    check_service_monitor(sm, docs)
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["endpoints"][0]["interval"] == "15s"


def test_network_policy_admits_only_the_given_peers_and_the_test_pod():
    assert "NetworkPolicy" not in {d["kind"] for d in render()}
    docs = render(*NONDEFAULT_VALUES)
    np = one(docs, "NetworkPolicy")
    agents = daemonset(docs)["spec"]["template"]["metadata"]["labels"]
    assert np["spec"]["podSelector"]["matchLabels"].items() <= agents.items()
    assert np["spec"]["policyTypes"] == ["Ingress"]
    [rule] = np["spec"]["ingress"]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    test_pod = one(docs, "Pod", "-test-endpoints")
    peers = rule["from"]
    assert peers[0]["podSelector"]["matchLabels"].items() <= test_pod["metadata"]["labels"].items()
    assert not peers[0]["podSelector"]["matchLabels"].items() <= agents.items()
    assert peers[1] == {"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}
    port_names = {p["name"] for p in container(docs)["ports"]}
    assert "metrics" in port_names


class _AgentEndpoints(http.server.BaseHTTPRequestHandler):
    """/readyz and /metrics as an agent serves them (metrics body set per server)."""

    def do_GET(self) -> None:
        body = {"/readyz": b"ready\n", "/metrics": self.server.metrics}.get(self.path)  # type: ignore[attr-defined]
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: Any) -> None:
        pass


def run_hook_script(script: str, metrics: bytes) -> subprocess.CompletedProcess[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AgentEndpoints)
    server.metrics = metrics  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        local = re.sub(r'base = "http://[^"]+"',
                       f'base = "http://127.0.0.1:{server.server_address[1]}"', script)
        assert local != script
        return subprocess.run([sys.executable, "-c", local], capture_output=True, text=True,
                              timeout=30, check=False)
    finally:
        server.shutdown()
        server.server_close()


def test_helm_test_hook_checks_readyz_and_metrics_through_the_service():
    docs = render(*NONDEFAULT_VALUES)
    pod = one(docs, "Pod", "-test-endpoints")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    [c] = pod["spec"]["containers"]
    assert c["image"] == container(docs)["image"]
    assert c["command"] == ["python3", "-c"]
    script = c["args"][0]
    svc = one(docs, "Service")
    port = svc["spec"]["ports"][0]["port"]
    assert f'base = "http://{svc["metadata"]["name"]}.{NAMESPACE}.svc:{port}"' in script
    ok = run_hook_script(script, b"nodewarden_build_info{version=\"0.1.0\"} 1.0\n")
    assert ok.returncode == 0, ok.stderr
    bad = run_hook_script(script, b"something_else 1\n")
    assert bad.returncode != 0 and "nodewarden_build_info" in bad.stderr


def test_notes_render_with_mode_and_how_to_see_findings():
    def notes(*args: str) -> str:
        out = helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run=client",
                   *args).stdout
        assert "NOTES:" in out, out
        return out.split("NOTES:", 1)[1]

    default = notes()
    assert "Mode: audit" in default and f"kubectl -n {NAMESPACE} logs" in default
    assert f"helm test {RELEASE}" in default
    enforce = notes(*NONDEFAULT_VALUES)
    assert "Mode: enforce" in enforce and "ENFORCE" in enforce
    assert "Secret team-slack" in enforce
    assert SLACK_URL not in notes(*WITH_SLACK_URL)


# --- documentation --------------------------------------------------------------------------

def _leaves(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        return [leaf for k, v in node.items() for leaf in _leaves(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")]


def _lookup(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node[part]
    return node


def _readme_rows() -> dict[str, str]:
    """The values table of the chart's README: key -> default cell."""
    rows = {}
    text = (CHART / "README.md").read_text()
    table = text.split("## Values", 1)[1]
    for line in table.splitlines():
        m = re.match(r"\| `([^`]+)` \| (.*?) \| .+ \|$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def _key_lines(text: str) -> dict[str, int]:
    """Dotted key -> 0-based line of the key in values.yaml."""
    out: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                out[prefix + k.value] = k.start_mark.line
                walk(v, f"{prefix}{k.value}.")

    root = yaml.compose(text)
    assert root is not None, "values.yaml is empty"
    walk(root, "")
    return out


def test_every_value_is_documented_in_values_yaml_and_the_readme():
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    rows = _readme_rows()
    lines = text.splitlines()
    key_lines = _key_lines(text)
    for leaf in _leaves(values):
        assert any(leaf == r or leaf.startswith(r + ".") for r in rows), \
            f"values.yaml {leaf} is not in the README's values table"
    for row, default in rows.items():
        assert row in key_lines, f"README documents {row}, which values.yaml does not have"
        above = lines[key_lines[row] - 1].strip()
        assert above.startswith("#"), f"values.yaml {row} has no comment above it"
        value = _lookup(values, row)
        if not isinstance(value, (dict, list)) or not value:
            assert yaml.safe_load(default.replace("`", "")) == value, \
                f"README says {row} defaults to {default}, values.yaml says {value!r}"


def test_webhook_url_and_key_come_only_from_the_users_secret():
    docs = render(*NONDEFAULT_VALUES)
    cfg = config(docs)
    assert cfg["webhook"] == {"url_file": "/etc/nodewarden/webhook/url",
                              "hmac_key_file": "/etc/nodewarden/webhook/hmac-key",
                              "min_severity": "high", "rate_per_second": 2}
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    vol = next(v for v in pod["volumes"] if v["name"] == "webhook")
    assert vol["secret"]["secretName"] == "team-siem"
    assert vol["secret"]["items"] == [{"key": "endpoint", "path": "url"},
                                      {"key": "signing-key", "path": "hmac-key"}]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "webhook")
    assert mount["mountPath"] == "/etc/nodewarden/webhook" and mount["readOnly"]
    assert not [d for d in docs if d["kind"] == "Secret" and "webhook" in d["metadata"]["name"]]
    default = render()
    assert "webhook" not in config(default)
    assert not [v for v in one(default, "DaemonSet")["spec"]["template"]["spec"]["volumes"]
                if v["name"] == "webhook"]


def test_webhook_needs_a_secret_and_its_chart_set_keys_are_refused():
    p = helm("template", RELEASE, str(CHART), "--set", "webhook.enabled=true", check=False)
    assert p.returncode != 0 and "webhook.enabled needs webhook.existingSecret" in p.stderr
    p = helm("template", RELEASE, str(CHART), "--set", "config.webhook.url_file=/x", check=False)
    assert p.returncode != 0 and "config.webhook.url_file is set by the chart" in p.stderr
