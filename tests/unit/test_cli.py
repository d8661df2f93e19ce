"""The CLI contract of DESIGN.md: commands, formats, exit codes, no tracebacks."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.cli import main

FIXTURE_PROC = Path(__file__).parent.parent / "fixtures" / "proc"

RULES = textwrap.dedent("""\
    rules:
      - id: miner
        severity: critical
        action: kill
        match: {proc.exe_name: {in: [xmrig]}}
        message: miner {proc.exe_name}
        examples:
          match: [{process: {exe: /tmp/xmrig}}]
          no_match: [{process: {exe: /bin/grep, cmdline: [grep, xmrig]}}]
      - id: pool
        severity: medium
        match: {conn.dport: 3333}
        examples:
          match: [{kind: connect, connection: {dst: 1.2.3.4, dport: 3333}}]
          no_match: [{kind: connect, connection: {dst: 1.2.3.4, dport: 443}}]
""")


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def rules(tmp_path: Path) -> str:
    p = tmp_path / "rules.yaml"
    p.write_text(RULES)
    return str(p)


def test_rules_check_ok(rules):
    code, out, _ = run("rules", "check", rules)
    assert code == 0
    assert "ok: 2 rules" in out


def test_rules_check_reports_file_line_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - id: r\n    match: {proc.nmae: x}\n")
    code, out, err = run("rules", "check", str(bad))
    assert code == 2
    assert out.splitlines()[0] == (f"{bad}:3: rule 'r': unknown field 'proc.nmae' (did you mean "
                                   f"'proc.name'?); fields are listed in rules/README.md")
    assert "Traceback" not in out + err


def test_rules_test_passes_and_fails(rules, tmp_path):
    code, out, _ = run("rules", "test", rules)
    assert code == 0 and "4 passed, 0 failed" in out
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(RULES.replace("no_match: [{process: {exe: /bin/grep",
                                   "no_match: [{process: {exe: /bin/xmrig"))
    code, out, _ = run("rules", "test", str(wrong))
    assert code == 1
    assert f"FAIL {wrong}:9: rule 'miner': example should not match, but it did" in out
    assert "3 passed, 1 failed" in out


def test_rules_test_with_broken_file_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [")
    code, _, err = run("rules", "test", str(bad))
    assert code == 2 and "YAML syntax error" in err


def test_replay_judges_recorded_events(rules, tmp_path):
    events = tmp_path / "events.jsonl"
    lines = [
        {"kind": "exec", "time": 1.0,
         "process": {"pid": 10, "exe": "/tmp/xmrig", "cmdline": ["xmrig"]}},
        {"kind": "exec", "time": 2.0, "process": {"pid": 11, "exe": "/bin/ls", "cmdline": ["ls"]}},
        {"kind": "connect", "time": 3.0, "process": {"pid": 12, "exe": "/usr/bin/curl"},
         "connection": {"src": "10.0.0.2", "sport": 5000, "dst": "1.2.3.4", "dport": 3333}},
    ]
    events.write_text("".join(json.dumps(x) + "\n" for x in lines))
    code, out, _ = run("replay", str(events), "--rules", rules, "--format", "json")
    assert code == 1
    found = [json.loads(x) for x in out.splitlines()]
    assert [(f["rule"], f["process"]["pid"], f["outcome"]) for f in found] == [
        ("miner", 10, "would_kill"), ("pool", 12, "reported")]
    assert found[1]["connection"]["dport"] == 3333
    clean = tmp_path / "clean.jsonl"
    clean.write_text(json.dumps(lines[1]) + "\n")
    assert run("replay", str(clean), "--rules", rules)[0] == 0


def test_replay_bad_line_names_file_and_line(rules, tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text('{"kind": "exec", "process": {"exe": "/x"}}\n{"kind": "boom"}\n')
    code, _, err = run("replay", str(events), "--rules", rules)
    assert code == 2
    assert f"{events}:2: 'kind' must be one of" in err


def test_replay_missing_file_exit_2(rules, tmp_path):
    code, _, err = run("replay", str(tmp_path / "nope.jsonl"), "--rules", rules)
    assert code == 2 and "cannot read" in err


def test_scan_of_fixture_tree_table_and_json(rules):
    code, out, _ = run("scan", "--rules", rules, "--proc-root", str(FIXTURE_PROC))
    assert code == 1
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["SEVERITY", "RULE", "OUTCOME"]
    assert "miner" in lines[1] and "would_kill" in lines[1]
    code, out, _ = run("scan", "--rules", rules, "--proc-root", str(FIXTURE_PROC),
                       "--format", "json")
    assert code == 1
    f = json.loads(out.splitlines()[0])
    assert set(f) >= {"time", "host", "rule", "severity", "tags", "source", "action", "mode",
                      "outcome", "process", "workspace", "container", "pod", "connection",
                      "message"}
    assert f["source"] == "scan" and f["mode"] == "audit"


def test_scan_without_findings_exits_0(tmp_path):
    p = tmp_path / "none.yaml"
    p.write_text("rules:\n  - {id: never, match: {proc.exe_name: no-such-program-anywhere}}\n")
    code, out, _ = run("scan", "--rules", str(p), "--proc-root", str(FIXTURE_PROC))
    assert code == 0 and out == ""


def test_scan_bad_proc_root_and_bad_rules_exit_2(rules, tmp_path):
    assert run("scan", "--rules", rules, "--proc-root", str(tmp_path / "nope"))[0] == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: {}")
    code, _, err = run("scan", "--rules", str(bad))
    assert code == 2 and "'rules' must be a list" in err


def test_bad_config_exit_2_with_key_and_fix(rules, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("mode: enforce\nscan_intervl: 3\n")
    code, _, err = run("run", "--config", str(cfg), "--rules", rules, "--once", "--listen", "off")
    assert code == 2
    assert f"{cfg}:2: unknown setting 'scan_intervl' (did you mean 'scan_interval'?)" in err
    cfg.write_text("mode: kill-everything\n")
    code, _, err = run("run", "--config", str(cfg), "--rules", rules, "--once", "--listen", "off")
    assert code == 2 and "mode must be 'audit' or 'enforce'" in err


def test_console_script_and_python_m_agent_agree(rules):
    venv_bin = Path(sys.executable).parent
    a = subprocess.run([str(venv_bin / "nodewarden"), "rules", "check", rules],
                       check=False, capture_output=True, text=True, timeout=60)
    b = subprocess.run([sys.executable, "-m", "agent", "rules", "check", rules],
                       check=False, capture_output=True, text=True, timeout=60)
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout


def test_default_rules_are_the_shipped_ones():
    code, out, _ = run("rules", "check")
    assert code == 0
    code, out, _ = run("rules", "test")
    assert code == 0 and " 0 failed" in out


@pytest.mark.parametrize("argv", [
    ["scan", "--proc-root", "/x", "--format", "json", "--rules", "a", "b"],
    ["-v", "run", "--once", "--interval", "2", "--no-bpf"],
    ["rules", "test", "p", "--verbose"],
    ["replay", "f.jsonl", "--format", "json"],
])
def test_the_parser_of_one_command_reads_it_as_the_whole_parser_does(argv):
    """Only the named command's parser is made (start-up); what it parses is the same."""
    from agent.cli import _command, _parser

    assert _command(argv) == argv[argv[0] == "-v"]
    assert _parser(_command(argv)).parse_args(argv) == _parser().parse_args(argv)


@pytest.mark.parametrize("argv", [[], ["--help"], ["--version"], ["scna"], ["--verb", "scan"],
                                  ["-h", "scan"]])
def test_help_version_and_unknown_words_get_every_command(argv):
    from agent.cli import _command

    assert _command(argv) is None


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    assert all(f"    {c} " in listed for c in ("run", "scan", "rules", "replay"))
