"""Thresholds over time: "more than N (distinct) values per key within S seconds".

State is bounded whatever the input: keys live in an LRU, and each key keeps at most
threshold + 1 observations, which is all that is needed to know the threshold was passed.
Time is the event's own time, so replaying yesterday's events gives yesterday's answers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from cachetools import LRUCache

from agent.model import Event

MAX_KEYS = 10_000


class _KeyState:
    __slots__ = ("seen", "silenced_until", "times")

    def __init__(self) -> None:
        self.seen: dict[Any, float] = {}
        self.times: deque[float] = deque()
        self.silenced_until = float("-inf")


class Window:
    """Counts matching events per key; `observe` says when the threshold is crossed.

    After firing, a key stays silent for one window so that a scan of 10,000 ports is one
    finding per window, not 9,950.
    """

    def __init__(self, seconds: float, threshold: int, by: Sequence[Callable[[Event], Any]],
                 distinct: Callable[[Event], Any] | None = None, max_keys: int = MAX_KEYS) -> None:
        self.seconds = seconds
        self.threshold = threshold
        self.by = tuple(by)
        self.distinct = distinct
        self._keys: LRUCache[tuple[Any, ...], _KeyState] = LRUCache(maxsize=max_keys)

    def observe(self, ev: Event) -> int | None:
        """Record `ev`; return the count when this event takes its key over the threshold."""
        key = tuple(g(ev) for g in self.by)
        state = self._keys.get(key)
        if state is None:
            state = _KeyState()
            self._keys[key] = state
        now = ev.time
        horizon = now - self.seconds
        cap = self.threshold + 1
        if self.distinct is not None:
            seen = state.seen
            value = self.distinct(ev)
            seen.pop(value, None)
            seen[value] = now  # insertion order == last-seen order
            while seen:
                first = next(iter(seen))
                if seen[first] >= horizon and len(seen) <= cap:
                    break
                del seen[first]
            count = len(seen)
        else:
            times = state.times
            times.append(now)
            while times and (times[0] < horizon or len(times) > cap):
                times.popleft()
            count = len(times)
        if count > self.threshold and now >= state.silenced_until:
            state.silenced_until = now + self.seconds
            return count
        return None

    def reset(self) -> None:
        self._keys.clear()
