"""Rule files are read once: the rule set's digest is of the very bytes that were compiled,
so a file rewritten while the agent loads cannot make the digest describe other rules."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from agent.engine import loader
from agent.engine.files import BUNDLED, bundled_rules_dir, rule_files

FIRST = "rules:\n  - id: first\n    match: {proc.name: xmrig}\n"
SECOND = "rules:\n  - id: second\n    match: {proc.name: minerd}\n"


def _digest(*files: tuple[str, bytes]) -> str:
    h = hashlib.sha256()
    for name, raw in files:
        h.update(name.encode() + b"\0" + raw + b"\0")
    return h.hexdigest()[:16]


def test_the_digest_is_of_the_bytes_compiled_even_when_the_file_changes_after_reading(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(FIRST)
    real_open = Path.open
    opened: list[Path] = []

    class RewrittenAfterRead:
        """The file as opened; once read, the file on disk holds other rules."""

        def __init__(self, f: Any) -> None:
            self.f = f

        def read(self, *args: Any) -> Any:
            data = self.f.read(*args)
            with open(path, "w") as out:  # builtins.open: Path.open is patched
                out.write(SECOND)
            return data

        def __enter__(self) -> RewrittenAfterRead:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

    def open_then_rewrite(self: Path, *args: Any, **kwargs: Any) -> Any:
        opened.append(self)
        f = real_open(self, *args, **kwargs)
        return RewrittenAfterRead(f) if self == path else f

    monkeypatch.setattr(Path, "open", open_then_rewrite)
    rs = loader.load([str(path)])
    assert opened == [path]
    assert [r.id for r in rs.rules] == ["first"]
    assert rs.digest == _digest(("a.yaml", FIRST.encode()))
    assert rs.digest != _digest(("a.yaml", SECOND.encode()))


def test_the_digest_covers_every_file_by_name_and_content(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(FIRST)
    (tmp_path / "b.yml").write_text(SECOND)
    (tmp_path / "notes.txt").write_text("not a rule file")
    rs = loader.load([str(tmp_path)])
    assert rs.sources == [str(tmp_path / "a.yaml"), str(tmp_path / "b.yml")]
    assert rs.digest == _digest(("a.yaml", FIRST.encode()), ("b.yml", SECOND.encode()))
    (tmp_path / "b.yml").write_text(SECOND.replace("minerd", "cpuminer"))
    assert loader.load([str(tmp_path)]).digest != rs.digest


def test_bundled_names_the_shipped_rules() -> None:
    assert rule_files([BUNDLED]) == rule_files([bundled_rules_dir()])
    assert any(p.name == "cryptominers.yaml" for p in rule_files([BUNDLED]))


def test_a_file_that_is_not_utf8_is_a_problem_at_its_first_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"rules: []\n# \xff\n")
    rs, problems = loader.check([str(path)])
    assert rs is None
    assert [str(p).split(": ")[0] for p in problems] == [f"{path}:1"]
    assert "cannot read rule file" in str(problems[0])
