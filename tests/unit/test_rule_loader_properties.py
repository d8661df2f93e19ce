"""Hypothesis: the rule loader never crashes, whatever bytes or structures it is fed.

It returns a rule set or a list of file:line problems; any other exception is a bug.
"""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.engine import loader
from agent.engine.files import TOP_KEYS
from agent.engine.rules import RULE_KEYS
from agent.engine.schema import ALL_OPERATORS, FIELDS

_settings = settings(max_examples=300, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])

words = st.sampled_from([*TOP_KEYS, *RULE_KEYS, *FIELDS, *ALL_OPERATORS, "all", "any", "not",
                         "macro", "$x", "x", "seconds", "threshold", "by", "distinct", "count",
                         "repeat", "process", "exe", "cmdline", "kind", "connection", "dport"])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True), st.text(max_size=20), words)
structures = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(words, st.text(max_size=8)), inner,
                                            max_size=5)),
    max_leaves=30,
)


def _check(tmp_path, data: bytes) -> None:
    p = tmp_path / "fuzz.yaml"
    p.write_bytes(data)
    ruleset, problems = loader.check([str(p)])
    assert (ruleset is None) == bool(problems)
    for problem in problems:
        assert problem.file == str(p) and problem.line >= 0 and problem.message


@_settings
@given(st.binary(max_size=2000))
def test_loader_never_crashes_on_arbitrary_bytes(tmp_path, data):
    _check(tmp_path, data)


@_settings
@given(st.text(max_size=2000))
def test_loader_never_crashes_on_arbitrary_text(tmp_path, text):
    _check(tmp_path, text.encode("utf-8", "surrogatepass"))


@_settings
@given(structures)
def test_loader_never_crashes_on_arbitrary_yaml_structures(tmp_path, data):
    _check(tmp_path, yaml.safe_dump(data, allow_unicode=True).encode())


@_settings
@given(st.lists(st.dictionaries(st.sampled_from(RULE_KEYS), structures, max_size=8), max_size=3))
def test_loader_never_crashes_on_rule_shaped_input(tmp_path, rules):
    _check(tmp_path, yaml.safe_dump({"rules": rules}, allow_unicode=True).encode())
