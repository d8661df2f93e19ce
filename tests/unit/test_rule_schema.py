"""The rule language's fields are defined once (agent/engine/schema.py) and documented in
rules/README.md: a field added to the schema without its row in the table fails here."""

from __future__ import annotations

import re
from pathlib import Path

from agent.details import BY_FAMILY
from agent.engine.schema import FIELDS, LABEL_PREFIX, OPERATORS

README = Path(__file__).resolve().parents[2] / "rules" / "README.md"


def _documented() -> set[str]:
    text = README.read_text()
    table = text[text.index("## Fields"):text.index("## Operators")]
    return set(re.findall(r"`([a-z0-9_.]+(?:\.KEY)?)`", table))


def test_every_field_has_a_row_in_the_rules_readme() -> None:
    documented = _documented()
    # proc.X stands for parent.X and ancestor.X too (the README says so above the table)
    missing = sorted(name for name in FIELDS
                     if re.sub(r"^(parent|ancestor)\.", "proc.", name) not in documented)
    assert missing == []
    assert LABEL_PREFIX + "KEY" in documented


def test_every_documented_field_exists() -> None:
    stale = sorted(n for n in _documented()
                   if n.startswith(("proc.", "conn.", "pod.", "workspace.", "container.",
                                    *(f"{f}." for f in BY_FAMILY)))
                   and n not in FIELDS and n != LABEL_PREFIX + "KEY")
    assert stale == []


def test_every_field_type_has_operators() -> None:
    assert {f.type for f in FIELDS.values()} <= set(OPERATORS)
