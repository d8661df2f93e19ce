"""The runtime's one settings path: what `Runtime.apply` changes, part by part."""

from __future__ import annotations

import io
import json
import os
from dataclasses import replace

from agent.app import Overrides, Runtime
from agent.config import Config
from agent.engine import loader


def _runtime(cfg: Config) -> Runtime:
    rules = loader.load([loader.bundled_rules_dir()])
    return Runtime(cfg, rules, Overrides(), None, io.StringIO(), "json")


def test_apply_reaches_the_judge_the_enforcer_and_the_scans(tmp_path):
    cfg = Config(listen="off", bpf="off", kubernetes="off")
    rt = _runtime(cfg)
    try:
        (tmp_path / "r.yaml").write_text(
            "rules:\n  - id: only-rule\n    severity: low\n    match: {proc.exe_name: x}\n")
        new_rules = loader.load([str(tmp_path)])
        rt.apply(replace(cfg, mode="enforce", protected=["xmrig"], scan_interval=3.0), new_rules)
        assert rt.judge.mode == "enforce"
        assert rt.judge.ruleset is new_rules
        assert rt.judge.protection.names == frozenset({"xmrig"})
        assert rt.enforcer.protection == rt.judge.protection
        assert rt.agent.scan_interval == 3.0
        # the agent itself stays protected whatever the names say
        assert any(key[0] == os.getpid() for key in rt.judge.protection.own)
    finally:
        rt.close()


def test_once_judges_one_scan_and_reports_it(tmp_path):
    (tmp_path / "r.yaml").write_text(
        "rules:\n  - id: me\n    severity: low\n    match: {proc.pid: " + str(os.getpid()) + "}\n")
    cfg = Config(listen="off", bpf="off", kubernetes="off", rules=[str(tmp_path)])
    out = io.StringIO()
    rt = Runtime(cfg, loader.load([str(tmp_path)]), Overrides(), None, out, "json")
    assert rt.run(once=True) == 0
    findings = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(f["rule"], f["process"]["pid"]) for f in findings] == [("me", os.getpid())]
