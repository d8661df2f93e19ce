"""The runner's own logic that needs no container: what it says when a tool is missing,
the kubelet's cgroup paths, the ConfigMap layout the agent's reload follows."""

from __future__ import annotations

import pytest

from tests.container import runc


def test_a_missing_runc_or_buildah_is_said_with_what_to_do(monkeypatch):
    monkeypatch.setattr(runc.os, "geteuid", lambda: 0)
    monkeypatch.setattr(runc.shutil, "which", lambda name: None if name == "runc" else "/x")
    with pytest.raises(runc.Missing, match="no runc: `make image` installs it"):
        runc.require_tools()
    monkeypatch.setattr(runc.shutil, "which", lambda name: None if name != "runc" else "/x")
    with pytest.raises(runc.Missing, match="no buildah nor docker"):
        runc.require_tools()


def test_pod_cgroup_paths_of_both_kubelet_drivers():
    uid = "0a1b2c3d-0000-4000-8000-000000000001"
    cid = "ab" * 32
    assert runc.pod_cgroup("cgroupfs", uid, cid) == f"/kubepods/besteffort/pod{uid}/{cid}"
    assert runc.pod_cgroup("systemd", uid, "cd" * 32, "burstable") == (
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
        f"{uid.replace('-', '_')}.slice/cri-containerd-{'cd' * 32}.scope")


def test_configmap_dir_is_laid_out_as_the_kubelet_does(tmp_path):
    d = runc.configmap_dir({"data": {"config.yaml": "mode: audit\n"}}, tmp_path / "cm")
    assert (d / "config.yaml").read_text() == "mode: audit\n"
    assert (d / "config.yaml").readlink().as_posix() == "..data/config.yaml"
    assert (d / "..data").readlink().name.startswith("..2026")
