"""The sensors without a kernel: what goes into the in-kernel rule maps (through fake BCC
tables), the registry's enable/disable and fallback logic, `sensors:` validation, and the
SensorSet's polling of several sources."""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import pytest

from agent.config import Config, load_config
from agent.engine import loader
from agent.errors import ConfigError
from agent.metrics import Metrics
from agent.model import EventKind
from agent.sources import bpf
from agent.sources.bpf import BpfSensor
from agent.sources.connect_guard import ConnectGuard, cgroup2_root, connect_masks
from agent.sources.exec_sensor import ExecSensor, exec_masks
from agent.sources.kevents import KcfgSlot, RawEvent
from agent.sources.registry import SENSOR_NAMES, sensors_problem
from agent.sources.sensor import SensorUnavailable
from agent.sources.sensorset import SensorSet, open_sensors, print_bpf


def _plain(v: Any) -> Any:
    if isinstance(v, (ctypes.c_int, ctypes.c_ulonglong)):
        return v.value
    if isinstance(v, ctypes.Array):
        return bytes(v)
    return v


class FakeKey:
    """A BCC table key: fields set as attributes, or the one value given."""

    def __init__(self, *value: Any) -> None:
        self.value = value

    def frozen(self) -> Any:
        fields = {k: _plain(v) for k, v in vars(self).items() if k != "value"}
        return tuple(sorted(fields.items())) if fields else self.value[0]


class FakeTable:
    """What the map writers use of a BCC table, with every write in order."""

    def __init__(self) -> None:
        self.items: dict[Any, int] = {}
        self.log: list[Any] = []

    def Key(self, *value: Any) -> FakeKey:  # noqa: N802 - BCC's name
        return FakeKey(*value)

    def __setitem__(self, key: Any, value: Any) -> None:
        k = key.frozen() if isinstance(key, FakeKey) else _plain(key)
        self.items[k] = _plain(value)
        self.log.append((k, _plain(value)))

    def clear(self) -> None:
        self.items.clear()
        self.log.append("clear")


class FakeProgram:
    """The maps of a compiled program, by name."""

    def __init__(self) -> None:
        self.maps: dict[str, FakeTable] = {}

    def __getitem__(self, name: str) -> FakeTable:
        return self.maps.setdefault(name, FakeTable())


def test_exec_masks_give_each_rule_its_slot_bit_and_cut_keys_like_the_kernel():
    long_path = "/opt/" + "x" * 300
    names, paths, enforce = exec_masks([({"xmrig", "minerd"}, {"/tmp/xmrig"}, True),
                                        ({"xmrig", "a-name-of-20-bytes"}, {long_path}, False)])
    assert names == {b"xmrig": 0b11, b"minerd": 0b01, b"a-name-of-20-by": 0b10}
    assert paths == {b"/tmp/xmrig": 0b01, long_path.encode()[:255]: 0b10}
    assert enforce == 0b01


def test_connect_masks_fill_the_named_config_slots():
    from agent.engine.kernel import KernelConnectSpec

    net = KernelConnectSpec(cidrs=[(104, b"\0" * 10 + b"\xff\xff" + bytes([10, 0, 0, 0]))],
                            need_net=True)
    port = KernelConnectSpec(ports={3333, 14444}, need_ports=True)
    nets, ports, cfg = connect_masks([(net, False), (port, True)])
    assert nets == {net.cidrs[0]: 0b01}
    assert ports == {3333: 0b10, 14444: 0b10}
    assert cfg == {KcfgSlot.CONNECT_ENFORCE: 0b10, KcfgSlot.CONNECT_NET: 0b01,
                   KcfgSlot.CONNECT_PORT: 0b10, KcfgSlot.CONNECT_ALL: 0b11}


RULES = """rules:
  - id: miner-names
    severity: critical
    action: kill
    mode: enforce
    match: {proc.exe_name: [xmrig, kubelet]}
  - id: tmp-path
    severity: high
    action: kill
    match: {proc.exe: /tmp/evil}
  - id: not-in-kernel
    severity: low
    action: report
    match: {proc.exe_name: curl}
  - id: pool-port
    severity: critical
    action: kill
    on: connect
    match: {conn.dport: {in: [3333]}}
"""


def _sensor_set(tmp_path: Path) -> tuple[SensorSet, FakeProgram, list[Any]]:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    program = FakeProgram()
    sensors = [ExecSensor(program), ConnectGuard(program)]  # type: ignore[arg-type]
    return SensorSet(sensors, None), program, loader.load([str(path)]).rules


def test_kernel_rules_by_slot_with_protected_names_left_out(tmp_path):
    sensors, program, rules = _sensor_set(tmp_path)
    exec_rules, conn_rules = sensors.load_kernel_rules(rules, "audit", frozenset({"kubelet"}))
    assert [r.id for r in exec_rules] == ["miner-names", "tmp-path"]   # slot 0, slot 1
    assert [r.id for r in conn_rules] == ["pool-port"]
    names = program["kexec_names"].items
    assert names == {(("comm", b"xmrig"),): 0b01}, "a protected name entered the kernel"
    assert program["kexec_paths"].items == {(("path", b"/tmp/evil"),): 0b10}
    kcfg = program["kcfg"]
    # the rule's own mode wins: only slot 0 kills in the kernel in audit
    assert kcfg.items[KcfgSlot.EXEC_ENFORCE] == 0b01
    assert kcfg.items[KcfgSlot.CONNECT_ALL] == 0b01 and kcfg.items[KcfgSlot.CONNECT_ENFORCE] == 0
    assert program["kconn_ports"].items == {3333: 0b01}


def test_kernel_maps_are_off_while_they_change_and_replaced_on_reload(tmp_path):
    sensors, program, rules = _sensor_set(tmp_path)
    sensors.load_kernel_rules(rules, "enforce", frozenset())
    sensors.load_kernel_rules(rules[1:], "enforce", frozenset())   # a reload drops a rule
    kcfg = program["kcfg"].log
    exec_writes = [v for k, v in kcfg if k == KcfgSlot.EXEC_ENFORCE]
    assert exec_writes == [0, 0b11, 0, 0b01]   # off first, on after the maps
    assert program["kexec_names"].items == {}   # no stale name left behind
    conn_all = [i for i, (k, _) in enumerate(kcfg) if k == KcfgSlot.CONNECT_ALL]
    assert kcfg[conn_all[0]][1] == 0 and conn_all[-1] == len(kcfg) - 1


def test_no_kernel_rules_without_a_kernel_sensor_or_with_kernel_enforcement_off(tmp_path):
    _, program, rules = _sensor_set(tmp_path)
    assert SensorSet([], None).load_kernel_rules(rules, "enforce", frozenset()) == ([], [])
    running = SensorSet([ExecSensor(program)], None)  # type: ignore[arg-type]
    assert running.load_kernel_rules(rules, "enforce", frozenset())[0]
    assert program["kexec_names"].items  # loaded ...
    # ... and a reload that turns kernel_enforcement off empties the maps
    assert running.load_kernel_rules(rules, "enforce", frozenset(), in_kernel=False) == ([], [])
    assert program["kexec_names"].items == {} and program["kexec_paths"].items == {}


def _rules_on(tmp_path: Path, *kinds: str) -> list[Any]:
    path = tmp_path / "on.yaml"
    path.write_text("rules:\n" + "".join(
        f"  - id: r-{k}\n    on: [{k}]\n    match: {{proc.name: x}}\n" for k in kinds))
    return loader.load([str(path)]).rules


@pytest.mark.parametrize("kinds,everything,skipped", [
    # the shipped rules judge connects only: accepts and closes are not sent
    (None, False, {"accept", "close"}),
    (("exec",), False, {"connect", "accept", "close"}),
    (("connect",), False, {"accept", "close"}),
    (("accept",), False, {"connect", "close"}),
    # an inbound close is attributed through its accept: wanting closes keeps accepts
    (("close",), False, {"connect"}),
    (("connect", "accept", "close"), False, set()),
    # a recording (--record) wants every event, whatever the rules
    (("exec",), True, set()),
])
def test_the_kernel_sends_only_the_tcp_kinds_a_rule_or_the_recording_uses(
        tmp_path, kinds, everything, skipped):
    from agent.sources import kevents
    from agent.sources.tcp_sensor import TcpSensor

    rules = (loader.load([loader.bundled_rules_dir()]).rules if kinds is None
             else _rules_on(tmp_path, *kinds))
    program = FakeProgram()
    sensors = SensorSet([ExecSensor(program), TcpSensor(program)],  # type: ignore[arg-type]
                        program)  # type: ignore[arg-type]
    assert sensors.send_only(rules, everything=everything) == skipped
    mask = program["kcfg"].items[KcfgSlot.SKIP_KINDS]
    assert mask == sum(1 << getattr(kevents, k.upper()) for k in skipped)


def test_udp_sends_only_the_kinds_a_rule_uses_and_forgets_its_sockets_when_turned_back_on(
        tmp_path):
    from agent.sources import kevents
    from agent.sources.udp_sensor import UdpSensor

    program = FakeProgram()
    sensors = SensorSet([UdpSensor(program)], program)  # type: ignore[arg-type]
    turns = [(("dns",), 1 << kevents.DNS, {"udp"}), (("udp", "dns"), 1 << kevents.UDP
                                                     | 1 << kevents.DNS, set()),
             (("exec",), 0, {"udp", "dns"}), (("udp",), 1 << kevents.UDP, {"dns"})]
    for kinds, want, left in turns:
        assert sensors.send_only(_rules_on(tmp_path, *kinds)) == left
        assert program["udp_want"].items == {0: want}
    # the socket maps are emptied each time it sends again after sending nothing: at the
    # first turn and the last, not in between
    assert program["socks"].log == program["sock_owners"].log == ["clear", "clear"]


# -- the registry: enable, disable, fall back, say why --------------------------------------


class FakeSensor:
    """A sensor with its own descriptor (a pipe), like the netlink proc connector."""

    name: ClassVar[str] = "fake"
    title: ClassVar[str] = "fake sensor"
    kinds: ClassVar[frozenset[EventKind]] = frozenset({EventKind.EXEC})
    fallback_for: ClassVar[str | None] = None
    fails: ClassVar[str] = ""

    def __init__(self, on_record: Any) -> None:
        self.on_record = on_record
        self.r = self.w = -1
        self.closed = False

    @property
    def up(self) -> bool:
        return self.r >= 0 and not self.closed

    def start(self) -> None:
        if self.fails:
            raise SensorUnavailable(self.fails, "fix it")
        self.r, self.w = os.pipe()

    def poll(self, timeout_ms: int) -> None:
        import select

        if select.select([self.r], [], [], timeout_ms / 1000)[0]:
            for b in os.read(self.r, 64):
                self.on_record(RawEvent(0, b, 0, 0, 0, 0, 0, 0, 0, 0, "", "", "", self.name))

    def fileno(self) -> int | None:
        return self.r

    def lost(self) -> int:
        return 7

    def close(self) -> None:
        self.closed = True
        os.close(self.r)
        os.close(self.w)


class Primary(FakeSensor):
    name = "primary"


class Standby(FakeSensor):
    name = "standby"
    title = "standby sensor"
    fallback_for = "primary"


class Other(FakeSensor):
    name = "other"


class Broken(FakeSensor):
    name = "broken"
    fails = "no such device"


class Tcp(BpfSensor):
    name = "bpfish"
    kinds = frozenset({EventKind.CONNECT})
    source = "tcp.bpf.c"


REGISTRY = (Tcp, Primary, Standby, Other, Broken)


def _open(names: list[str], bpf: str = "off") -> tuple[SensorSet, Metrics, list[RawEvent]]:
    cfg = Config()
    cfg.sensors, cfg.bpf = names, bpf
    got: list[RawEvent] = []
    metrics = Metrics()
    return open_sensors(cfg, got.append, metrics, REGISTRY), metrics, got  # type: ignore[arg-type]


def _up(metrics: Metrics, name: str) -> float:
    return metrics.sensor_up.labels(sensor=name)._value.get()


def test_a_fallback_runs_only_when_what_it_stands_in_for_does_not():
    both, metrics, _ = _open(["primary", "standby"])
    assert both.names == ["primary"] and _up(metrics, "standby") == 0
    both.close()
    alone, metrics, _ = _open(["standby"])
    assert alone.names == ["standby"] and _up(metrics, "standby") == 1
    alone.close()


def test_unnamed_sensors_do_not_run_and_sensors_run_in_registry_order():
    s, metrics, _ = _open(["other", "primary"])
    assert s.names == ["primary", "other"]
    assert s.kinds == {EventKind.EXEC}
    assert (_up(metrics, "primary"), _up(metrics, "other"), _up(metrics, "standby")) == (1, 1, 0)
    s.close()
    none, _, _ = _open([])
    assert not none and none.names == [] and none.describe() == "" and none.lost() == {}


def test_a_sensor_that_cannot_load_says_why_once_and_the_rest_run(caplog):
    caplog.set_level(logging.WARNING)
    s, metrics, _ = _open(["broken", "other"])
    assert s.names == ["other"] and _up(metrics, "broken") == 0
    why = [r.getMessage() for r in caplog.records]
    assert why == ["sensor broken unavailable: no such device; fix: fix it"]
    s.close()


def test_bpf_sensors_that_cannot_load_say_so_once_with_what_stands_in(caplog):
    caplog.set_level(logging.WARNING)
    s, _, _ = _open(["bpfish", "standby"])
    assert s.describe() == "standby sensor and procfs scans"
    assert [r.getMessage() for r in caplog.records] == [
        "eBPF sensors unavailable: disabled in the configuration (bpf: off). Using the "
        "standby sensor and procfs scans every 10s."]
    s.close()
    caplog.clear()
    s, _, _ = _open(["bpfish", "broken"])
    assert [r.getMessage() for r in caplog.records] == [
        "eBPF sensors unavailable: disabled in the configuration (bpf: off). The broken sensor "
        "is unavailable too (no such device; fix: fix it). Running on procfs scans every 10s: "
        "processes that live shorter than that can be missed, and no TCP events are seen."]


def test_bpf_required_refuses_to_start_without_the_program(monkeypatch):
    def missing() -> None:
        raise SensorUnavailable("the bcc Python module is missing", "install it")

    monkeypatch.setattr(bpf, "check", missing)
    cfg = Config()
    cfg.sensors, cfg.bpf = ["bpfish"], "required"
    with pytest.raises(ConfigError, match="bpf: required.*bcc Python module is missing"):
        open_sensors(cfg, lambda r: None, Metrics(), REGISTRY)  # type: ignore[arg-type]


def test_the_set_polls_every_descriptor_and_reports_losses_by_source():
    s, _, got = _open(["primary", "other"])
    primary, other = s.sensors
    assert isinstance(primary, FakeSensor) and isinstance(other, FakeSensor)
    os.write(other.w, bytes([4, 5]))
    s.poll(100)
    assert [(r.kind, r.filename) for r in got] == [(4, "other"), (5, "other")]
    os.write(primary.w, bytes([1]))
    s.poll(100)
    assert got[-1].filename == "primary"
    assert s.lost() == {"primary": 7, "other": 7}
    s.close()
    assert primary.closed and other.closed and s.names == []


# -- `sensors:` in the config ---------------------------------------------------------------


def test_every_registered_sensor_is_on_by_default():
    assert Config().sensors == list(SENSOR_NAMES)
    assert {"exec", "tcp", "connect_guard", "proc_connector"} <= set(SENSOR_NAMES)


@pytest.mark.parametrize(("names", "problem"), [
    (["exce"], "unknown sensor 'exce' (did you mean 'exec'?); sensors are exec, tcp, "),
    (["tcp", "tcp"], "sensor 'tcp' is listed twice"),
    ([3], "unknown sensor 3; sensors are"),
])
def test_sensor_names_are_checked_with_a_suggestion(names, problem):
    assert sensors_problem(names).startswith(problem)
    assert sensors_problem(["exec", "proc_connector"]) == ""


def test_config_file_with_an_unknown_sensor_names_the_fix(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sensors: [exec, tpc]\n")
    with pytest.raises(ConfigError, match=r"sensors: unknown sensor 'tpc' \(did you mean 'tcp'"):
        load_config(str(path))
    path.write_text("sensors: tcp\n")
    with pytest.raises(ConfigError, match="'sensors' has the wrong type"):
        load_config(str(path))
    path.write_text("sensors: [exec]\n")
    assert load_config(str(path)).sensors == ["exec"]


def test_print_bpf_shows_the_program_of_the_enabled_sensors_only():
    cfg = Config()
    cfg.sensors = ["exec", "proc_connector"]
    text = print_bpf(cfg)
    assert "sched_process_exec" in text and "inet_sock_set_state" not in text
    assert "nw_connect4" not in text
    cfg.sensors = list(SENSOR_NAMES)
    assert "inet_sock_set_state" in print_bpf(cfg) and "nw_connect4" in print_bpf(cfg)


def test_cgroup2_root_reads_mountinfo(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text("22 1 0:21 / /proc rw - proc proc rw\n"
                    "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n")
    assert cgroup2_root(str(info)) == "/sys/fs/cgroup"
    info.write_text("30 25 0:26 /sub /mnt/x rw - cgroup2 cgroup2 rw\n")
    assert cgroup2_root(str(info)) is None
    assert cgroup2_root(str(tmp_path / "missing")) is None


def test_releasing_the_compilers_memory_survives_odd_maps(tmp_path):
    """What /proc/self/maps names is only a hint: a range that is not mapped (here, a made-up
    one) or an unreadable file costs nothing and breaks nothing."""
    maps = tmp_path / "maps"
    maps.write_text("7f0000000000-7f0000001000 r-xp 00000000 08:01 1 "
                    "/usr/lib/x86_64-linux-gnu/libLLVM-14.so.1\nnot a line\n")
    assert bpf.release_compiler_memory(str(maps)) >= 0
    assert bpf.release_compiler_memory(str(tmp_path / "missing")) >= 0
