"""Fixtures the unit tests share."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.observer import Observer
from agent.sources.netstate import NetState
from agent.sources.procfs import ProcFS
from agent.sources.proctree import ProcessTree

PROC_FIXTURE = Path(__file__).parent.parent / "fixtures" / "proc"


@pytest.fixture
def observer(tmp_path: Path) -> Observer:
    """An Observer over a scanned copy of the fixture procfs (a workspace among its
    processes), its clocks fixed: monotonic 10 s is wall-clock 1000 s."""
    root = tmp_path / "proc"
    shutil.copytree(PROC_FIXTURE, root, symlinks=True)
    tree = ProcessTree(ProcFS(str(root)))
    tree.scan()
    return Observer(tree, NetState(str(root)), wall=lambda: 1000.0, mono=lambda: 10.0)


@pytest.fixture
def re2_compiles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The patterns RE2 compiles from now on in this test, in order (the compile is
    still RE2's own)."""
    from agent.engine import operators

    compiled: list[str] = []
    real = operators.re2.compile

    def spy(pattern: str, *args: object) -> object:
        compiled.append(pattern)
        return real(pattern, *args)

    monkeypatch.setattr(operators.re2, "compile", spy)
    return compiled
