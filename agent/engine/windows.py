"""Thresholds over time: "more than N (distinct) values per key within S seconds", and the
`window:` block of a rule that asks for one.

State is bounded whatever the input: keys live in an LRU, and each key keeps at most
threshold + 1 observations, which is all that is needed to know the threshold was passed.
Time is the event's own time, so replaying yesterday's events gives yesterday's answers.

A connection event may stand for several calls (`Connection.count`: repeats of a (process,
destination) the kernel counted): it counts as that many events, all at its time. A
`distinct` window counts values, which repeats of one destination do not add to.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any

from agent.engine import yamlsrc
from agent.engine.problems import Problems, suggest
from agent.engine.schema import Getter, field, field_names
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
        self.max_keys = max_keys
        # an LRU of keys (most recently observed last): a plain OrderedDict, a third of the
        # cost of cachetools' LRUCache per event, the same eviction
        self._keys: OrderedDict[tuple[Any, ...], _KeyState] = OrderedDict()
        self._key = _key_of(self.by)

    def observe(self, ev: Event) -> int | None:
        """Record `ev`; return the count when this event takes its key over the threshold."""
        key = self._key(ev)
        keys = self._keys
        state = keys.get(key)
        if state is None:
            if len(keys) >= self.max_keys:
                keys.popitem(last=False)  # the least recently observed
            state = keys[key] = _KeyState()
        else:
            keys.move_to_end(key)
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
            conn = ev.connection
            if conn is not None and conn.count > 1:
                times.extend([now] * min(conn.count, cap))
            else:
                times.append(now)
            while times and (times[0] < horizon or len(times) > cap):
                times.popleft()
            count = len(times)
        if count > self.threshold and now >= state.silenced_until:
            state.silenced_until = now + self.seconds
            return count
        return None

    def reset(self) -> None:
        """Forget every key (`rules test` runs each example on fresh windows)."""
        self._keys.clear()

    def cache(self) -> WindowKeys:
        """The keys held and their bound (`max_keys`), for the cache metrics."""
        return WindowKeys(self)


class WindowKeys:
    """A window's keys as the cache metrics read a cache: `len()` and `maxsize`."""

    def __init__(self, window: Window) -> None:
        self._window = window

    def __len__(self) -> int:
        return len(self._window._keys)

    @property
    def maxsize(self) -> int:
        """At most this many keys are held (the least recently observed go first)."""
        return self._window.max_keys


def _key_of(by: tuple[Callable[[Event], Any], ...]) -> Callable[[Event], tuple[Any, ...]]:
    """The key of an event: the values of the `by` fields (one call for one field)."""
    if len(by) == 1:
        g = by[0]
        return lambda ev: (g(ev),)
    return lambda ev: tuple([g(ev) for g in by])


WINDOW_KEYS = ("seconds", "threshold", "by", "distinct")


def compile_window(node: yamlsrc.Node, problems: Problems) -> Window | None:
    """The Window of a rule's `window:` block, or None when it has none."""
    if "window" not in node:
        return None
    w = node["window"]
    line = node.line_of("window")
    if not isinstance(w, yamlsrc.Node):
        raise problems.fail(line, "'window' must be a mapping: {seconds: 10, threshold: 50, "
                                  "distinct: conn.dport, by: [workspace.id]}")
    for key in w:
        if key not in WINDOW_KEYS:
            raise problems.fail(w.line_of(key), f"unknown window field '{key}'"
                                                f"{suggest(str(key), WINDOW_KEYS)}")
    seconds = w.get("seconds")
    threshold = w.get("threshold")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise problems.fail(w.line_of("seconds"), "window 'seconds' must be a positive number")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise problems.fail(w.line_of("threshold"),
                            "window 'threshold' must be a positive integer")
    by_raw = w.get("by", [])
    by = [_getter(w, "by", name, problems) for name in
          (by_raw if isinstance(by_raw, list) else [by_raw])]
    distinct = _getter(w, "distinct", w["distinct"], problems) if "distinct" in w else None
    return Window(float(seconds), threshold, by, distinct)


def _getter(w: yamlsrc.Node, key: str, name: Any, problems: Problems) -> Getter:
    f = field(str(name))
    if f is None:
        raise problems.fail(w.line_of(key), f"window '{key}': unknown field '{name}'"
                                            f"{suggest(str(name), field_names())}")
    return f.get
