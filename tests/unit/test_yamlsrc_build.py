"""yamlsrc builds rule files with its own walk (faster than PyYAML's constructor): the data,
the lines and the duplicate keys must be exactly what PyYAML's constructor gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.engine import yamlsrc
from agent.engine.files import bundled_rules_dir


def reference(text: str) -> tuple[Any, list[tuple[int, Any]]]:
    loader = yamlsrc._loader_class()(text)
    try:
        return loader.get_single_data(), loader.duplicates
    finally:
        loader.dispose()


def same(a: Any, b: Any) -> None:
    assert type(a) is type(b)
    if isinstance(a, yamlsrc.Node):
        assert (a.line, a.key_lines, list(a)) == (b.line, b.key_lines, list(b))
        for k in a:
            if a[k] is not a:
                same(a[k], b[k])
    elif isinstance(a, yamlsrc.Seq):
        assert (a.line, a.item_lines, len(a)) == (b.line, b.item_lines, len(b))
        for x, y in zip(a, b, strict=True):
            if x is not a:
                same(x, y)
    else:
        assert a == b


ODD = [
    "",
    "a: 1\nb: [x, 2.5, null, true, ~, 0x1f, 2026-12-01]\n",
    "on: 1\nyes: 2\n",                               # keys YAML 1.1 reads as booleans
    "a: 1\na: 2\nb: {c: 1, c: 3}\n",                  # duplicate keys, with their lines
    "base: &b {x: 1, y: [1, 2]}\nthis: *b\nthat: *b\n",
    "base: &b {x: 1}\nmerged:\n  <<: *b\n  y: 2\n",    # merge keys: PyYAML's constructor
    "s: !!set {a, b}\nbin: !!binary aGk=\n",
    "? [1, 2]\n: unhashable key\n",
    "rules:\n  - id: r\n    match: {proc.name: x}\n    examples:\n      match:\n"
    "        - {process: {exe: /x, cmdline: [a, 'b c']}}\n",
]


@pytest.mark.parametrize("text", ODD)
def test_odd_documents_build_as_pyyaml_builds_them(text):
    got, dups = yamlsrc.load(text)
    want, want_dups = reference(text)
    assert dups == want_dups
    same(got, want)


def test_the_shipped_rules_build_as_pyyaml_builds_them():
    files = sorted(Path(bundled_rules_dir()).glob("*.yaml"))
    assert files
    for f in files:
        text = f.read_text()
        got, dups = yamlsrc.load(text)
        want, want_dups = reference(text)
        assert dups == want_dups == []
        same(got, want)


def test_an_alias_is_the_object_of_its_anchor():
    data, _ = yamlsrc.load("base: &b {x: [1]}\nthis: *b\n")
    assert data["this"] is data["base"]


@pytest.mark.parametrize("text", ["a: [1\n", "a: 1\n---\nb: 2\n", "- &a [1, *a]\n",
                                  "a: &m {b: *m}\n"])
def test_errors_are_syntax_errors_with_a_line(text):
    with pytest.raises(yamlsrc.YamlSyntaxError) as e:
        yamlsrc.load(text)
    assert e.value.line >= 1
