"""Shared test helpers.

Under NODEWARDEN_REQUIRE_EBPF=1 (set by .ci/run) an eBPF test that skips is a failure:
CI runs as root on a BPF-capable kernel, so a skip there means a broken setup.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.engine import loader
from agent.engine.ruleset import RuleSet


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    # an expected failure (xfail: a known open hole) is reported as skipped; it is not a skip
    if (report.skipped and not hasattr(report, "wasxfail")
            and item.get_closest_marker("ebpf") is not None
            and os.environ.get("NODEWARDEN_REQUIRE_EBPF") == "1"):
        report.outcome = "failed"
        report.longrepr = f"eBPF test skipped under NODEWARDEN_REQUIRE_EBPF=1: {report.longrepr}"
    return report


def _bpf_unavailable() -> str:
    res = subprocess.run([sys.executable, "-c", "from agent.sources import bpf; bpf.check()"],
                         check=False, capture_output=True, text=True, timeout=60)
    return "" if res.returncode == 0 else (res.stderr.strip().splitlines() or ["?"])[-1]


@pytest.fixture(scope="session")
def ebpf() -> None:
    """Skips a test when this machine cannot load the eBPF sensors (a failure in CI)."""
    if os.geteuid() != 0:
        pytest.skip("eBPF needs root")
    why = _bpf_unavailable()
    if why:
        pytest.skip(f"eBPF unavailable: {why}")


@pytest.fixture
def rules_from(tmp_path: Path):
    """Compile rule YAML text (dedented) into a RuleSet; raises RuleError on problems."""

    def make(*texts: str) -> RuleSet:
        paths = []
        for i, text in enumerate(texts):
            p = tmp_path / f"r{i}.yaml"
            p.write_text(textwrap.dedent(text))
            paths.append(str(p))
        return loader.load(paths)

    return make


@pytest.fixture
def problems_in(tmp_path: Path):
    """The `file:line: message` problems of rule YAML text, as strings with the tmp dir cut."""

    def check(text: str) -> list[str]:
        p = tmp_path / "bad.yaml"
        p.write_text(textwrap.dedent(text))
        _, problems = loader.check([str(p)], examples=True)
        return [str(x).replace(str(tmp_path) + "/", "") for x in problems]

    return check


@pytest.fixture(autouse=True)
def _own_node_lock(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's agents lock a file of their own (NODEWARDEN_LOCK_FILE), not the node's
    /run/nodewarden/agent.lock: other test runs on this machine run agents at the same time,
    and an agent a test stopped may still be exiting when the next test starts one."""
    monkeypatch.setenv("NODEWARDEN_LOCK_FILE", str(tmp_path_factory.mktemp("lock") / "agent.lock"))
