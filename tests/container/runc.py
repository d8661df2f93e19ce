"""The host side of running the chart's pod under runc: the image unpacked into a root
filesystem, the chart rendered by helm, ConfigMaps laid out as the kubelet does, bundles,
and containers started, exec'd into and removed with Debian's `runc`.

`Missing` is raised, with what to do, when runc, buildah or the image cannot be had; the
fixtures turn it into a skip, which NODEWARDEN_REQUIRE_EBPF=1 (CI) turns into a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.container.ocispec import ALL_CAPS, Image, Translation

REPO = Path(__file__).resolve().parents[2]
# unpacked image root filesystems, one per image id, shared by test runs (read-only use)
ROOTFS_CACHE = Path(os.environ.get("NODEWARDEN_ROOTFS_CACHE", "/var/tmp/nodewarden-rootfs"))
HELM = REPO / ".venv" / "bin" / "helm"


class Exited(RuntimeError):
    """A container whose first process ended before runc reported it running."""


class Missing(RuntimeError):
    """A tool or the image is not to be had; the message says what to do."""


def _run(argv: Sequence[str], timeout: float = 600, **kw: Any) -> str:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                         check=False, **kw)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {res.returncode}:\n{res.stderr[-3000:]}")
    return res.stdout


def require_tools() -> None:
    """runc and buildah (or a running Docker engine) on PATH, as root."""
    if os.geteuid() != 0:
        raise Missing("containers need root")
    if not shutil.which("runc"):
        raise Missing("no runc: `make image` installs it (scripts/image-setup.sh)")
    if not shutil.which("buildah") and not shutil.which("docker"):
        raise Missing("no buildah nor docker: `make image` installs buildah")


def build_image() -> str:
    """`make image`'s script (a no-op when the image matches the tree): the reference."""
    res = subprocess.run([str(REPO / "scripts" / "image.sh")], capture_output=True, text=True,
                         timeout=1200, check=False)
    if res.returncode != 0:
        raise Missing(f"the image cannot be built (scripts/image.sh):\n{res.stderr[-3000:]}")
    return res.stdout.strip().splitlines()[-1]


def _docker() -> bool:
    return bool(shutil.which("docker")) and subprocess.run(
        ["docker", "info"], capture_output=True, check=False, timeout=30).returncode == 0


def unpack(ref: str) -> tuple[Path, Image]:
    """The image's root filesystem (unpacked once per image id) and its config."""
    if _docker():
        info = json.loads(_run(["docker", "image", "inspect", ref]))[0]
        image_id, cfg = info["Id"].split(":")[-1], info["Config"]
    else:
        info = json.loads(_run(["buildah", "inspect", "--type", "image", ref]))
        image_id, cfg = info["FromImageID"], info["OCIv1"]["config"]
    rootfs = ROOTFS_CACHE / image_id[:16] / "rootfs"
    if not rootfs.exists():
        tmp = rootfs.parent / f"tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if _docker():
            ctr = _run(["docker", "create", ref]).strip()
            try:
                export = subprocess.Popen(["docker", "export", ctr], stdout=subprocess.PIPE)
                _run(["tar", "-x", "-C", str(tmp)], stdin=export.stdout)
                export.wait()
            finally:
                _run(["docker", "rm", ctr])
        else:
            ctr = _run(["buildah", "from", "--pull-never", ref]).strip()
            try:
                mnt = _run(["buildah", "mount", ctr]).strip()
                _run(["cp", "-a", f"{mnt}/.", str(tmp)])
            finally:
                _run(["buildah", "rm", ctr])
        tmp.rename(rootfs)
        _prune(ROOTFS_CACHE, keep=rootfs.parent)
    os.utime(rootfs.parent)   # in use: kept by _prune for a day
    image = Image(env=tuple(cfg.get("Env") or ()), entrypoint=tuple(cfg.get("Entrypoint") or ()),
                  cmd=tuple(cfg.get("Cmd") or ()), working_dir=cfg.get("WorkingDir") or "/")
    return rootfs, image


def _prune(cache: Path, keep: Path, max_age: float = 86400) -> None:
    """Remove the root filesystems of images not used for a day (each is ~600 MB)."""
    for d in cache.iterdir():
        with contextlib.suppress(OSError):
            if d != keep and time.time() - d.stat().st_mtime > max_age:
                shutil.rmtree(d, ignore_errors=True)


def render(values: dict[str, Any], release: str = "nw") -> dict[str, list[dict[str, Any]]]:
    """`helm template` of the chart with `values`: its objects by kind."""
    out = _run([str(HELM), "template", release, str(REPO / "charts" / "nodewarden"),
                "--namespace", "nodewarden", "-f", "-"], input=yaml.safe_dump(values))
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in yaml.safe_load_all(out):
        if doc:
            by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def configmap_dir(cm: dict[str, Any], where: Path) -> Path:
    """A ConfigMap as the kubelet mounts one: files in a timestamped directory, `..data`
    linking to it, and each key a link through `..data` (what the agent's reload follows)."""
    where.mkdir(parents=True)
    stamp = where / "..2026_12_01_00_00_00.000000001"
    stamp.mkdir()
    for key, text in (cm.get("data") or {}).items():
        (stamp / key).write_text(text)
        (where / key).symlink_to(f"..data/{key}")
    (where / "..data").symlink_to(stamp.name)
    return where


def bounding_caps() -> frozenset[str]:
    """The capabilities this process may grant (its bounding set), by name."""
    mask = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            mask = int(line.split()[1], 16)
    numbers = {"CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4,
               "KILL": 5, "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9,
               "NET_BIND_SERVICE": 10, "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13,
               "IPC_LOCK": 14, "IPC_OWNER": 15, "SYS_MODULE": 16, "SYS_RAWIO": 17,
               "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20, "SYS_ADMIN": 21,
               "SYS_BOOT": 22, "SYS_NICE": 23, "SYS_RESOURCE": 24, "SYS_TIME": 25,
               "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29,
               "AUDIT_CONTROL": 30, "SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33,
               "SYSLOG": 34, "WAKE_ALARM": 35, "BLOCK_SUSPEND": 36, "AUDIT_READ": 37,
               "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40}
    assert set(numbers) == set(ALL_CAPS)
    return frozenset(c for c, n in numbers.items() if mask >> n & 1)


def pod_cgroup(driver: str, pod_uid: str, cid: str, qos: str = "besteffort") -> str:
    """The cgroup path the kubelet and containerd give a container, for a cgroup driver
    (`cgroupfs` or `systemd`; the systemd one spelt as the path it becomes, for runc's
    cgroupfs manager: there is no systemd on this host)."""
    if driver == "cgroupfs":
        return f"/kubepods/{qos}/pod{pod_uid}/{cid}"
    under = pod_uid.replace("-", "_")
    return (f"/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{under}.slice/"
            f"cri-containerd-{cid}.scope")


class Container:
    """One runc container from an OCI config, run in the foreground (runc's stdio is the
    container's): stdout and stderr are the Popen's."""

    def __init__(self, bundle: Path, config: dict[str, Any], stdout: Any = subprocess.DEVNULL,
                 stderr: Any = subprocess.DEVNULL) -> None:
        self.id = f"nwtest-{uuid.uuid4().hex[:12]}"
        self.bundle = bundle
        bundle.mkdir(parents=True, exist_ok=True)
        (bundle / "config.json").write_text(json.dumps(config, indent=1))
        self.cgroups_path = config["linux"].get("cgroupsPath", "")
        self.proc = subprocess.Popen(["runc", "run", "--bundle", str(bundle), self.id],
                                     stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while (state := self.state()).get("status") != "running":
            if self.proc.poll() is not None:
                subprocess.run(["runc", "delete", "--force", self.id], capture_output=True,
                               check=False, timeout=30)
                raise Exited(f"container {self.id} exited at once ({self.proc.poll()})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"container {self.id} did not start")
            time.sleep(0.05)
        # the host pid of its first process
        self.pid = int(state["pid"])

    def state(self) -> dict[str, Any]:
        res = subprocess.run(["runc", "state", self.id], capture_output=True, text=True,
                             check=False, timeout=30)
        return json.loads(res.stdout) if res.returncode == 0 else {}

    def pids(self) -> list[int]:
        """Every process of the container (runc ps)."""
        res = subprocess.run(["runc", "ps", "--format", "json", self.id], capture_output=True,
                             text=True, check=False, timeout=30)
        return json.loads(res.stdout or "null") or [] if res.returncode == 0 else []

    def exec(self, argv: Sequence[str], process: dict[str, Any] | None = None,
             detach: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`runc exec` (with a whole OCI process spec when given, e.g. another user)."""
        cmd = ["runc", "exec"]
        if process is not None:
            spec = self.bundle / f"process-{uuid.uuid4().hex[:8]}.json"
            spec.write_text(json.dumps({**process, "args": list(argv)}))
            cmd += ["--process", str(spec)]
        if detach:
            cmd.append("--detach")
        cmd.append(self.id)
        if process is None:
            cmd += list(argv)
        # a detached process keeps runc's stdio: not pipes that would wait for it to end
        out = subprocess.DEVNULL if detach else subprocess.PIPE
        return subprocess.run(cmd, stdout=out, stderr=out, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        subprocess.run(["runc", "kill", self.id, str(int(sig))], capture_output=True,
                       check=False, timeout=30)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def remove(self) -> None:
        """Kill what is left, delete the container and the cgroups made for it."""
        if self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.wait(20)
        subprocess.run(["runc", "delete", "--force", self.id], capture_output=True,
                       check=False, timeout=30)
        if self.cgroups_path:
            _remove_cgroup_parents(self.cgroups_path)


def _remove_cgroup_parents(path: str) -> None:
    """rmdir the pod and QoS cgroups left by runc (it removes only the container's own),
    in every hierarchy; a cgroup still in use (another test's) stays."""
    parts = [p for p in path.split("/") if p]
    for root in Path("/sys/fs/cgroup").iterdir():
        for depth in range(len(parts), 0, -1):
            with contextlib.suppress(OSError):
                (root / "/".join(parts[:depth])).rmdir()


def prepare_host(t: Translation) -> None:
    """What the kubelet checks or creates for hostPath volumes before the container runs."""
    for hp in t.host_paths:
        p = Path(hp.path)
        if hp.type == "DirectoryOrCreate":
            p.mkdir(parents=True, exist_ok=True)
        elif hp.type == "Directory" and not p.is_dir():
            raise RuntimeError(f"hostPath {p} (type Directory) is not a directory")
