"""The one table of sensors, in the order they start, and the check of `sensors:` names.

A new sensor is a module (with its bpf/NAME.bpf.c if it is a BPF sensor) and one line
here; the config's `sensors:` then accepts its name and `sensor_up{sensor=NAME}` shows it.

The table names each sensor's module and class as text: the config checks `sensors:`
against the names alone, so `scan`, `replay` and `rules` never import a sensor (BCC, ctypes,
netlink). The classes are imported when the sensors are opened (`sensor_classes`, or
`SENSORS` on first use); a test checks each class says the name it is listed under.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from agent.sources.bpf import BpfSensor
    from agent.sources.proc_connector import ProcConnector

# a BPF sensor (compiled into the shared program) or one that reads its own descriptor
SensorClass: TypeAlias = "type[BpfSensor] | type[ProcConnector]"

# (name, "module:Class"), in the order they start
TABLE: tuple[tuple[str, str], ...] = (
    ("exec", "agent.sources.exec_sensor:ExecSensor"),
    ("tcp", "agent.sources.tcp_sensor:TcpSensor"),
    ("connect_guard", "agent.sources.connect_guard:ConnectGuard"),
    ("proc_connector", "agent.sources.proc_connector:ProcConnector"),
    ("file", "agent.sources.file_sensor:FileSensor"),
    ("privilege", "agent.sources.privilege_sensor:PrivilegeSensor"),
    ("kernel", "agent.sources.kernel_sensor:KernelSensor"),
    ("udp", "agent.sources.udp_sensor:UdpSensor"),
)

SENSOR_NAMES: tuple[str, ...] = tuple(name for name, _ in TABLE)


@cache
def sensor_classes() -> tuple[SensorClass, ...]:
    """The sensor classes of the table, in its order (imported on the first call)."""
    out = []
    for _, where in TABLE:
        module, _, cls = where.partition(":")
        out.append(getattr(importlib.import_module(module), cls))
    return tuple(out)


def __getattr__(name: str) -> tuple[SensorClass, ...]:
    # `SENSORS`, the classes, imported when first asked for (PEP 562)
    if name == "SENSORS":
        return sensor_classes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def sensors_problem(names: Sequence[object]) -> str:
    """What is wrong with a `sensors:` list ('' when nothing): each entry must name a
    registered sensor, once."""
    seen: set[object] = set()
    for name in names:
        if not isinstance(name, str) or name not in SENSOR_NAMES:
            close = difflib.get_close_matches(str(name), SENSOR_NAMES, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            return (f"unknown sensor {name!r}{hint}; sensors are "
                    f"{', '.join(SENSOR_NAMES)}")
        if name in seen:
            return f"sensor {name!r} is listed twice"
        seen.add(name)
    return ""


def selected(names: Sequence[str], registry: Sequence[SensorClass] | None = None,
             ) -> list[SensorClass]:
    """The registered sensors these names enable, in registry order."""
    return [s for s in (sensor_classes() if registry is None else registry) if s.name in names]
