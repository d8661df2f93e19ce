"""YAML that remembers where things came from.

PyYAML's safe loader, with every mapping returned as a `Node` dict that knows its own
line and the line of each key, so every rule problem can be reported as `file:line`.
Duplicate keys, which PyYAML silently resolves to the last one, are reported.
"""

from __future__ import annotations

from typing import Any

import yaml

_Base: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Node(dict):
    """A YAML mapping with `line` (1-based) and `key_lines`; keys are never booleans."""

    line: int = 0
    key_lines: dict[Any, int]

    def line_of(self, key: Any) -> int:
        """The line of `key`, or of the mapping itself when the key is absent."""
        return self.key_lines.get(key, self.line)


class Seq(list):
    """A YAML sequence with `line` and `item_lines`."""

    line: int = 0
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        """The line of item `index`, or of the sequence itself past its end."""
        return self.item_lines[index] if index < len(self.item_lines) else self.line


class _Loader(_Base):  # type: ignore[misc, valid-type]
    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, Any]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Node:  # type: ignore[override]
        out = Node()
        out.line = node.start_mark.line + 1
        out.key_lines = {}
        self.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, bool):
                # YAML 1.1 reads a bare `on:` or `yes:` key as a boolean; no key of ours is one
                key = key_node.value
            try:
                hash(key)
            except TypeError:
                key = str(key)
            if key in out:
                self.duplicates.append((key_node.start_mark.line + 1, key))
            out[key] = self.construct_object(value_node, deep=True)
            out.key_lines[key] = key_node.start_mark.line + 1
        return out

    def construct_seq(self, node: yaml.SequenceNode) -> Seq:
        out = Seq(self.construct_object(child, deep=True) for child in node.value)
        out.line = node.start_mark.line + 1
        out.item_lines = [child.start_mark.line + 1 for child in node.value]
        return out


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _Loader.construct_seq)


class YamlSyntaxError(Exception):
    """The text is not YAML; `line` is where the parser gave up."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def load(text: str) -> tuple[Any, list[tuple[int, Any]]]:
    """Parse one YAML document; returns (data, [(line, duplicate key), ...])."""
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        context = f" ({e.context})" if e.context else ""
        raise YamlSyntaxError(line, f"{e.problem or e}{context}") from None
    except yaml.YAMLError as e:
        raise YamlSyntaxError(1, str(e)) from None
    finally:
        loader.dispose()
    return data, loader.duplicates
