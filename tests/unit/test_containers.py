"""Container ids from real-looking /proc/PID/cgroup files, for every runtime and driver."""

from __future__ import annotations

import pytest

from agent.sources.procfs import Cgroup, container_id_from_cgroup, parse_cgroup

A = "59de2a815200d473ab0a078bdcee0b8bc80aca90c1df285f4ecfdbca5566c2cd"
B = "d8909a4e1b423fe77fef16afc7c75b201ad1c9f557c0e571225e927b7a338a9c"
C = "9d5128d60fc8700442dedc0ff1aee26728830447b2144dc9851f3f6b1c9695be"
POD = "8d5c2a4e-1b7f-4c3a-9e2d-6f0a1b2c3d4e"
POD_ = POD.replace("-", "_")  # the systemd driver spells the pod uid with underscores

V1_CONTROLLERS = ["pids", "memory", "cpu,cpuacct", "devices", "blkio", "net_cls,net_prio",
                  "freezer", "perf_event", "hugetlb", "cpuset", "rdma", "name=systemd"]


def v1(path: str, unified: str = "/") -> str:
    """A cgroup v1 (hybrid) file: one line per controller, then the unified line."""
    lines = [f"{12 - i}:{c}:{path}" for i, c in enumerate(V1_CONTROLLERS)]
    return "\n".join(lines) + f"\n0::{unified}\n"


CASES = [
    # -- docker --
    ("docker systemd v2", f"0::/system.slice/docker-{A}.scope\n", A),
    ("docker cgroupfs v2", f"0::/docker/{A}\n", A),
    ("docker v1 multi-line", v1(f"/docker/{A}"), A),
    ("docker v1 systemd driver", v1(f"/system.slice/docker-{A}.scope"), A),
    ("docker v2 systemd-in-container subgroup",
     f"0::/system.slice/docker-{A}.scope/init.scope\n", A),
    # -- containerd / kubelet --
    ("containerd k8s systemd v2",
     (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/"
      f"cri-containerd-{B}.scope\n"), B),
    ("containerd k8s guaranteed systemd v2",
     f"0::/kubepods.slice/kubepods-pod{POD_}.slice/cri-containerd-{B}.scope\n", B),
    ("kubelet cgroupfs v2 burstable", f"0::/kubepods/burstable/pod{POD}/{B}\n", B),
    ("kubelet cgroupfs v2 besteffort", f"0::/kubepods/besteffort/pod{POD}/{B}\n", B),
    ("kubelet cgroupfs v2 guaranteed", f"0::/kubepods/pod{POD}/{B}\n", B),
    ("kubelet cgroupfs v1", v1(f"/kubepods/burstable/pod{POD}/{B}"), B),
    ("containerd k8s systemd v1",
     v1(f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_}.slice/"
        f"cri-containerd-{B}.scope"), B),
    # -- cri-o --
    ("cri-o systemd v2",
     (f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_}.slice/"
      f"crio-{C}.scope\n"), C),
    ("cri-o systemd v2 container subgroup",
     f"0::/kubepods.slice/kubepods-pod{POD_}.slice/crio-{C}.scope/container\n", C),
    ("cri-o conmon is not the container",
     (f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_}.slice/"
      f"crio-conmon-{C}.scope\n"), ""),
    ("cri-o conmon v1 is not the container",
     v1(f"/kubepods.slice/kubepods-pod{POD_}.slice/crio-conmon-{C}.scope"), ""),
    # -- podman --
    ("podman rootless",
     f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{A}.scope\n", A),
    ("podman rootful container subgroup", f"0::/machine.slice/libpod-{A}.scope/container\n", A),
    ("podman conmon is not the container", f"0::/machine.slice/libpod-conmon-{A}.scope\n", ""),
    # -- nesting: the innermost id --
    ("docker in docker cgroupfs v2", f"0::/docker/{A}/docker/{B}\n", B),
    ("docker in docker systemd v2", f"0::/system.slice/docker-{A}.scope/docker/{B}\n", B),
    ("docker in docker v1", v1(f"/docker/{A}/docker/{B}"), B),
    ("kind node running a pod",
     (f"0::/system.slice/docker-{A}.scope/kubelet.slice/kubelet-kubepods.slice/"
      f"kubelet-kubepods-pod{POD_}.slice/cri-containerd-{B}.scope\n"), B),
    # -- hybrid: the unified (v2) line wins over v1 controllers --
    ("hybrid v2 id, v1 host paths",
     v1("/user.slice", unified=f"/system.slice/docker-{A}.scope"), A),
    ("hybrid v1 id, v2 root", v1(f"/docker/{A}", unified="/"), A),
    # -- host processes --
    ("init", "0::/init.scope\n", ""),
    ("login session", "0::/user.slice/user-1000.slice/session-3.scope\n", ""),
    ("user manager", "0::/user.slice/user-1000.slice/user@1000.service/init.scope\n", ""),
    ("dockerd itself", "0::/system.slice/docker.service\n", ""),
    ("containerd itself", "0::/system.slice/containerd.service\n", ""),
    ("kubelet itself", "0::/system.slice/kubelet.service\n", ""),
    ("kernel thread root", "0::/\n", ""),
    ("host v1", v1("/user.slice/user-1000.slice/session-3.scope"), ""),
    ("pod slice without a container", f"0::/kubepods.slice/kubepods-pod{POD_}.slice\n", ""),
    # -- garbage --
    ("empty", "", ""),
    ("blank lines", "\n\n\n", ""),
    ("prose", "not a cgroup file at all\n", ""),
    ("63 hex", f"0::/docker/{A[:63]}\n", ""),
    ("65 hex", f"0::/docker/{A}0\n", ""),
    ("uppercase hex", f"0::/docker/{A.upper()}\n", ""),
    ("non-hex 64 chars", f"0::/docker/{'g' * 64}\n", ""),
    ("id without a cgroup line shape", f"/docker/{A}\n", ""),
    ("id with one colon", f"0:/docker/{A}\n", ""),
    ("unknown prefix", f"0::/system.slice/rkt-{A}.scope\n", ""),
    ("id in a file name suffix", f"0::/system.slice/{A}.mount\n", ""),
    ("crlf line ends", f"0::/docker/{A}\r\n", A),
]


@pytest.mark.parametrize(("text", "want"), [pytest.param(t, w, id=n) for n, t, w in CASES])
def test_container_id_from_cgroup(text, want):
    assert container_id_from_cgroup(text) == want



V1_PATHS = tuple((c, f"/docker/{A}") for c in V1_CONTROLLERS)


@pytest.mark.parametrize(("text", "want"), [
    pytest.param(f"0::/system.slice/docker-{A}.scope\n",
                 Cgroup(v2=f"/system.slice/docker-{A}.scope", container_id=A), id="v2"),
    pytest.param(v1(f"/docker/{A}"), Cgroup(v2="/", v1=V1_PATHS, container_id=A),
                 id="hybrid: every v1 hierarchy in file order, name= kept, and the v2 root"),
    pytest.param(f"0::/kubepods/besteffort/pod{POD}/{B}\n",
                 Cgroup(v2=f"/kubepods/besteffort/pod{POD}/{B}", container_id=B, pod_uid=POD),
                 id="kubelet"),
    pytest.param(f"0::/../../kubepods-pod{POD_}.slice/cri-containerd-{B}.scope\n",
                 Cgroup(v2=f"/../../kubepods-pod{POD_}.slice/cri-containerd-{B}.scope",
                        container_id=B, pod_uid=POD),
                 id="seen from a cgroup namespace: the path as written"),
    pytest.param("0::/init.scope\n0::/later.scope\n", Cgroup(v2="/later.scope"),
                 id="the last unified line"),
    pytest.param("garbage\n3:cpu\n2:cpuset:/a:b\n", Cgroup(v1=(("cpuset", "/a:b"),)),
                 id="malformed lines skipped, a colon in a path kept"),
    pytest.param("", Cgroup(), id="empty"),
])
def test_parse_cgroup(text, want):
    assert parse_cgroup(text) == want
