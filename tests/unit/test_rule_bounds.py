"""Bounds on a rule set, and a reload that compiles off the agent's loop (issue 13, defect 12):
a rules file of 10**6 list entries stalled the main loop 4.8 s on reload; now it is refused
with `file:line: message` and the running rules stay, and a large but valid rule set compiles
in a thread while the loop turns."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import Config
from agent.engine import loader
from agent.engine.definitions import MAX_LIST_VALUES
from agent.engine.files import MAX_RULE_FILE_BYTES
from agent.engine.ruleset import RuleSet
from agent.metrics import Metrics
from agent.reload import Reloader

RULE = "rules:\n  - id: {rid}\n    severity: low\n    match: {{proc.name: {{in: {values}}}}}\n"


def check(path: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(["rules", "check", str(path)], out, err), out.getvalue()


def _list_file(path: Path, entries: int, lists: int = 1, rid: str = "x") -> Path:
    with path.open("w") as f:
        f.write("lists:\n")
        for n in range(lists):
            f.write(f"  {rid}l{n}:\n")
            f.writelines(f"    - n{n}x{i}\n" for i in range(entries))
        f.write(RULE.format(rid=rid, values=f"${rid}l0"))
    return path


def test_a_file_over_one_mib_is_refused_at_its_first_line(tmp_path: Path) -> None:
    path = _list_file(tmp_path / "big.yaml", 10**6)
    started = time.monotonic()
    code, out = check(path)
    assert code == 2
    assert f"{path}:1: the file is larger than {MAX_RULE_FILE_BYTES} bytes" in out
    assert time.monotonic() - started < 2  # not parsed


def test_a_list_over_the_limit_is_refused_at_its_line(tmp_path: Path) -> None:
    path = _list_file(tmp_path / "long.yaml", MAX_LIST_VALUES + 1)
    code, out = check(path)
    assert code == 2
    assert out.splitlines()[0] == (f"{path}:2: list 'xl0' has {MAX_LIST_VALUES + 1} "
                                   f"entries; the limit is {MAX_LIST_VALUES}")


def test_lists_of_lists_cannot_multiply_without_end(tmp_path: Path) -> None:
    # 100 values, then 100 references to that list, then 100 to that: 10**6 values in 2 KB
    def refs(name: str) -> str:
        return "[" + ", ".join([f"${name}"] * 100) + "]"

    path = tmp_path / "nest.yaml"
    path.write_text("lists:\n  a: [" + ", ".join(f"v{i}" for i in range(100)) + "]\n"
                    f"  b: {refs('a')}\n  c: {refs('b')}\n" + RULE.format(rid="x", values="$c"))
    started = time.monotonic()
    code, out = check(path)
    assert code == 2 and f"{path}:" in out and "too many values" in out, out
    assert time.monotonic() - started < 2


def test_the_shipped_rules_are_well_inside_the_bounds() -> None:
    for f in loader.rule_files([loader.bundled_rules_dir()]):
        assert f.stat().st_size < MAX_RULE_FILE_BYTES // 16, f
    assert loader.check([loader.bundled_rules_dir()])[0] is not None


def test_a_large_rule_set_compiles_while_the_loop_turns(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.yaml").write_text(RULE.format(rid="old", values="[xmrig]"))
    applied: list[RuleSet] = []
    metrics = Metrics()
    reloader = Reloader(None, Config(), [str(rules)], applied.append, lambda _c: None, metrics)
    # valid and near the bounds: several files of 8 lists of 9,000 values each
    for n in range(3):
        _list_file(rules / f"big{n}.yaml", 9000, lists=8, rid=f"big{n}")
    compile_time = time.monotonic()
    assert loader.check([str(rules)])[0] is not None
    compile_time = time.monotonic() - compile_time
    reloader.request()
    longest = 0.0
    deadline = time.monotonic() + 60
    while not applied:
        assert time.monotonic() < deadline
        t = time.monotonic()
        reloader.tick()
        longest = max(longest, time.monotonic() - t)
        time.sleep(0.01)
    assert {r.id for r in applied[0].rules} == {"old", "big0", "big1", "big2"}
    assert longest < compile_time / 4, (longest, compile_time)


def test_a_refused_reload_keeps_the_running_rules(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.yaml").write_text(RULE.format(rid="old", values="[xmrig]"))
    applied: list[RuleSet] = []
    metrics = Metrics()
    reloader = Reloader(None, Config(), [str(rules)], applied.append, lambda _c: None, metrics)
    _list_file(rules / "huge.yaml", 10**6)
    reloader.request()
    deadline = time.monotonic() + 30
    while "refused" not in caplog.text:
        assert time.monotonic() < deadline
        reloader.tick()
        time.sleep(0.01)
    assert not applied
    assert f"{rules / 'huge.yaml'}:1: the file is larger than" in caplog.text
    assert metrics.reload_failures.labels(what="rules")._value.get() == 1
