"""The chart's pod run for real: the agent image under runc as the rendered DaemonSet says,
beside tenant containers of the same image in kubelet-shaped cgroups.

A pod here is a network namespace held by a process (the sandbox, as the pause container
holds one), the fake API server of tests/integration listening in it (so the agent resolves
pods by the uid it reads from the kernel's cgroups), and the agent container joining it.
Needs root, runc and buildah (`make image` installs them) and eBPF: the tests are marked
`ebpf`, so under NODEWARDEN_REQUIRE_EBPF=1 (CI) a missing tool fails them.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.container import runc
from tests.container.ocispec import ALL_CAPS, Image, Node, translate
from tests.integration.kube_apiserver import pod as pod_object

NODE = "node-1"
TOKEN = "agent-token"
WORKSPACE = "ws-runc"
# what a runtime default seccomp profile refuses that matters to a test pod: no mounts, no
# BPF, no perf events, no ptrace (the Docker and containerd defaults refuse these too)
RUNTIME_DEFAULT_SECCOMP = {
    "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
    "syscalls": [{"names": ["mount", "umount2", "bpf", "perf_event_open", "ptrace",
                            "kexec_load", "init_module", "finit_module", "unshare", "setns"],
                  "action": "SCMP_ACT_ERRNO"}]}


@pytest.fixture(scope="session")
def image(ebpf: None) -> tuple[Path, Image]:
    """The agent image (built by scripts/image.sh when the tree changed), unpacked."""
    try:
        runc.require_tools()
        return runc.unpack(runc.build_image())
    except runc.Missing as e:
        pytest.skip(str(e))


def missing_caps() -> frozenset[str]:
    return frozenset(ALL_CAPS) - runc.bounding_caps()


class Sandbox:
    """A pod's network namespace, held by a sleeping process, with lo up."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["unshare", "--net", "--", "sleep", "infinity"],
                                     start_new_session=True)
        self.netns = f"/proc/{self.proc.pid}/ns/net"
        deadline = time.monotonic() + 10
        while os.readlink(self.netns) == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "unshare --net did not happen"
            time.sleep(0.02)
        subprocess.run(["nsenter", f"--net={self.netns}", "ip", "link", "set", "lo", "up"],
                       check=True, timeout=30)

    def spawn(self, argv: list[str], **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(["nsenter", f"--net={self.netns}", *argv], text=True,
                                start_new_session=True, **kw)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Tenant:
    """A tenant pod's container: the image's root read-only, /work (bind-mounted, the
    tenant's files) holding copies of /bin/sleep under the names it asks for, the workspace
    marker in its environment, uid 1000, in the cgroup the kubelet would give it."""

    def __init__(self, tmp: Path, rootfs: Path, image: Image, driver: str,
                 argv: list[str], names: tuple[str, ...] = ("xmrig", "nw-evil")) -> None:
        self.pod_uid = str(uuid.uuid4())
        self.cid = secrets.token_hex(32)
        self.work = work = tmp / f"work-{self.cid[:8]}"
        work.mkdir(mode=0o755)
        for name in names:
            shutil.copy("/bin/sleep", work / name)
        spec = {"spec": {"containers": [{
            "name": "work", "image": "tenant", "command": argv,
            "env": [{"name": "WORKSPACE_ID", "value": WORKSPACE}],
            "securityContext": {"runAsUser": 1000, "readOnlyRootFilesystem": True},
            "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
            "volumes": [{"name": "work", "emptyDir": {}}]}}
        node = Node(rootfs=str(rootfs), node_name=NODE, volumes={"work": str(work)},
                    cgroups_path=runc.pod_cgroup(driver, self.pod_uid, self.cid),
                    missing_caps=missing_caps())
        config = translate(spec, "work", image, node).config
        # on a machine shared with other test runs, their enforcing agents kill any miner
        # they see: wait for them to be gone (none runs in CI beside this one)
        for attempt in range(60):
            try:
                self.ctr = runc.Container(tmp / f"bundle-{self.cid[:8]}-{attempt}", config)
                break
            except runc.Exited:
                time.sleep(1)
        else:
            raise AssertionError(f"{argv} never stayed up: something kills it at once")

    def exec_detached(self, argv: list[str]) -> None:
        res = self.ctr.exec(argv, detach=True)
        assert res.returncode == 0, res.stderr

    def running(self) -> bool:
        return self.ctr.state().get("status") == "running"

    def pod(self) -> dict[str, Any]:
        """Its pod as the API server lists it: the uid, but no container status yet (so
        the agent can only resolve it by the uid in the kernel's cgroup path)."""
        return pod_object("tenants", f"tenant-{self.cid[:6]}", self.pod_uid, NODE)


class AgentPod:
    """The chart's DaemonSet pod (rendered with `values`) run under runc in a sandbox with
    the fake API server; findings from its stdout, log from its stderr."""

    def __init__(self, tmp: Path, rootfs: Path, image: Image, values: dict[str, Any],
                 pods: list[dict[str, Any]]) -> None:
        self.tmp, self.rootfs, self.image = tmp, rootfs, image
        self.sandbox = Sandbox()
        pods_file = tmp / "pods.json"
        pods_file.write_text(json.dumps(pods))
        self.api = self.sandbox.spawn([sys.executable, "-m", "tests.container.apiserver",
                                       TOKEN, str(pods_file)], cwd=runc.REPO,
                                      stdout=subprocess.PIPE)
        assert self.api.stdout is not None
        port = int(self.api.stdout.readline().split()[1])
        scratch = tmp / "emptydir-tmp"
        scratch.mkdir()
        (scratch / "kubeconfig").write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "u", "user": {"token": TOKEN}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
        values = {**values, "config": {"kubeconfig": "/tmp/kubeconfig", "scan_interval": 2,
                                       **values.get("config", {})}}
        self.objects = runc.render(values)
        [ds] = self.objects["DaemonSet"]
        maps = {c["metadata"]["name"]: c for c in self.objects["ConfigMap"]}
        volumes = {"tmp": str(scratch)}
        for vol in ds["spec"]["template"]["spec"]["volumes"]:
            if "configMap" in vol:
                cm = maps[vol["configMap"]["name"]]
                volumes[vol["name"]] = str(runc.configmap_dir(cm, tmp / vol["name"]))
        node = Node(rootfs=str(rootfs), node_name=NODE, volumes=volumes,
                    host_paths={"/run/nodewarden": str(tmp / "node-lock")},
                    cgroups_path=runc.pod_cgroup("cgroupfs", str(uuid.uuid4()),
                                                 secrets.token_hex(32), "burstable"),
                    missing_caps=missing_caps(), netns=self.sandbox.netns)
        self.translation = translate(ds["spec"]["template"], "nodewarden", image, node)
        runc.prepare_host(self.translation)
        self.findings: queue.Queue[dict[str, Any]] = queue.Queue()
        self.all_findings: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self.ready = threading.Event()
        self.ctr = runc.Container(tmp / "bundle-agent", self.translation.config,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        threading.Thread(target=self._out, daemon=True).start()
        threading.Thread(target=self._err, daemon=True).start()
        if not self.ready.wait(120):
            raise AssertionError("agent not ready:\n" + "".join(self.stderr[-40:]))

    def _out(self) -> None:
        for line in self.ctr.proc.stdout:
            self.all_findings.append(json.loads(line))
            self.findings.put(self.all_findings[-1])

    def _err(self) -> None:
        for raw in self.ctr.proc.stderr:
            line = raw.decode("utf-8", "backslashreplace")
            self.stderr.append(line)
            if "ready:" in line:
                self.ready.set()

    def finding(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 20
                ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                f = self.findings.get(timeout=0.5)
            except queue.Empty:
                continue
            if pred(f):
                return f
        Path(self.tmp / "findings.json").write_text(json.dumps(self.all_findings, indent=1))
        seen = "\n".join(json.dumps({k: f.get(k) for k in ("rule", "outcome", "reason",
                                                            "source", "container")})
                         for f in self.all_findings)
        raise AssertionError(f"no such finding among\n{seen}\nlog:\n"
                             + "".join(self.stderr[-30:]) + _other_agents(self.ctr.pid))

    def get(self, path: str) -> tuple[int, str]:
        """GET of the agent's port from inside its container (a probe, as the kubelet's)."""
        code = ("import urllib.request as u, urllib.error as e\n"
                f"try:\n r = u.urlopen('http://127.0.0.1:9808{path}', timeout=5)\n"
                " print(r.status); print(r.read().decode())\n"
                "except e.HTTPError as x:\n print(x.code)\n")
        res = self.ctr.exec(["python3", "-c", code])
        assert res.returncode == 0, res.stderr
        status, _, body = res.stdout.partition("\n")
        return int(status), body

    def helm_test(self) -> subprocess.CompletedProcess[str]:
        """The chart's test hook pod, translated the same way and run in this pod's network
        namespace (the Service's DNS name is this pod's address)."""
        [hook] = self.objects["Pod"]
        script = hook["spec"]["containers"][0]["args"][0]
        svc = script.split('base = "http://', 1)[1].split(":", 1)[0]
        hook["spec"]["containers"][0]["args"][0] = script.replace(svc, "127.0.0.1")
        node = Node(rootfs=str(self.rootfs), node_name=NODE, missing_caps=missing_caps(),
                    runtime_default_seccomp=RUNTIME_DEFAULT_SECCOMP, netns=self.sandbox.netns)
        t = translate(hook, "endpoints", self.image, node)
        ctr = runc.Container(self.tmp / "bundle-hook", t.config, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            out, err = ctr.proc.communicate(timeout=150)
        finally:
            ctr.remove()
        return subprocess.CompletedProcess(["helm test"], ctr.proc.returncode,
                                           out.decode(), err.decode())

    def stop(self) -> int | None:
        self.ctr.signal(signal.SIGTERM)
        rc = self.ctr.wait(30)
        self.ctr.remove()
        self.api.kill()
        self.api.wait()
        self.sandbox.close()
        return rc


def _other_agents(ours: int) -> str:
    """Agents of other test runs on this machine: an enforcing one kills our miners too."""
    found = []
    for d in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            argv = (d / "cmdline").read_bytes().split(b"\0")
            if int(d.name) != ours and (b"agent" in argv or b"nodewarden" in argv[0]) \
                    and b"run" in argv:
                found.append(b" ".join(argv).decode(errors="replace")[:200])
    return "\nother agents running:\n" + "\n".join(found) if found else ""


@pytest.fixture
def tenants(tmp_path: Path, image: tuple[Path, Image]) -> Iterator[Callable[..., Tenant]]:
    made: list[Tenant] = []

    def make(driver: str, argv: list[str]) -> Tenant:
        made.append(Tenant(tmp_path, image[0], image[1], driver, argv))
        return made[-1]

    yield make
    for t in made:
        t.ctr.remove()


@pytest.fixture
def host_miner(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A miner-named copy of /bin/sleep started on the host, outside any container."""
    path = tmp_path / "host" / "xmrig"
    path.parent.mkdir()
    shutil.copy("/bin/sleep", path)
    for _ in range(60):   # other test runs' enforcing agents may kill it: as for Tenant
        p = subprocess.Popen([str(path), "600"], start_new_session=True)
        try:
            p.wait(0.5)
        except subprocess.TimeoutExpired:
            break
    else:
        raise AssertionError("a miner on the host never stayed up: something kills it")
    yield p
    with contextlib.suppress(ProcessLookupError):
        p.kill()
    p.wait()


@pytest.fixture
def agent_pod(tmp_path: Path, image: tuple[Path, Image]) -> Iterator[Callable[..., AgentPod]]:
    started: list[AgentPod] = []

    def start(values: dict[str, Any], pods: list[dict[str, Any]]) -> AgentPod:
        started.append(AgentPod(tmp_path, image[0], image[1], values, pods))
        return started[-1]

    yield start
    for a in started:
        rc = a.stop()
        err = "".join(a.stderr)
        assert "Traceback" not in err, err
        assert rc == 0, err
