"""Named lists and macros, shared across the files of one rule set, and list expansion.

A later file may use the lists and macros of an earlier one (`$miners` from the shipped
`lists.yaml`); a name is defined once in the whole set. Expansion is bounded: a reload
compiles while the agent runs, and a file of 10**6 list entries stalled it for seconds.
"""

from __future__ import annotations

from typing import Any

from agent.engine import yamlsrc
from agent.engine.files import RuleFile
from agent.engine.problems import Problems, suggest, type_name

MAX_LIST_VALUES = 10_000   # values of one condition, after $list references are expanded
MAX_VALUES_TOTAL = 200_000  # values of every condition of a rule set

# name -> (value, file, line)
Defined = dict[str, tuple[Any, str, int]]


class Definitions:
    """The `lists:` and `macros:` of every file of a rule set, and the values expanded so far."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        self.lists: Defined = {}
        self.macros: Defined = {}
        self.expanded = 0  # values of every expanded list so far (MAX_VALUES_TOTAL)

    def collect(self, src: RuleFile) -> None:
        """Take the lists and macros of one file, reporting names defined twice."""
        self.problems.file = src.file
        for section, store in (("lists", self.lists), ("macros", self.macros)):
            block = src.data.get(section)
            if block is None:
                continue
            if not isinstance(block, yamlsrc.Node):
                what = "list" if section == "lists" else "condition"
                self.problems.add(src.data.line_of(section),
                                  f"'{section}' must be a mapping of name to {what}")
                continue
            for name, value in block.items():
                self._define(section, store, name, value, block.line_of(name), src.file)

    def _define(self, section: str, store: Defined, name: str, value: Any, line: int,
                file: str) -> None:
        if name in store:
            _, other_file, other_line = store[name]
            self.problems.add(line, f"{section[:-1]} '{name}' is already defined at "
                                    f"{other_file}:{other_line}; rename one")
            return
        if section == "lists" and not isinstance(value, list):
            self.problems.add(line, f"list '{name}' must be a YAML list, not {type_name(value)}")
            return
        if section == "lists" and len(value) > MAX_LIST_VALUES:
            self.problems.add(line, f"list '{name}' has {len(value)} entries; the limit is "
                                    f"{MAX_LIST_VALUES}")
            value = value[:MAX_LIST_VALUES]  # refused above; users need not fail too
        store[name] = (value, file, line)

    def macro_node(self, name: str) -> Any:
        """A macro's condition as written, or None (for the kernel compilers)."""
        found = self.macros.get(name)
        return found[0] if found is not None else None

    def expand(self, value: Any, line: int, stack: tuple[str, ...] = ()) -> list[Any]:
        """A value (scalar, list or `$list` reference) as a flat list of scalars."""
        out = self._expand(value, line, stack)
        self.expanded += len(out)
        if len(out) > MAX_LIST_VALUES or self.expanded > MAX_VALUES_TOTAL:
            raise self.problems.fail(line, f"too many values: {len(out)} here, {self.expanded} "
                                           f"in the rule set so far; the limits are "
                                           f"{MAX_LIST_VALUES} per condition (lists expanded) "
                                           f"and {MAX_VALUES_TOTAL} in all")
        return out

    def _expand(self, value: Any, line: int, stack: tuple[str, ...]) -> list[Any]:
        items = value if isinstance(value, list) else [value]
        out: list[Any] = []
        for item in items:
            if isinstance(item, str) and item.startswith("$"):
                out.extend(self._reference(item[1:], line, stack))
                if len(out) > MAX_LIST_VALUES:
                    break  # `expand` reports it; a list of lists must not grow without end
            elif isinstance(item, (dict, list)):
                raise self.problems.fail(line, f"expected a scalar value, not {type_name(item)}")
            else:
                out.append(item)
        return out

    def _reference(self, name: str, line: int, stack: tuple[str, ...]) -> list[Any]:
        if name not in self.lists:
            raise self.problems.fail(line, f"unknown list '${name}'{suggest(name, self.lists)}; "
                                           f"define it under 'lists:'")
        if name in stack:
            raise self.problems.fail(line, f"list cycle: {' -> '.join((*stack, name))}")
        value, _, lline = self.lists[name]
        return self._expand(value, lline, (*stack, name))
