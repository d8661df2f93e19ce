"""agent/lru.py: a bounded map that forgets the least recently used key first (the judge's
record of the processes it judged)."""

from __future__ import annotations

import pytest

from agent.lru import LRU


def test_the_least_recently_used_key_goes_first() -> None:
    lru: LRU[str, int] = LRU(3)
    for i, k in enumerate("abc"):
        lru[k] = i
    assert lru.get("a") == 0  # a read is a use: b is now the oldest
    lru["d"] = 3
    assert "b" not in lru and len(lru) == 3
    lru["c"] = 9  # a write is a use too
    lru["e"] = 4
    assert "a" not in lru
    assert [lru.get(k) for k in "cde"] == [9, 3, 4]
    assert lru.maxsize == 3


def test_a_membership_test_is_not_a_use() -> None:
    lru: LRU[str, int] = LRU(2)
    lru["a"], lru["b"] = 1, 2
    assert "a" in lru
    lru["c"] = 3
    assert "a" not in lru and lru.get("b") == 2


def test_a_missing_key_gives_the_default() -> None:
    lru: LRU[str, int] = LRU(1)
    assert lru.get("x") is None and lru.get("x", 5) == 5
    lru["x"] = 0
    assert lru.get("x", 5) == 0  # a falsy value is a value


def test_an_lru_holds_at_least_one_key() -> None:
    with pytest.raises(ValueError):
        LRU(0)
