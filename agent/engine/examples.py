"""A rule's `examples:`: events that must (or must not) make it fire, for `rules test`.

An example is an event in the recorded-event format (agent/codec.py), so what a user
records with `--record` can be pasted into a rule as it is; `repeat` turns one event into
a sequence for window rules.

Examples are compiled only when asked for (`rules check`, `rules test`, the tests): they
are most of the cost of loading the shipped rules (the codec and ~1,000 events) and nothing
the agent, `scan` or `replay` judges with. A broken example is still a problem at its
`file:line` whenever they are compiled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agent.codec import EventFormatError, event_from_json
from agent.engine import yamlsrc
from agent.engine.files import RuleFile
from agent.engine.problems import Problems, suggest
from agent.engine.ruleset import Example, Rule
from agent.model import Event

MAX_REPEAT = 10_000
_STEP = 0.01  # seconds between the events of a repeated example


def attach_examples(sources: Sequence[RuleFile], rules: Mapping[str, Rule],
                    problems: Problems) -> None:
    """Compile the examples of every compiled rule of `sources` into `rule.examples`; each
    bad one is a problem at its line. A rule that did not compile has none."""
    by_place = {(r.file, r.line): r for r in rules.values()}
    for src in sources:
        block = src.data.get("rules")
        if not isinstance(block, yamlsrc.Seq):
            continue
        problems.file = src.file
        for node in block:
            rule = by_place.get((src.file, node.line)) if isinstance(node, yamlsrc.Node) else None
            if rule is not None and rule.id == node.get("id"):
                problems.rule_id = rule.id
                rule.examples = compile_examples(node, problems)
        problems.rule_id = ""


def compile_examples(node: yamlsrc.Node, problems: Problems) -> list[Example]:
    """The examples of one rule; each bad one is a problem at its line."""
    if "examples" not in node:
        return []
    block = node["examples"]
    if not isinstance(block, yamlsrc.Node):
        problems.add(node.line_of("examples"),
                     "'examples' must be a mapping with 'match' and/or 'no_match' lists")
        return []
    out = []
    for key in block:
        if key not in ("match", "no_match"):
            problems.add(block.line_of(key), f"unknown examples key '{key}'"
                                             f"{suggest(str(key), ('match', 'no_match'))}")
            continue
        items = block[key]
        if not isinstance(items, yamlsrc.Seq):
            problems.add(block.line_of(key), f"examples '{key}' must be a list of events")
            continue
        for i, item in enumerate(items):
            iline = items.line_of(i)
            try:
                out.append(Example(iline, key == "match", example_events(item)))
            except EventFormatError as e:
                problems.add(iline, f"example event: {e}")
    return out


def example_events(item: Any) -> list[Event]:
    """One example: an event, or with `repeat: {count: N, increment: connection.dport}`
    a sequence of N events (for window rules), 10 ms apart. Raises EventFormatError."""
    if not isinstance(item, dict):
        raise EventFormatError("an example must be a mapping in the recorded-event format")
    repeat = item.get("repeat")
    if repeat is None:
        return [event_from_json(item)]
    if not isinstance(repeat, dict) or not isinstance(repeat.get("count"), int):
        raise EventFormatError("'repeat' must be {count: N} with an optional increment: "
                               "connection.dport")
    count = repeat["count"]
    if not 1 <= count <= MAX_REPEAT:
        raise EventFormatError(f"'repeat' count must be between 1 and {MAX_REPEAT}")
    inc = repeat.get("increment")
    base = {k: v for k, v in item.items() if k != "repeat"}
    events = []
    for n in range(count):
        obj = _deep_copy(base)
        obj["time"] = float(base.get("time", 0.0)) + n * _STEP
        if inc is not None:
            _increment(obj, str(inc), n)
        events.append(event_from_json(obj))
    return events


def _increment(obj: dict[str, Any], path: str, n: int) -> None:
    parts = path.split(".")
    target = obj
    for p in parts[:-1]:
        target = target.setdefault(p, {})
    if not isinstance(target.get(parts[-1], 0), int):
        raise EventFormatError(f"'increment' {path} must name an integer field")
    target[parts[-1]] = target.get(parts[-1], 0) + n


def _deep_copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _deep_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deep_copy(v) for v in obj]
    return obj
