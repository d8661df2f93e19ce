"""The shipped rules are installed with the package, not only present in the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_carries_the_shipped_rules_and_the_entry_point(tmp_path):
    # built from a clean copy: setuptools reuses a checkout's build/ directory, which can hold
    # modules the package list no longer names
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for d in ("agent", "rules", "bpf"):
        shutil.copytree(REPO / d, src / d, ignore=skip)
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(src)], check=True, timeout=300,
                   capture_output=True)
    [wheel] = tmp_path.glob("nodewarden-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (REPO / "rules").glob("*.yaml"))
    assert shipped, "no shipped rules in rules/"
    packaged = sorted(n.split("/")[-1] for n in names
                      if n.startswith("agent/rules/") and n.endswith(".yaml"))
    assert packaged == shipped
    assert "agent/rules/README.md" in names
    # every subpackage of agent/ is in the wheel (a missing one breaks non-editable installs,
    # such as the container image, while every test of an editable checkout still passes)
    for init in (REPO / "agent").rglob("__init__.py"):
        sub = init.relative_to(REPO).as_posix()
        assert sub in names, f"{init.parent.relative_to(REPO)} not packaged"
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "nodewarden = agent.main:main" in zipfile.ZipFile(wheel).read(entry).decode()
