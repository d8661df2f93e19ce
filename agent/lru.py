"""A bounded map that forgets the least recently used key first.

The judge marks every process instance it judged in one of these (an exec, a scan), so it
is on the path of every event: an OrderedDict's C methods do in ~0.15 µs what
cachetools' LRUCache does in ~1.5 µs (its Python `__setitem__` chain and linked list), with
the same eviction. A plain dict would be cheaper still to fill, but evicting its oldest
key (`next(iter(d))`) walks over the holes earlier evictions left, which grows without
bound between resizes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_MISSING = object()


class LRU(Generic[K, V]):
    """At most `maxsize` keys; a key read (`get`) or written becomes the most recent, and
    the least recent goes when a new key would exceed `maxsize`. `len` and `maxsize` are
    what the cache metrics read."""

    __slots__ = ("_d", "maxsize")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"an LRU holds at least one key, not {maxsize}")
        self._d: OrderedDict[K, V] = OrderedDict()
        self.maxsize = maxsize

    def get(self, key: K, default: V | None = None) -> V | None:
        """The value of `key` (now the most recent), or `default` without it."""
        d = self._d
        value = d.get(key, _MISSING)
        if value is _MISSING:
            return default
        d.move_to_end(key)
        return value  # type: ignore[return-value]

    def __setitem__(self, key: K, value: V) -> None:
        d = self._d
        d[key] = value
        d.move_to_end(key)
        if len(d) > self.maxsize:
            d.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        """Whether `key` is held (not a use: it stays where it was)."""
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)
