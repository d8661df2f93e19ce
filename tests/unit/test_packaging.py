"""The shipped rules are installed with the package, not only present in the checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_carries_the_shipped_rules_and_the_entry_point(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True, timeout=300,
                   capture_output=True)
    [wheel] = tmp_path.glob("nodewarden-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (REPO / "rules").glob("*.yaml"))
    assert shipped, "no shipped rules in rules/"
    assert sorted(n.split("/")[-1] for n in names if n.startswith("agent/rules/") and n.endswith(".yaml")) == shipped
    assert "agent/rules/README.md" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "nodewarden = agent.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
