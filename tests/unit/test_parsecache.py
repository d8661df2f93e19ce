"""The parse cache of rule files: read back only when nobody but root could have written it,
and then the rules load exactly as from the YAML."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from agent.engine import files, loader, operators, parsecache, yamlsrc
from agent.engine.parsecache import ParseCache, _key

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the cache is root's")

TEXT = """\
lists:
  miners: [xmrig, minerd]
rules:
  - id: a
    match: {proc.name: xmrig}
    match: {proc.name: minerd}
"""


@pytest.fixture
def cache(tmp_path) -> ParseCache:
    return ParseCache(str(tmp_path / "cache"))


def test_a_parsed_file_comes_back_with_its_lines_and_duplicates(cache):
    raw = TEXT.encode()
    cache.put(raw, yamlsrc.load(TEXT))
    data, dups = cache.get(raw)
    assert (data, dups) == yamlsrc.load(TEXT)
    assert isinstance(data, yamlsrc.Node) and isinstance(data["rules"], yamlsrc.Seq)
    assert data["rules"][0].line_of("id") == 4
    assert data["lists"].line_of("miners") == 2
    assert data["rules"].item_lines == [4]
    assert dups == [(6, "match")]
    assert cache.get(raw + b"\n") is None  # other bytes: another entry
    st = os.stat(os.path.join(cache.directory, _key(raw)))
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600)
    assert os.stat(cache.directory).st_mode & 0o777 == 0o700


def _entry(cache: ParseCache, raw: bytes) -> str:
    cache.put(raw, yamlsrc.load(raw.decode()))
    return os.path.join(cache.directory, _key(raw))


def test_an_entry_anyone_but_root_could_have_written_is_ignored(cache, tmp_path):
    raw = TEXT.encode()
    path = _entry(cache, raw)
    os.chmod(path, 0o644)
    assert cache.get(raw) is None                   # readable (or writable) by others
    os.chmod(path, 0o600)
    os.chown(path, 1000, 1000)
    assert cache.get(raw) is None                   # another user's file
    os.chown(path, 0, 0)
    os.link(path, tmp_path / "second-name")
    assert cache.get(raw) is None                   # a hard link someone else may hold
    os.unlink(tmp_path / "second-name")
    assert cache.get(raw) is not None
    os.chmod(cache.directory, 0o777)
    assert ParseCache(cache.directory).get(raw) is None   # a directory others can write
    os.chmod(cache.directory, 0o700)
    os.chown(cache.directory, 1000, 1000)
    assert ParseCache(cache.directory).get(raw) is None   # another user's directory
    os.chown(cache.directory, 0, 0)
    link = tmp_path / "linked"
    link.symlink_to(cache.directory)
    assert ParseCache(str(link)).get(raw) is None         # the directory through a symlink


def test_an_entry_that_is_a_symlink_or_names_other_code_is_ignored(cache, tmp_path):
    raw = TEXT.encode()
    path = _entry(cache, raw)
    os.rename(path, tmp_path / "real")
    os.symlink(tmp_path / "real", path)
    assert cache.get(raw) is None
    os.unlink(path)
    # root's own files, 0600: a pickle of another shape ...
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, pickle.dumps(("not", "an entry")))
    os.close(fd)
    assert cache.get(raw) is None
    os.unlink(path)

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, pickle.dumps(Boom()))          # ... and one that would run a command
    os.close(fd)
    assert cache.get(raw) is None
    assert not (tmp_path / "pwned").exists()


def test_no_cache_for_a_user_other_than_root(cache, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    raw = TEXT.encode()
    cache.put(raw, yamlsrc.load(TEXT))
    assert cache.get(raw) is None
    assert not os.path.exists(cache.directory)


def test_no_cache_below_a_directory_others_can_write(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)          # world-writable, not sticky: a tenant could swap it
    cache = ParseCache(str(shared / "nodewarden"))
    cache.put(TEXT.encode(), yamlsrc.load(TEXT))
    assert not cache.usable() and not os.path.exists(shared / "nodewarden")


def test_at_most_max_entries_are_kept_the_newest(tmp_path):
    cache = ParseCache(str(tmp_path / "cache"), max_entries=3)
    texts = [f"rules: []\n# {i}\n" for i in range(6)]
    for i, t in enumerate(texts):
        path = _entry(cache, t.encode())
        os.utime(path, ns=(i * 10**9, i * 10**9))
    assert len(os.listdir(cache.directory)) == 3
    assert [cache.get(t.encode()) is not None for t in texts] == [False] * 3 + [True] * 3


def test_the_shipped_rules_load_the_same_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "CACHE", ParseCache(str(tmp_path / "cache")))
    monkeypatch.setattr(operators, "KNOWN_VALID", set())  # as in a new command
    first = loader.load([loader.bundled_rules_dir()])
    shipped = loader.rule_files([loader.bundled_rules_dir()])
    # each file parsed, and the regex patterns found to compile (regexmemo.py)
    assert len(os.listdir(tmp_path / "cache")) == len(shipped) + 1
    again = loader.load([loader.bundled_rules_dir()])
    assert again.digest == first.digest
    assert [(r.id, r.line, r.file, r.kinds, r.severity) for r in again.all_rules] == \
        [(r.id, r.line, r.file, r.kinds, r.severity) for r in first.all_rules]


def test_problems_are_told_the_same_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "CACHE", ParseCache(str(tmp_path / "cache")))
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.yaml").write_text(TEXT)
    told = [loader.check([str(rules)])[1] for _ in range(2)]
    assert told[0] == told[1] and any("duplicate key 'match'" in str(p) for p in told[0])


def test_a_scan_from_the_cache_imports_no_yaml(tmp_path):
    code = ("import sys\n"
            "from agent.engine import files, loader\n"
            "from agent.engine.parsecache import ParseCache\n"
            f"files.CACHE = ParseCache({str(tmp_path / 'cache')!r})\n"
            "loader.load([loader.bundled_rules_dir()])\n"
            "print('yaml' in sys.modules)\n")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.strip() for _ in range(2)]
    assert runs == ["True", "False"]   # parsed once, then read back without PyYAML


REGEX_RULES = """\
rules:
  - id: r
    match:
      proc.cmdline: {regex: ['^x{2}y', 'z+$']}
  - id: bad
    match:
      proc.cmdline: {regex: '(unclosed'}
"""


def test_a_pattern_that_compiled_is_not_compiled_again_to_be_checked(tmp_path, monkeypatch,
                                                                  re2_compiles):
    """The next command takes the patterns that compiled from the cache; a bad one is never
    kept, so it is reported at its line every time."""
    monkeypatch.setattr(files, "CACHE", ParseCache(str(tmp_path / "cache")))
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.yaml").write_text(REGEX_RULES)
    bad = (f"{rules}/r.yaml:7: rule 'bad': bad regex '(unclosed' for proc.cmdline: missing ): "
           f"(unclosed; RE2 syntax has no backreferences or lookaround")
    compiled = re2_compiles
    for _ in range(2):
        monkeypatch.setattr(operators, "KNOWN_VALID", set())  # a new command
        compiled.clear()
        ruleset, problems = loader.check([str(rules)])
        assert ruleset is None and [str(p) for p in problems] == [bad]
        told = compiled[:]
    assert told == ["(unclosed"]   # the second command compiled only the bad one
    (rules / "r.yaml").write_text(REGEX_RULES.replace("(unclosed", "ok"))
    assert len(loader.load([str(rules)]).rules) == 2


def test_a_copy_of_the_same_parser_shares_entries_and_a_changed_one_does_not(
        tmp_path, monkeypatch):
    """Entries are keyed by the parser's source, not its file's mtime: another checkout of
    the same yamlsrc.py reads them, a changed one parses afresh."""
    raw = TEXT.encode()
    key = _key(raw)
    copy = tmp_path / "yamlsrc.py"
    copy.write_bytes(Path(yamlsrc.__file__).read_bytes())
    os.utime(copy, ns=(10**9, 10**9))
    monkeypatch.setattr(yamlsrc, "__file__", str(copy))
    try:
        parsecache._parser_stamp.cache_clear()
        assert _key(raw) == key
        copy.write_bytes(copy.read_bytes() + b"\n# changed\n")
        parsecache._parser_stamp.cache_clear()
        assert _key(raw) != key
    finally:
        monkeypatch.undo()
        parsecache._parser_stamp.cache_clear()
    assert _key(raw) == key
