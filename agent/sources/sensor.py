"""The Sensor contract: what every event source the agent polls provides.

A sensor reports kernel records (`RawEvent`) to the callback it was built with; the
observer turns them into Events. Sensors are listed in one table (`registry.SENSORS`) and
run by a `SensorSet`; the config's `sensors:` names which run. Adding one is one module
(plus its `.bpf.c` for a BPF sensor) and one line in that table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Protocol

from agent.model import EventKind
from agent.sources.kevents import RawEvent

OnRecord = Callable[[RawEvent], None]


class SensorUnavailable(Exception):
    """A sensor cannot run here; `reason` says what is missing, `fix` how to get it."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(f"{reason} ({fix})")
        self.reason = reason
        self.fix = fix


class Sensor(Protocol):
    """An event source: started once, then polled by the agent's loop until closed.

    `name` is its entry in the config's `sensors:` and its `sensor_up{sensor=...}` label;
    `title` names it in logs; `kinds` are the event kinds it reports. `fallback_for` names
    the sensor it stands in for: it runs only when that one is not up (the netlink proc
    connector for `exec`)."""

    name: ClassVar[str]
    title: ClassVar[str]
    kinds: ClassVar[frozenset[EventKind]]
    fallback_for: ClassVar[str | None]

    @property
    def up(self) -> bool:
        """Whether it started and still delivers."""
        ...

    def start(self) -> None:
        """Begin delivering records; raises SensorUnavailable saying why it cannot."""
        ...

    def poll(self, timeout_ms: int) -> None:
        """Deliver pending records (a bounded batch), waiting up to `timeout_ms` for one."""
        ...

    def fileno(self) -> int | None:
        """A descriptor that turns readable when records wait, or None (then poll waits)."""
        ...

    def lost(self) -> int:
        """Records lost since start (the kernel could not queue them, or the socket
        overflowed): a reconciliation scan follows any increase."""
        ...

    def close(self) -> None:
        """Stop delivering and release what the kernel holds for it (programs, sockets)."""
        ...
