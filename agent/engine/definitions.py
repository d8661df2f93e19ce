"""Named lists and macros, shared across the files of one rule set, and list expansion.

A later file may use the lists and macros of an earlier one (`$miners` from the shipped
`lists.yaml`); a name is defined once in the whole set. A list is extended, in any file of
the set, by `NAME: {append: [...]}`: a user trusts one more namespace or installer without
copying the shipped list (a copy would fork it from future releases), and every rule that
uses `$NAME` sees the entries. Expansion is bounded: a reload compiles while the agent runs,
and a file of 10**6 list entries stalled it for seconds.
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
APPEND = "append"


class Definitions:
    """The `lists:` and `macros:` of every file of a rule set, and the values expanded so far."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        self.lists: Defined = {}
        self.macros: Defined = {}
        self.expanded = 0  # values of every expanded list so far (MAX_VALUES_TOTAL)
        # name -> [(entries, file, line)]: `NAME: {append: [...]}`, merged by finish()
        self.appends: dict[str, list[tuple[list[Any], str, int]]] = {}

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
        if section == "lists" and isinstance(value, dict):
            self._append(name, value, line, file)
            return
        if name in store:
            _, other_file, other_line = store[name]
            hint = (f"; to add entries to it write `{name}: {{append: [...]}}`"
                    if section == "lists" else "")
            self.problems.add(line, f"{section[:-1]} '{name}' is already defined at "
                                    f"{other_file}:{other_line}; rename one{hint}")
            return
        if section == "lists" and not isinstance(value, list):
            self.problems.add(line, f"list '{name}' must be a YAML list, not {type_name(value)}")
            return
        if section == "lists" and len(value) > MAX_LIST_VALUES:
            self.problems.add(line, f"list '{name}' has {len(value)} entries; the limit is "
                                    f"{MAX_LIST_VALUES}")
            value = value[:MAX_LIST_VALUES]  # refused above; users need not fail too
        store[name] = (value, file, line)

    def _append(self, name: str, value: dict[str, Any], line: int, file: str) -> None:
        """`NAME: {append: [...]}`: entries for a list defined in any file of the set."""
        entries = value.get(APPEND)
        if set(value) != {APPEND} or not isinstance(entries, list):
            self.problems.add(line, f"list '{name}' must be a YAML list, or {{append: [...]}} "
                                    f"to add entries to a list defined in another file")
            return
        self.appends.setdefault(name, []).append((entries, file, line))

    def finish(self) -> None:
        """Merge the appended entries into their lists (after every file is collected, so
        a user's file may come before or after the shipped one); an append to a list no
        file defines is a problem at its line."""
        for name, parts in self.appends.items():
            found = self.lists.get(name)
            if found is None:
                for _, file, line in parts:
                    self.problems.file = file
                    self.problems.add(line, f"append to unknown list '{name}'"
                                            f"{suggest(name, self.lists)}; a list is "
                                            f"extended only where some file defines it")
                continue
            value, file, line = found
            merged = _union(value, *(entries for entries, _, _ in parts))
            if len(merged) > MAX_LIST_VALUES:
                self.problems.file = parts[-1][1]
                self.problems.add(parts[-1][2], f"list '{name}' has {len(merged)} entries "
                                                f"with those appended; the limit is "
                                                f"{MAX_LIST_VALUES}")
                merged = merged[:MAX_LIST_VALUES]
            self.lists[name] = (merged, file, line)
        self.appends.clear()

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


def _union(*lists: list[Any]) -> list[Any]:
    """The entries of every list in order, each once (unhashable ones, which expansion
    refuses with a message, are kept as they are)."""
    seen: set[Any] = set()
    out: list[Any] = []
    for entries in lists:
        for e in entries:
            try:
                if e in seen:
                    continue
                seen.add(e)
            except TypeError:
                pass
            out.append(e)
    return out
