"""The one table of sensors, in the order they start, and the check of `sensors:` names.

A new sensor is a module (with its bpf/NAME.bpf.c if it is a BPF sensor) and one line
here; the config's `sensors:` then accepts its name and `sensor_up{sensor=NAME}` shows it.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from agent.sources.bpf import BpfSensor
from agent.sources.connect_guard import ConnectGuard
from agent.sources.exec_sensor import ExecSensor
from agent.sources.proc_connector import ProcConnector
from agent.sources.tcp_sensor import TcpSensor

# a BPF sensor (compiled into the shared program) or one that reads its own descriptor
SensorClass = type[BpfSensor] | type[ProcConnector]

SENSORS: tuple[SensorClass, ...] = (
    ExecSensor,
    TcpSensor,
    ConnectGuard,
    ProcConnector,
)

SENSOR_NAMES: tuple[str, ...] = tuple(s.name for s in SENSORS)


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


def selected(names: Sequence[str], registry: Sequence[SensorClass] = SENSORS,
             ) -> list[SensorClass]:
    """The registered sensors these names enable, in registry order."""
    return [s for s in registry if s.name in names]
