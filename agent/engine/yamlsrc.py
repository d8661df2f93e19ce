"""YAML that remembers where things came from.

PyYAML's safe loader, with every mapping returned as a `Node` dict that knows its own
line and the line of each key, so every rule problem can be reported as `file:line`.
Duplicate keys, which PyYAML silently resolves to the last one, are reported.

libyaml parses and composes the node tree; the plain mappings, sequences and strings that
make up a rule file are then built by one small walk (`_Builder`), 2-3x cheaper than
PyYAML's generic constructor (the shipped rules are ~5,600 nodes, most of the cost of
loading them); every other tag (numbers, booleans, null, dates, sets, merge keys) goes to
that constructor, so values are PyYAML's.
"""

from __future__ import annotations

import functools
from typing import Any

# PyYAML (and libyaml) is imported when a text is parsed, not with this module: a command
# whose rule files are all in the parse cache (agent/engine/parsecache.py) never needs it.


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


@functools.cache
def _loader_class() -> type:
    """The safe loader (libyaml's when present) that builds `Node` and `Seq` with lines."""
    import yaml

    base: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class _Loader(base):  # type: ignore[misc, valid-type]
        def __init__(self, stream: Any) -> None:
            super().__init__(stream)
            self.duplicates: list[tuple[int, Any]] = []

        def construct_mapping(self, node: Any, deep: bool = False) -> Node:  # type: ignore[override]
            out = Node()
            out.line = node.start_mark.line + 1
            out.key_lines = {}
            self.flatten_mapping(node)
            for key_node, value_node in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, bool):
                    # YAML 1.1 reads a bare `on:` or `yes:` key as a boolean; no key of
                    # ours is one
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

        def construct_seq(self, node: Any) -> Seq:
            out = Seq(self.construct_object(child, deep=True) for child in node.value)
            out.line = node.start_mark.line + 1
            out.item_lines = [child.start_mark.line + 1 for child in node.value]
            return out

    _Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_mapping)
    _Loader.add_constructor("tag:yaml.org,2002:seq", _Loader.construct_seq)
    return _Loader


class YamlSyntaxError(Exception):
    """The text is not YAML; `line` is where the parser gave up."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"


class _Builder:
    """Builds the data of a composed node tree as `_loader_class()` would, faster: an alias is the
    object built for its anchor (a chain of aliases costs nothing), a node inside itself
    (`&a [*a]`) is the same error, and what is not a plain map, seq or str goes to the
    loader."""

    def __init__(self, loader: Any) -> None:
        from yaml.nodes import MappingNode, ScalarNode, SequenceNode

        self.loader = loader
        self.built: dict[int, Any] = {}
        self.building: set[int] = set()
        self.scalar, self.mapping, self.sequence = ScalarNode, MappingNode, SequenceNode

    def _enter(self, node: Any) -> None:
        if id(node) in self.building:
            from yaml.constructor import ConstructorError

            raise ConstructorError(None, None, "found unconstructable recursive node",
                                   node.start_mark)
        self.building.add(id(node))

    def build(self, node: Any) -> Any:
        """The value of `node`."""
        tag = node.tag
        cls = node.__class__
        if cls is self.scalar and tag == _STR:
            return node.value
        if cls is self.mapping and tag == _MAP:
            return self._mapping(node)
        if cls is self.sequence and tag == _SEQ:
            return self._sequence(node)
        return self.loader.construct_object(node, deep=True)

    def _mapping(self, node: Any) -> Node:
        out = self.built.get(id(node))
        if out is not None:
            return out
        if any(k.tag == _MERGE for k, _ in node.value):
            return self.loader.construct_object(node, deep=True)  # type: ignore[no-any-return]
        self._enter(node)
        out = Node()
        out.line = node.start_mark.line + 1
        lines = out.key_lines = {}
        dups = self.loader.duplicates
        for key_node, value_node in node.value:
            key = self.build(key_node)
            if isinstance(key, bool):
                key = key_node.value  # as _Loader.construct_mapping: no key of ours is one
            try:
                hash(key)
            except TypeError:
                key = str(key)
            line = key_node.start_mark.line + 1
            if key in out:
                dups.append((line, key))
            out[key] = self.build(value_node)
            lines[key] = line
        self.built[id(node)] = out
        return out

    def _sequence(self, node: Any) -> Seq:
        out = self.built.get(id(node))
        if out is not None:
            return out
        self._enter(node)
        out = Seq(self.build(child) for child in node.value)
        out.line = node.start_mark.line + 1
        out.item_lines = [child.start_mark.line + 1 for child in node.value]
        self.built[id(node)] = out
        return out


def load(text: str) -> tuple[Any, list[tuple[int, Any]]]:
    """Parse one YAML document; returns (data, [(line, duplicate key), ...])."""
    import yaml

    loader = _loader_class()(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else _Builder(loader).build(node)
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
