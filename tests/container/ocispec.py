"""A pod spec's container, as `helm template` renders it, translated into the OCI runtime
spec (config.json) that `runc run` takes: what a kubelet and containerd would hand runc.

Pure: no file is read or written. Every field of the pod and the container is either
translated or named here as someone else's (the scheduler's, the kubelet's probes, the
API server's); any other field raises UnsupportedField, so a chart change the harness
does not understand fails the tests instead of being run without it.

What containerd does and this follows: namespaces mount, uts, ipc, network (unless
hostNetwork), pid (unless hostPID), no cgroup namespace on a cgroup v1 host; /proc, /dev,
/sys and /sys/fs/cgroup mounted read-only unless privileged; hostPath volumes as recursive
bind mounts; a privileged container gets every capability, no seccomp, masked or read-only
path and a writable /sys; otherwise exactly the capabilities added after `drop: [ALL]`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# capabilities a container gets from containerd when it drops none (its default set)
DEFAULT_CAPS = ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID",
                "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL",
                "AUDIT_WRITE")
ALL_CAPS = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
            "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST",
            "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO",
            "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
            "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
            "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM",
            "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE")
# containerd's masked and read-only paths of an unprivileged container
MASKED = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
          "/sys/firmware")
READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"

# fields that are not the container runtime's business, and whose they are
POD_ELSEWHERE = {
    "serviceAccountName": "the API server (token: automountServiceAccountToken)",
    "priorityClassName": "the scheduler", "tolerations": "the scheduler",
    "nodeSelector": "the scheduler", "affinity": "the scheduler",
    "imagePullSecrets": "the image pull", "restartPolicy": "the kubelet",
    "terminationGracePeriodSeconds": "the kubelet's stop (the runner's)",
    "dnsPolicy": "cluster DNS (not run here)",
}
CONTAINER_ELSEWHERE = {
    "name": "the pod", "image": "the runner (it unpacks the image)",
    "imagePullPolicy": "the image pull", "ports": "the Service (nothing to publish on runc)",
    "startupProbe": "the kubelet's probes (the runner's)",
    "livenessProbe": "the kubelet's probes (the runner's)",
    "readinessProbe": "the kubelet's probes (the runner's)",
}


class UnsupportedField(ValueError):
    """A pod-spec field, or a value of one, that this translation does not understand."""


@dataclass(frozen=True)
class Image:
    """The parts of an OCI image config a container starts from."""

    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = "/"


@dataclass(frozen=True)
class Node:
    """What the kubelet of this node decides: paths, names, and what the runtime lacks."""

    rootfs: str
    node_name: str
    # directories holding the configMap/secret/emptyDir volumes, by volume name
    volumes: Mapping[str, str] = field(default_factory=dict)
    # hostPath paths redirected elsewhere on the host (a test's own lock directory)
    host_paths: Mapping[str, str] = field(default_factory=dict)
    cgroups_path: str = ""
    # capabilities the runtime itself does not hold, so cannot grant (its bounding set)
    missing_caps: frozenset[str] = frozenset()
    # the seccomp profile `RuntimeDefault` stands for; None: refused
    runtime_default_seccomp: Mapping[str, Any] | None = None
    # a network namespace to join (the pod's, for a second container of it)
    netns: str = ""
    # the service-account token directory; "" means there is no API server here: no token
    # mount and no KUBERNETES_SERVICE_* variables (the agent then runs without enrichment)
    service_account: str = ""


@dataclass(frozen=True)
class HostPath:
    """A host path the runner must check or create before `runc run` (hostPath `type`)."""

    path: str
    type: str


@dataclass
class Translation:
    """The OCI config and what the runner must do on the host first."""

    config: dict[str, Any]
    host_paths: list[HostPath]
    # capabilities the chart asks for that the runtime could not grant (Node.missing_caps)
    withheld_caps: list[str]


def _check(obj: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    unknown = sorted(set(obj) - set(known))
    if unknown:
        raise UnsupportedField(f"{where}: {', '.join(unknown)} not understood")


def _quantity(text: str | int | float) -> float:
    """A Kubernetes quantity (`100m`, `512Mi`, `1`) as a number."""
    m = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|k|M|G)?", str(text))
    if not m:
        raise UnsupportedField(f"quantity {text!r} not understood")
    scale = {None: 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6,
             "G": 1e9}[m.group(2)]
    return float(m.group(1)) * scale


def _resources(res: Mapping[str, Any]) -> dict[str, Any]:
    _check(res, ("requests", "limits"), "resources")
    for part in res.values():
        _check(part, ("cpu", "memory"), "resources")
    limits, requests = res.get("limits", {}), res.get("requests", {})
    out: dict[str, Any] = {}
    if "memory" in limits:
        out["memory"] = {"limit": int(_quantity(limits["memory"]))}
    cpu: dict[str, int] = {}
    if "cpu" in limits:
        cpu |= {"period": 100000, "quota": int(_quantity(limits["cpu"]) * 100000)}
    if "cpu" in requests:
        cpu["shares"] = max(2, int(_quantity(requests["cpu"]) * 1024))
    if cpu:
        out["cpu"] = cpu
    return out


def _env(container: Mapping[str, Any], image: Image, node: Node) -> list[str]:
    env = dict(e.split("=", 1) for e in image.env)
    for item in container.get("env", []):
        _check(item, ("name", "value", "valueFrom"), "env[]")
        if "valueFrom" in item:
            source = item["valueFrom"]
            _check(source, ("fieldRef",), f"env {item['name']}.valueFrom")
            path = source["fieldRef"].get("fieldPath")
            if path != "spec.nodeName":
                raise UnsupportedField(f"env {item['name']}: fieldRef {path!r} not understood")
            env[item["name"]] = node.node_name
        else:
            env[item["name"]] = str(item.get("value", ""))
    env.setdefault("HOSTNAME", node.node_name)
    return [f"{k}={v}" for k, v in env.items()]


def _capabilities(sc: Mapping[str, Any], node: Node) -> tuple[list[str], list[str]]:
    """(the capabilities granted, the ones asked for but withheld by the runtime)."""
    if sc.get("privileged"):
        wanted = list(ALL_CAPS)
    else:
        caps = sc.get("capabilities", {})
        _check(caps, ("add", "drop"), "securityContext.capabilities")
        drop = set(caps.get("drop", []))
        wanted = [] if "ALL" in drop else [c for c in DEFAULT_CAPS if c not in drop]
        wanted += [c for c in caps.get("add", []) if c not in wanted]
    unknown = [c for c in wanted if c not in ALL_CAPS]
    if unknown:
        raise UnsupportedField(f"capabilities {unknown} not understood")
    granted = [c for c in wanted if c not in node.missing_caps]
    withheld = [c for c in wanted if c in node.missing_caps and not sc.get("privileged")]
    return granted, withheld


def _profile(kind: str, profile: Mapping[str, Any] | None, node: Node) -> Any:
    """The seccomp profile (dict or None) or AppArmor profile name ("" = none)."""
    if profile is None:
        return None if kind == "seccomp" else ""
    _check(profile, ("type", "localhostProfile"), f"{kind}Profile")
    kind_of = profile["type"]
    if kind_of == "Unconfined":
        return None if kind == "seccomp" else ""
    if kind == "seccomp" and kind_of == "RuntimeDefault":
        if node.runtime_default_seccomp is None:
            raise UnsupportedField("seccompProfile RuntimeDefault: no runtime default given")
        return dict(node.runtime_default_seccomp)
    if kind == "appArmor" and kind_of in ("RuntimeDefault", "Localhost"):
        return profile.get("localhostProfile", "runtime/default")
    raise UnsupportedField(f"{kind}Profile type {kind_of!r} not understood")


SC_KNOWN = ("runAsUser", "runAsGroup", "runAsNonRoot", "readOnlyRootFilesystem", "privileged",
            "capabilities", "seccompProfile", "appArmorProfile", "allowPrivilegeEscalation")


def _security(pod_sc: Mapping[str, Any], sc: Mapping[str, Any], annotations: Mapping[str, str],
              name: str, node: Node) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(process fields, linux fields, withheld capabilities) of the security contexts."""
    _check(pod_sc, ("runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile"),
           "pod securityContext")
    _check(sc, SC_KNOWN, "securityContext")
    merged = {**pod_sc, **sc}
    uid = int(merged.get("runAsUser", 0))
    if merged.get("runAsNonRoot") and uid == 0:
        raise UnsupportedField("runAsNonRoot with uid 0: the kubelet refuses to start it")
    privileged = bool(sc.get("privileged"))
    granted, withheld = _capabilities(sc, node)
    caps = [f"CAP_{c}" for c in granted]
    process: dict[str, Any] = {
        "user": {"uid": uid, "gid": int(merged.get("runAsGroup", 0))},
        "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
        # privilege escalation is allowed unless said (or implied by no caps); as containerd
        "noNewPrivileges": merged.get("allowPrivilegeEscalation") is False,
    }
    linux: dict[str, Any] = {}
    if not privileged:
        seccomp = _profile("seccomp", merged.get("seccompProfile"), node)
        if seccomp is not None:
            linux["seccomp"] = seccomp
        apparmor = _profile("appArmor", sc.get("appArmorProfile"), node)
        note = annotations.get(APPARMOR_ANNOTATION + name)
        if note and note != "unconfined":
            apparmor = note.removeprefix("localhost/")
        if apparmor:
            process["apparmorProfile"] = apparmor
        linux["maskedPaths"] = list(MASKED)
        linux["readonlyPaths"] = list(READONLY)
    return process, linux, withheld


def _base_mounts(privileged: bool) -> list[dict[str, Any]]:
    ro = [] if privileged else ["ro"]
    return [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", *ro]},
    ]


def _volume_source(vol: Mapping[str, Any], node: Node, needs: list[HostPath]) -> str:
    _check(vol, ("name", "configMap", "secret", "emptyDir", "hostPath"), "volumes[]")
    name = vol["name"]
    if "hostPath" in vol:
        hp = vol["hostPath"]
        _check(hp, ("path", "type"), f"volume {name}.hostPath")
        kind = hp.get("type", "")
        if kind not in ("", "Directory", "DirectoryOrCreate"):
            raise UnsupportedField(f"volume {name}: hostPath type {kind!r} not understood")
        path = node.host_paths.get(hp["path"], hp["path"])
        needs.append(HostPath(path, kind))
        return path
    kind = next(k for k in ("configMap", "secret", "emptyDir") if k in vol)
    known = {"configMap": ("name", "items", "defaultMode", "optional"),
             "secret": ("secretName", "items", "defaultMode", "optional"),
             "emptyDir": ("sizeLimit", "medium")}[kind]
    _check(vol[kind] or {}, known, f"volume {name}.{kind}")
    if name not in node.volumes:
        raise UnsupportedField(f"volume {name} ({kind}): the runner gave no directory for it")
    return node.volumes[name]


def _mounts(pod: Mapping[str, Any], container: Mapping[str, Any], node: Node,
            privileged: bool) -> tuple[list[dict[str, Any]], list[HostPath]]:
    needs: list[HostPath] = []
    sources = {v["name"]: _volume_source(v, node, needs) for v in pod.get("volumes", [])}
    mounts = _base_mounts(privileged)
    if node.service_account:
        mounts.append({"destination": "/var/run/secrets/kubernetes.io/serviceaccount",
                       "type": "bind", "source": node.service_account,
                       "options": ["rbind", "ro"]})
    for m in container.get("volumeMounts", []):
        _check(m, ("name", "mountPath", "readOnly"), "volumeMounts[]")
        if m["name"] not in sources:
            raise UnsupportedField(f"volumeMount {m['name']}: no such volume")
        opts = ["rbind", "rprivate", "ro" if m.get("readOnly") else "rw"]
        mounts.append({"destination": m["mountPath"], "type": "bind",
                       "source": sources[m["name"]], "options": opts})
    return mounts, needs


POD_KNOWN = ("hostPID", "hostNetwork", "containers", "volumes", "securityContext",
             "automountServiceAccountToken", *POD_ELSEWHERE)
CONTAINER_KNOWN = ("command", "args", "env", "resources", "securityContext", "volumeMounts",
                   "workingDir", *CONTAINER_ELSEWHERE)


def translate(template: Mapping[str, Any], name: str, image: Image, node: Node) -> Translation:
    """The OCI runtime spec of container `name` of a pod template ({metadata, spec}, as a
    DaemonSet's spec.template or a Pod)."""
    _check(template, ("metadata", "spec", "apiVersion", "kind"), "pod")
    metadata, pod = template.get("metadata", {}), template["spec"]
    _check(pod, POD_KNOWN, "pod spec")
    [container] = [c for c in pod["containers"] if c["name"] == name]
    _check(container, CONTAINER_KNOWN, f"container {name}")
    sc = container.get("securityContext", {})
    privileged = bool(sc.get("privileged"))
    process, linux, withheld = _security(pod.get("securityContext", {}), sc,
                                         metadata.get("annotations", {}), name, node)
    args = list(container.get("command", image.entrypoint))
    args += container.get("args", [] if "command" in container else image.cmd)
    process |= {"terminal": False, "args": args, "env": _env(container, image, node),
                "cwd": container.get("workingDir", image.working_dir or "/")}
    mounts, needs = _mounts(pod, container, node, privileged)
    namespaces = [{"type": t} for t in ("mount", "uts", "ipc")]
    if not pod.get("hostPID"):
        namespaces.append({"type": "pid"})
    if node.netns:
        namespaces.append({"type": "network", "path": node.netns})
    elif not pod.get("hostNetwork"):
        namespaces.append({"type": "network"})
    linux |= {"namespaces": namespaces,
              "resources": {"devices": [{"allow": privileged, "access": "rwm"}]}}
    linux["resources"] |= _resources(container.get("resources", {}))
    if node.cgroups_path:
        linux["cgroupsPath"] = node.cgroups_path
    config = {"ociVersion": "1.0.2", "process": process, "hostname": node.node_name,
              "root": {"path": node.rootfs,
                       "readonly": bool(sc.get("readOnlyRootFilesystem"))},
              "mounts": mounts, "linux": linux}
    return Translation(config, needs, withheld)
