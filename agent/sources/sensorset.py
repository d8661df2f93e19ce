"""The sensors that run: chosen by the config's `sensors:`, started once, polled together.

`open_sensors` starts every enabled sensor that can load, in registry order: the BPF ones
compiled into one program, then the others; a fallback (the netlink proc connector) only
when the sensor it stands in for is not up. Each that cannot load says why, once. The
agent's loop then calls `poll`, `lost`, and `load_kernel_rules` after every rules or
config change.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Sequence
from typing import Protocol

from agent.config import Config
from agent.engine.kernel import connect_slots, exec_slots
from agent.engine.ruleset import Rule
from agent.errors import ConfigError
from agent.metrics import Metrics
from agent.model import RULE_KINDS, EventKind
from agent.sources import bpf
from agent.sources.connect_guard import ConnectGuard
from agent.sources.exec_sensor import ExecSensor
from agent.sources.registry import SENSORS, SensorClass, selected
from agent.sources.sensor import OnRecord, Sensor, SensorUnavailable

log = logging.getLogger("nodewarden")


class Reader(Protocol):
    """What is polled: the shared BPF program, or a sensor with its own descriptor."""

    def poll(self, timeout_ms: int) -> None:
        """Deliver a bounded batch, waiting up to `timeout_ms`."""
        ...

    def fileno(self) -> int | None:
        """A descriptor to wait on, if any."""
        ...

    def lost(self) -> int:
        """Records lost so far."""
        ...


class SensorSet:
    """The running sensors and what polls them. Empty when none could start (the agent
    then runs on procfs scans alone)."""

    def __init__(self, sensors: Sequence[Sensor], program: bpf.BpfProgram | None) -> None:
        self.sensors = list(sensors)
        self.program = program
        # by their events_lost_total{source} label; BPF sensors share the program's buffer
        self._readers: dict[str, Reader] = {}
        if program is not None and any(isinstance(s, bpf.BpfSensor) for s in sensors):
            self._readers["bpf"] = program
        for s in sensors:
            if not isinstance(s, bpf.BpfSensor):
                self._readers[s.name] = s

    @property
    def names(self) -> list[str]:
        """The running sensors' names, in registry order."""
        return [s.name for s in self.sensors]

    @property
    def kinds(self) -> frozenset[EventKind]:
        """Every event kind the running sensors report."""
        return frozenset().union(*(s.kinds for s in self.sensors))

    def __bool__(self) -> bool:
        return bool(self.sensors)

    def describe(self) -> str:
        """What runs, for the "ready:" log line (procfs scans come with every set)."""
        parts = []
        bpf_names = [s.name for s in self.sensors if isinstance(s, bpf.BpfSensor)]
        if bpf_names:
            parts.append(f"eBPF sensors ({', '.join(bpf_names)})")
        parts.extend(s.title for s in self.sensors if not isinstance(s, bpf.BpfSensor))
        return " and ".join([*parts, "procfs scans"]) if parts else ""

    def poll(self, timeout_ms: int) -> None:
        """Deliver what every sensor has pending, waiting up to `timeout_ms` for any."""
        readers = list(self._readers.values())
        if len(readers) == 1:
            readers[0].poll(timeout_ms)
            return
        fds: dict[int, Reader] = {}
        for r in readers:
            fd = r.fileno()
            if fd is None:
                # a reader without a descriptor waits itself: share the wait between them
                for each in readers:
                    each.poll(timeout_ms // len(readers) if each.fileno() is None else 0)
                return
            fds[fd] = r
        ready, _, _ = select.select(list(fds), [], [], timeout_ms / 1000)
        for fd in ready:
            fds[fd].poll(0)

    def lost(self) -> dict[str, int]:
        """Records lost so far, by source (the events_lost_total label): bpf, proc_connector."""
        return {source: r.lost() for source, r in self._readers.items()}

    def _running(self, cls: type[ExecSensor] | type[ConnectGuard],
                 ) -> ExecSensor | ConnectGuard | None:
        return next((s for s in self.sensors if isinstance(s, cls)), None)

    def load_kernel_rules(self, rules: Sequence[Rule], mode: str, protected_names: frozenset[str],
                          in_kernel: bool = True) -> tuple[list[Rule], list[Rule]]:
        """Put the rules the kernel can enforce into its maps, in their current modes:
        (exec rules, connect rules), each by slot, for mapping a record's slot to its rule.
        Protected names never enter the maps: the kernel does not ask before it kills.
        Empty lists when no sensor enforces in the kernel; with `in_kernel` false
        (kernel_enforcement: false) the maps are emptied and every rule stays in userspace."""
        if not in_kernel:
            rules = []
        exec_rules: list[Rule] = []
        conn_rules: list[Rule] = []
        exec_sensor = self._running(ExecSensor)
        if isinstance(exec_sensor, ExecSensor):
            slots = exec_slots(rules, mode, protected_names)
            exec_sensor.load_rules([(s.names, s.paths, s.enforce) for s in slots])
            exec_rules = [s.rule for s in slots]
            enforcing = [s.rule.id for s in slots if s.enforce]
            log.info("in-kernel exec rules: %d (%s); enforcing: %s", len(exec_rules),
                     ", ".join(r.id for r in exec_rules) or "none",
                     ", ".join(enforcing) or "none (audit)")
        guard = self._running(ConnectGuard)
        if isinstance(guard, ConnectGuard):
            conn = connect_slots(rules, mode)
            guard.load_rules([(s.spec, s.enforce) for s in conn])
            conn_rules = [s.rule for s in conn]
            if conn_rules:
                log.info("in-kernel connect rules: %s", ", ".join(r.id for r in conn_rules))
        return exec_rules, conn_rules

    def send_only(self, rules: Sequence[Rule], everything: bool = False) -> frozenset[EventKind]:
        """Tell the kernel which record kinds are used: those the `rules` are `on`, or
        every kind with `everything` (a recording). The others are not sent at all (with
        the shipped rules, which judge connects only, a loopback connection is one record
        instead of four). Called after every rules or config change; until the first call
        every kind is sent (udp: none). Each BPF sensor with a `kind_switch` (tcp,
        privilege, kernel, udp) is told. Returns the kinds left out."""
        wanted = frozenset(RULE_KINDS) if everything else frozenset(
            k for r in rules for k in r.kinds)
        left_out: set[EventKind] = set()
        for s in self.sensors:
            if not isinstance(s, bpf.BpfSensor) or s.kind_switch is None:
                continue
            left = s.send_kinds(wanted)
            if left:
                log.info("%s records not sent (no loaded rule uses them): %s",
                         s.kind_switch.label or s.name, ", ".join(sorted(left)))
            left_out |= left
        return frozenset(left_out)

    def use_rules(self, rules: Sequence[Rule]) -> None:
        """Give every sensor that filters in the kernel by what the rules test (the file
        sensor's watched prefixes, say) the loaded rules: at start and on every reload. A
        sensor says so by having a `use_rules(rules)` method."""
        for s in self.sensors:
            use = getattr(s, "use_rules", None)
            if use is not None:
                use(rules)

    def load_workspace_markers(self, names: Sequence[str]) -> None:
        """The workspace marker names the exec sensor looks for in the kernel (the process
        tree's `workspace_markers`); nothing when it does not run."""
        exec_sensor = self._running(ExecSensor)
        if isinstance(exec_sensor, ExecSensor):
            exec_sensor.load_markers(names)

    def release_compiler_memory(self) -> int:
        """Once every sensor is attached and its maps filled: give back the memory the BPF
        compiler held (nothing recompiles while the agent runs). Bytes released."""
        return bpf.release_compiler_memory() if self.program is not None else 0

    def close(self) -> None:
        """Stop every sensor and detach every BPF program."""
        for s in reversed(self.sensors):
            s.close()
        if self.program is not None:
            self.program.close()
        self.sensors.clear()


def attachable(wanted: Sequence[SensorClass], tracefs: str | None = None,
               ) -> tuple[list[type[bpf.BpfSensor]], dict[str, str], list[str]]:
    """Which of the wanted BPF sensors this kernel has the tracepoints for: (those,
    sensor name -> why each other cannot attach, the cflags that leave out the optional
    tracepoints it lacks). BCC cannot compile a program naming a missing tracepoint, so
    one sensor's would stop them all. A missing optional one is said once here."""
    keep: list[type[bpf.BpfSensor]] = []
    dropped: dict[str, str] = {}
    cflags: list[str] = []
    for cls in wanted:
        if not issubclass(cls, bpf.BpfSensor):
            continue
        missing = bpf.missing_tracepoints(bpf.tracepoints_of(cls.source),
                                          tracefs or bpf.TRACEFS)
        needed = [t for t in missing if t not in cls.optional_tracepoints]
        if needed:
            dropped[cls.name] = (f"this kernel has no tracepoint {', '.join(needed)}; "
                                 "fix: a kernel with that syscall")
            continue
        if missing:
            log.warning("sensor %s runs without %s: this kernel does not have %s", cls.name,
                        ", ".join(missing), "it" if len(missing) == 1 else "them")
            cflags.extend(bpf.without(t) for t in missing)
        keep.append(cls)
    return keep, dropped, cflags


def _load_program(wanted: Sequence[SensorClass], cfg: Config, on_record: OnRecord,
                  ) -> tuple[bpf.BpfProgram | None, str, dict[str, str]]:
    """The BPF program of the wanted BPF sensors this kernel can attach, or None and why
    it did not load; and why each BPF sensor left out of it could not attach."""
    if not any(issubclass(s, bpf.BpfSensor) for s in wanted):
        return None, "", {}
    if cfg.bpf == "off":
        return None, "disabled in the configuration (bpf: off)", {}
    dropped: dict[str, str] = {}
    try:
        bpf.check()
        keep, dropped, cflags = attachable(wanted)
        if not keep:
            return None, "", dropped
        transport = {"auto": None, "ring": False, "perf": True}[cfg.bpf_transport]
        program = bpf.BpfProgram([s.source for s in keep], on_record,
                                 ring_pages=cfg.ring_buffer_pages, perf=transport,
                                 cflags=cflags)
    except SensorUnavailable as e:
        why = f"{e.reason}; fix: {e.fix}"
    except Exception as e:  # noqa: BLE001 - BCC raises bare Exception on compile errors
        why = f"the BPF program failed to load ({e})"
    else:
        log.info("eBPF sensors loaded (%s buffer): %s", "perf" if program.perf else "ring",
                 ", ".join(program.tracepoints()))
        return program, "", dropped
    if cfg.bpf == "required":
        raise ConfigError(f"eBPF is required (bpf: required) but unavailable: {why}")
    return None, why, dropped


def _start(cls: SensorClass, program: bpf.BpfProgram | None,
           on_record: OnRecord) -> Sensor:
    sensor: Sensor
    if issubclass(cls, bpf.BpfSensor):
        assert program is not None
        sensor = cls(program)
    else:
        sensor = cls(on_record)
    sensor.start()
    return sensor


def open_sensors(cfg: Config, on_record: OnRecord, metrics: Metrics,
                 registry: Sequence[SensorClass] = SENSORS) -> SensorSet:
    """Start the sensors `cfg.sensors` names that can run here; `on_record` gets every
    record. Raises ConfigError when `bpf: required` and the BPF program cannot load."""
    for cls in registry:
        metrics.sensor_up.labels(sensor=cls.name).set(0)
    wanted = selected(cfg.sensors, registry)
    program, bpf_why, why = _load_program(wanted, cfg, on_record)
    running: list[Sensor] = []
    for cls in wanted:
        if cls.fallback_for and cls.fallback_for in (s.name for s in running):
            continue   # what it stands in for runs
        if cls.name in why:
            continue   # this kernel cannot attach it
        if issubclass(cls, bpf.BpfSensor) and program is None:
            why[cls.name] = bpf_why
            continue
        try:
            running.append(_start(cls, program, on_record))
        except SensorUnavailable as e:
            why[cls.name] = f"{e.reason}; fix: {e.fix}" if e.fix else e.reason
            continue
        metrics.sensor_up.labels(sensor=cls.name).set(1)
    if program is not None and not any(isinstance(s, bpf.BpfSensor) for s in running):
        program.close()
        program = None
    _say_why(running, why, bpf_why, cfg.scan_interval)
    return SensorSet(running, program)


def _say_why(running: Sequence[Sensor], why: dict[str, str], bpf_why: str,
             interval: float) -> None:
    """One warning per sensor that was asked for and does not run; the BPF sensors share
    one, which also says what runs in their place."""
    if bpf_why:
        msg = f"eBPF sensors unavailable: {bpf_why}."
        stand_ins = [s.title for s in running if s.fallback_for]
        for name, reason in why.items():
            if reason != bpf_why:
                msg += f" The {name} sensor is unavailable too ({reason})."
        if stand_ins:
            msg += f" Using the {' and the '.join(stand_ins)} and procfs scans every {interval:g}s."
        elif not running:
            msg += (f" Running on procfs scans every {interval:g}s: processes that live shorter "
                    "than that can be missed, and no TCP events are seen.")
        log.warning("%s", msg)
        return
    for name, reason in why.items():
        log.warning("sensor %s unavailable: %s", name, reason)


def print_bpf(cfg: Config) -> str:
    """The BPF program the sensors `cfg.sensors` enables compile into (`run --print-bpf`)."""
    return bpf.program_text([s.source for s in selected(cfg.sensors)
                             if issubclass(s, bpf.BpfSensor)])
