"""Rule sets checked before (agent/engine/setcache.py): `scan` builds a set whose very files
and compiler compiled without a problem from what was kept of it, and compiles its rules on
their first use; any change is a miss that checks (and reports) everything again, and an
entry anyone but root could have written is never read."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.codec import event_from_line
from agent.engine import files, loader, setcache
from agent.engine.parsecache import ParseCache, _key
from agent.errors import RuleError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the cache is root's")

GOLDEN = Path(__file__).parent.parent / "fixtures" / "judge" / "golden.jsonl.gz"
REPO = Path(__file__).resolve().parents[2]

RULES = """\
lists:
  miners: [xmrig, minerd]
macros:
  in_tmp: {proc.exe: {prefix: [/tmp/]}}
rules:
  - id: miner
    severity: high
    match: {proc.name: {in: $miners}}
  - id: tmp-exec
    match: {macro: in_tmp}
    except:
      - {proc.args: {contains: [--ok]}}
"""


@pytest.fixture
def cache(tmp_path, monkeypatch) -> ParseCache:
    c = ParseCache(str(tmp_path / "cache"))
    monkeypatch.setattr(files, "CACHE", c)
    return c


@pytest.fixture
def rules_dir(tmp_path) -> Path:
    d = tmp_path / "rules"
    d.mkdir()
    (d / "r.yaml").write_text(RULES)
    return d


def _exec(exe: str, *args: str) -> str:
    return json.dumps({"kind": "exec", "process": {"exe": exe, "cmdline": [exe, *args]}})


def _fired(ruleset: loader.RuleSet, line: str) -> list[tuple[str, str]]:
    return [(m.rule.id, m.message) for m in ruleset.evaluate(event_from_line(line))]


def _entry_path(cache: ParseCache, rules: Path) -> str:
    shipped = loader.rule_files([str(rules)])
    name = setcache.name([(str(f), f.read_bytes()) for f in shipped])
    assert name is not None
    return os.path.join(cache.directory, _key(name))


def test_a_set_checked_before_is_recalled_and_judges_as_compiled(cache, rules_dir):
    first = loader.load([str(rules_dir)], lazy=True)    # a miss: compiled, then kept
    assert not any(r.recalled() for r in first.all_rules)
    again = loader.load([str(rules_dir)], lazy=True)
    assert all(r.recalled() for r in again.all_rules)  # nothing compiled yet
    assert (again.digest, again.sources, len(again)) == (first.digest, first.sources, 1 + 1)
    assert [(r.id, r.severity, r.kinds, r.line, r.requirement) for r in again.all_rules] == \
        [(r.id, r.severity, r.kinds, r.line, r.requirement) for r in first.all_rules]
    for line in (_exec("/usr/bin/xmrig"), _exec("/tmp/x"), _exec("/tmp/x", "--ok"),
                 _exec("/usr/bin/ls")):
        assert _fired(again, line) == _fired(first, line)
    assert not any(r.recalled() for r in again.all_rules)  # compiled on the first event
    assert _fired(again, _exec("/tmp/x")) == [("tmp-exec", "tmp-exec")]


def test_the_shipped_rules_recalled_judge_the_golden_events_as_compiled(cache):
    compiled = loader.load([loader.bundled_rules_dir()], lazy=True)
    recalled = loader.load([loader.bundled_rules_dir()], lazy=True)
    assert recalled.all_rules[0].recalled()
    with gzip.open(GOLDEN, "rt", encoding="utf-8") as f:
        lines = [json.loads(x)["event"] for x in f]
    for line in lines:
        assert _fired(recalled, line) == _fired(compiled, line), line[:200]


def test_a_changed_rule_file_is_not_served_stale(cache, rules_dir):
    loader.load([str(rules_dir)], lazy=True)
    (rules_dir / "r.yaml").write_text(RULES.replace("severity: high", "severity: low"))
    changed = loader.load([str(rules_dir)], lazy=True)
    assert not changed.all_rules[0].recalled() and changed.all_rules[0].severity == "low"
    (rules_dir / "r.yaml").write_text(RULES.replace("in: $miners", "in: $nothing"))
    with pytest.raises(RuleError) as e:
        loader.load([str(rules_dir)], lazy=True)
    assert [str(p) for p in e.value.problems] == [
        f"{rules_dir}/r.yaml:8: rule 'miner': unknown list '$nothing'; define it under 'lists:'"]
    (rules_dir / "r.yaml").write_text(RULES)          # back as it was: that entry again
    assert loader.load([str(rules_dir)], lazy=True).all_rules[0].recalled()
    (rules_dir / "more.yaml").write_text("rules: []\n")  # another file list: a miss
    assert not loader.load([str(rules_dir)], lazy=True).all_rules[0].recalled()


def test_a_rule_compiles_from_the_bytes_read_at_start(cache, rules_dir):
    loader.load([str(rules_dir)], lazy=True)
    ruleset = loader.load([str(rules_dir)], lazy=True)
    (rules_dir / "r.yaml").write_text(RULES.replace("[xmrig, minerd]", "[other]"))
    assert [m.rule.id for m in ruleset.evaluate(event_from_line(_exec("/usr/bin/xmrig")))] \
        == ["miner"]


def test_a_changed_compiler_is_a_miss(cache, rules_dir, monkeypatch):
    loader.load([str(rules_dir)], lazy=True)
    monkeypatch.setattr(setcache, "code_stamp", lambda: b"another compiler")
    assert not loader.load([str(rules_dir)], lazy=True).all_rules[0].recalled()


@pytest.mark.parametrize("spoil", ["group-writable", "others'", "not root's"])
def test_an_entry_anyone_but_root_could_have_written_is_ignored(cache, rules_dir, spoil):
    loader.load([str(rules_dir)], lazy=True)
    path = _entry_path(cache, rules_dir)
    assert loader.load([str(rules_dir)], lazy=True).all_rules[0].recalled()
    if spoil == "group-writable":
        os.chmod(path, 0o620)
    elif spoil == "others'":
        os.chmod(path, 0o604)
    else:
        os.chown(path, 65534, 65534)
    ruleset = loader.load([str(rules_dir)], lazy=True)
    assert not ruleset.all_rules[0].recalled()          # compiled from the files instead
    assert [m.rule.id for m in ruleset.evaluate(event_from_line(_exec("/tmp/y")))] == \
        ["tmp-exec"]


def test_a_damaged_entry_is_a_miss(cache, rules_dir):
    loader.load([str(rules_dir)], lazy=True)
    name = setcache.name([(str(rules_dir / "r.yaml"), (rules_dir / "r.yaml").read_bytes())])
    assert name is not None
    cache.put(name, ([("miner", "not enough fields")], []))
    assert setcache.recall(name) is None
    cache.put(name, ([tuple(["x"] * len(setcache.FIELDS))], []))   # no such severity
    assert not loader.load([str(rules_dir)], lazy=True).all_rules[0].recalled()


def test_rules_check_and_a_plain_load_compile_everything(cache, rules_dir):
    loader.load([str(rules_dir)], lazy=True)
    assert not loader.load([str(rules_dir)]).all_rules[0].recalled()
    ruleset, problems = loader.check([str(rules_dir)], examples=True)
    assert ruleset is not None and not ruleset.all_rules[0].recalled() and problems == []


def test_a_scan_of_an_empty_procfs_from_the_cache_compiles_nothing(tmp_path):
    """The second `scan` imports no compiler module, no detail family and no RE2; a broken
    rule file is still an error at start."""
    empty = tmp_path / "proc"
    empty.mkdir()
    code = ("import io, sys\n"
            "from agent.engine import files\n"
            "from agent.engine.parsecache import ParseCache\n"
            f"files.CACHE = ParseCache({str(tmp_path / 'cache')!r})\n"
            "from agent.cli import main\n"
            "err = io.StringIO()\n"
            f"rc = main(['scan', '--proc-root', {str(empty)!r}] + sys.argv[1:], io.StringIO(), "
            "err)\n"
            "import json; print(json.dumps([rc, err.getvalue(), sorted(sys.modules)]))\n")

    def scan(*args: str) -> tuple[int, str, set[str]]:
        out = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout
        rc, err, modules = json.loads(out)
        return rc, err, set(modules)

    compiler = {"agent.engine.conditions", "agent.engine.rules", "agent.engine.operators",
                "agent.engine.codegen", "agent.engine.schema", "agent.details", "re2", "yaml"}
    assert scan()[2] & compiler                      # the first compiles (and keeps)
    rc, err, modules = scan()
    assert rc == 0 and "0 processes scanned" in err and not modules & compiler
    bad = tmp_path / "bad.yaml"
    bad.write_text(RULES.replace("in: $miners", "in: $nothing"))
    rc, err, _ = scan("--rules", str(bad))
    assert rc == 2 and "problem(s) in the rules" in err


def test_a_recalled_set_that_no_longer_compiles_is_told_by_scan(cache, rules_dir, tmp_path,
                                                                 monkeypatch):
    """Same bytes and code compile the same; were it not so (another RE2 build refusing a
    pattern), `scan` reports the problems and exits 2 at the first process, no traceback."""
    import io

    from agent.cli import main
    from agent.errors import RuleProblem

    loader.load([str(rules_dir)], lazy=True)
    told = RuleProblem(str(rules_dir / "r.yaml"), 8, "bad regex")
    monkeypatch.setattr(loader, "_compile", lambda *a: (None, [told]))
    out, err = io.StringIO(), io.StringIO()
    fixture = Path(__file__).parent.parent / "fixtures" / "proc"
    rc = main(["scan", "--proc-root", str(fixture), "--rules", str(rules_dir)], out, err)
    assert rc == 2 and str(told) in err.getvalue() and out.getvalue() == ""
