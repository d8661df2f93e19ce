"""`nodewarden scan` starts with what it uses: no sensor module, no codec, no rule examples.

Start-up is issue 10's target 7 (bench/scan.py --startup-rounds): the rules' examples are
compiled only for `rules check`, `rules test` and the tests, and the sensors are named in
the registry without importing their modules. A broken example is still reported, with its
file and line, by `rules check`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent.cli import main
from agent.engine import files, loader, operators
from agent.engine.parsecache import ParseCache
from agent.model import Event, EventKind, Process
from agent.sources import registry

REPO = Path(__file__).resolve().parents[2]

BROKEN_EXAMPLE = """\
rules:
  - id: r
    match: {proc.name: x}
    examples:
      match:
        - {process: {exe: 3}}
"""


def _modules_after_scan(proc_root: Path) -> set[str]:
    code = ("import sys, io\n"
            "from agent.cli import main\n"
            f"rc = main(['scan', '--proc-root', {str(proc_root)!r}], io.StringIO(), "
            "io.StringIO())\n"
            "import json; print(json.dumps([rc, sorted(sys.modules)]))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    rc, modules = json.loads(out)
    assert rc == 0
    return set(modules)


def test_scan_imports_no_sensor_codec_or_http(tmp_path):
    modules = _modules_after_scan(tmp_path)
    unused = {"agent.codec", "agent.engine.examples", "agent.sources.bpf",
              "agent.sources.exec_sensor", "agent.sources.tcp_sensor",
              "agent.sources.connect_guard", "agent.sources.proc_connector", "msgspec",
              "agent.metrics", "prometheus_client", "urllib.request", "bcc"}
    assert modules & unused == set()


def test_the_registry_names_each_sensor_as_its_class_does():
    classes = registry.sensor_classes()
    assert tuple(c.name for c in classes) == registry.SENSOR_NAMES
    assert classes == registry.SENSORS
    assert registry.selected(["proc_connector", "exec"]) == [classes[0], classes[3]]


def test_examples_are_compiled_only_when_asked_for(tmp_path):
    (tmp_path / "r.yaml").write_text(BROKEN_EXAMPLE.replace("exe: 3", "exe: /bin/x"))
    plain = loader.load([str(tmp_path)])
    assert plain.all_rules[0].examples == []
    full = loader.load([str(tmp_path)], examples=True)
    (ex,) = full.all_rules[0].examples
    assert ex.line == 6 and ex.should_match and ex.events[0].process.exe == "/bin/x"


def test_a_broken_example_loads_for_running_and_fails_rules_check(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text(BROKEN_EXAMPLE)
    assert len(loader.load([str(tmp_path)])) == 1  # the rule itself is fine: the agent runs
    assert main(["rules", "check", str(tmp_path)]) == 2
    assert f"{tmp_path}/bad.yaml:6: rule 'r': example event: 'exe' must be a string" in (
        capsys.readouterr().out)
    assert main(["rules", "test", str(tmp_path)]) == 2


def test_shipped_examples_still_run(capsys):
    assert main(["rules", "test"]) == 0
    out = capsys.readouterr().out
    assert " 0 failed" in out and int(out.split()[-4]) > 100


REGEX_RULE = """\
rules:
  - id: miner
    severity: high
    match:
      proc.cmdline: {regex: ['stratum\\+tcp://', '--donate-level=\\d+']}
"""


def _exec(cmdline: tuple[str, ...]) -> Event:
    proc = Process(pid=7, ppid=1, starttime=1, comm="xmrig", exe="/usr/bin/xmrig",
                   cmdline=cmdline)
    return Event(kind=EventKind.EXEC, time=1.0, process=proc)


def test_a_regex_is_compiled_when_it_first_tests_a_value(tmp_path, monkeypatch, re2_compiles):
    """Loading checks each pattern (a bad one is a file:line problem); the alternation
    the rule runs is compiled only when a value reaches it, and only once."""
    (tmp_path / "r.yaml").write_text(REGEX_RULE)
    compiled = re2_compiles
    monkeypatch.setattr(files, "CACHE", ParseCache(str(tmp_path / "cache")))
    operators._REGEX_TESTS.clear()
    monkeypatch.setattr(operators, "KNOWN_VALID", set())
    ruleset = loader.load([str(tmp_path)])
    assert compiled == ["stratum\\+tcp://", "--donate-level=\\d+"]
    assert [m.rule.id for m in ruleset.evaluate(_exec(("xmrig", "-o", "stratum+tcp://x")))] \
        == ["miner"]
    assert ruleset.evaluate(_exec(("xmrig", "--donate-level=1x"))) != []
    assert ruleset.evaluate(_exec(("xmrig", "--donate-level=x"))) == []
    assert compiled[2:] == ["(?:stratum\\+tcp://)|(?:--donate-level=\\d+)"]


def test_patterns_too_large_together_are_tried_one_by_one(monkeypatch):
    """Should RE2 refuse the alternation (too large), the rule still answers as each of its
    patterns would."""
    real = operators.re2.compile

    def refuse_alternations(pattern: str, *args: Any) -> Any:
        if pattern.startswith("(?:"):
            raise operators.re2.error("pattern too large - compile failed")
        return real(pattern, *args)

    monkeypatch.setattr(operators.re2, "compile", refuse_alternations)
    test = operators._regex_test(("^a+$", "b{2}", "é$"))
    answers = {v: test(v) for v in ("aaa", "xbbx", "café", "ab", "", "\udcff")}
    assert answers == {"aaa": True, "xbbx": True, "café": True, "ab": False, "": False,
                       "\udcff": False}
