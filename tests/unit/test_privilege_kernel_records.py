"""The privilege and kernel sensors' records: their layouts held to bpf/events.h, what each
decodes to, what is read from a (fake) /proc while the caller lives, the kinds the kernel
is told to skip, and a sensor whose tracepoints a kernel lacks left out alone."""

from __future__ import annotations

import logging
import os
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from agent.config import Config
from agent.details import BpfLoad, Memfd, ModuleLoad, Mount, Namespaces, PrivChange, Ptrace
from agent.metrics import Metrics
from agent.model import EventKind
from agent.sources import bpf, kernrecord, kevents, privrecord, sensorset
from agent.sources.kernel_sensor import KernelSensor
from agent.sources.privilege_sensor import PrivilegeSensor
from agent.sources.tcp_sensor import TcpSensor

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
HEADER = (BPF_DIR / "events.h").read_text()
CODES = {"u64": "Q", "u32": "I", "u16": "H", "u8": "B"}


def _struct(name: str) -> list[tuple[str, str]]:
    body = re.search(rf"struct {name}\s*{{(.*?)}};", HEADER, re.S)
    assert body is not None, name
    text = re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.S)
    defines = {k: int(v) for k, v in re.findall(r"#define (NW_\w+) (\d+)", HEADER)}
    return [(field, f"{defines[size]}s" if size else CODES[ctype])
            for ctype, field, size in re.findall(r"(\w+)\s+(\w+)(?:\[(\w+)\])?;", text)]


@pytest.mark.parametrize("name,fields,size", [
    ("nw_priv_event", privrecord.PRIV_FIELDS, 312),
    ("nw_mount_event", kernrecord.MOUNT_FIELDS, 592),
    ("nw_kern_event", kernrecord.KERN_FIELDS, 72),
])
def test_each_layout_is_its_struct_without_padding(name, fields, size):
    assert _struct(name) == list(fields)
    codes = "".join(c for _, c in fields)
    assert struct.calcsize("@" + codes) == struct.calcsize("<" + codes) == size
    assert kevents.LAYOUTS[name] == fields


def test_the_call_enum_matches_enum_nw_call():
    body = re.search(r"enum nw_call\s*{(.*?)};", HEADER, re.S)
    assert body is not None
    assert dict(re.findall(r"NW_CALL_(\w+) = (\d+)", body.group(1))) == {
        c.name: str(c.value) for c in privrecord.Call}


def _priv(kind: int, call: int = 0, arg: int = 0, target: int = 0, name: bytes = b"") -> bytes:
    return privrecord.PRIV_FORMAT.pack(5, kind, 42, 1000, call, arg, target, 0, b"evil\0", name)


def _kern(kind: int, call: int = 0, flags: int = 0, fd: int = 0, prog_type: int = 0,
          name: bytes = b"") -> bytes:
    return kernrecord.KERN_FORMAT.pack(5, kind, 42, 1000, call, flags, fd, prog_type, b"x", name)


class Proc:
    """A fake procfs root for the resolvers."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.path = root

    def link(self, rel: str, target: str) -> None:
        p = self.path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, p)

    def file(self, rel: str, data: bytes) -> None:
        p = self.path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


@pytest.fixture
def proc(tmp_path: Path) -> Proc:
    return Proc(tmp_path)


def test_a_ptrace_attach_is_resolved_to_its_targets_exe_and_uid(proc):
    raw = kevents.decode(_priv(kevents.RecordKind.PTRACE, privrecord.Call.PTRACE, 16, 77))
    assert (raw.kind, raw.pid, raw.uid, raw.comm) == (9, 42, 1000, "evil")
    proc.link("77/exe", "/usr/sbin/sshd")
    proc.file("77/status", b"Name:\tsshd\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n")
    assert raw.detail.resolve(42, proc) == Ptrace(request="attach", target_pid=77,
                                                  target_exe="/usr/sbin/sshd", target_uid=0)


def test_a_ptrace_target_gone_has_no_exe_and_uid_minus_one(proc):
    raw = kevents.decode(_priv(9, privrecord.Call.PTRACE, 0x4206, 99))
    assert raw.detail.resolve(42, proc) == Ptrace(request="seize", target_pid=99)


@pytest.mark.parametrize("call,arg,name", [
    (privrecord.Call.PTRACE, 4, "poketext"), (privrecord.Call.PTRACE, 0x4205, "setregset"),
    (privrecord.Call.PTRACE, 12345, "12345"),
    (privrecord.Call.PROCESS_VM_WRITEV, 0, "process_vm_writev"),
])
def test_ptrace_requests_by_name(call, arg, name):
    assert kevents.decode(_priv(9, call, arg, 7)).detail.request == name


def test_setuid_and_memfd_records():
    raw = kevents.decode(_priv(10, privrecord.Call.SETRESGID))
    assert raw.detail == PrivChange(call="setresgid", id=0)
    assert kevents.EVENT_KINDS[raw.kind] is EventKind.SETUID
    # a name that is not UTF-8 keeps its bytes (surrogate escapes)
    raw = kevents.decode(_priv(11, arg=3, name=b"x\xff\0garbage"))
    assert raw.detail == Memfd(name="x\udcff", flags=3)


def test_a_priv_record_of_another_kind_is_refused():
    with pytest.raises(ValueError, match="not a privilege record kind"):
        privrecord.decode_priv(_priv(12))


def test_mount_options_and_the_old_magic_number():
    assert kernrecord.mount_options(0xC0ED0000 | 1 | 4096 | 16384) == ("rdonly", "bind", "rec")
    assert kernrecord.mount_options(1 << 18 | 1 << 14) == ("rec", "private")
    data = kernrecord.MOUNT_FORMAT.pack(5, 12, 42, 0, 0, 2 | 8, b"mount", b"ext4", b"/dev/sda1",
                                        b"/host")
    raw = kevents.decode(data)
    assert raw.detail == Mount(source="/dev/sda1", target="/host", fstype="ext4", flags=10,
                               options=("nosuid", "noexec"))


def test_a_relative_mount_target_is_made_absolute_against_the_callers_cwd(proc):
    data = kernrecord.MOUNT_FORMAT.pack(5, 12, 42, 0, 0, 4096, b"mount", b"", b"/etc",
                                        b"../mnt/x")
    pending = kevents.decode(data).detail
    proc.link("42/cwd", "/root/work")
    assert pending.resolve(42, proc) == Mount(source="/etc", target="/root/mnt/x", flags=4096,
                                              options=("bind",))
    # the caller gone: the target as given
    assert pending.resolve(43, proc).target == "../mnt/x"


def test_setns_through_a_namespace_file_of_pid_1_is_host(proc):
    proc.link("42/fd/3", "mnt:[4026531841]")
    proc.link("1/ns/mnt", "mnt:[4026531841]")
    pending = kevents.decode(_kern(13, flags=0x00020000, fd=3)).detail
    assert pending.resolve(42, proc) == Namespaces(call="setns", types=("mnt",), host=True)
    # nstype 0: the type is the link's; another namespace of that type is not the host's
    proc.link("42/fd/4", "mnt:[4026532000]")
    assert kevents.decode(_kern(13, fd=4)).detail.resolve(42, proc) == Namespaces(
        call="setns", types=("mnt",), host=False)


def test_setns_through_a_pidfd_names_the_target_and_its_namespaces(proc):
    proc.link("42/fd/5", "anon_inode:[pidfd]")
    proc.file("42/fdinfo/5", b"pos:\t0\nflags:\t02000002\nPid:\t77\nNSpid:\t77\n")
    proc.link("77/ns/net", "net:[4026531999]")
    proc.link("77/ns/mnt", "mnt:[4026532100]")
    proc.link("1/ns/net", "net:[4026531999]")
    proc.link("1/ns/mnt", "mnt:[4026531841]")
    pending = kernrecord.PendingSetns(5, 0x40000000 | 0x00020000)
    assert pending.resolve(42, proc) == Namespaces(call="setns", types=("mnt", "net"),
                                                   host=True, target_pid=77)
    only_mnt = kernrecord.PendingSetns(5, 0x00020000)
    assert only_mnt.resolve(42, proc).host is False
    proc.link("42/fd/6", "anon_inode:[pidfd]")
    proc.file("42/fdinfo/6", b"Pid:\t1\n")
    assert kernrecord.PendingSetns(6, 0x00020000).resolve(42, proc).host is True


def test_setns_after_the_descriptor_closed_reads_the_namespace_the_caller_is_in(proc):
    # nsenter closed it and exec'd: the caller is in the namespace it entered
    proc.link("42/ns/mnt", "mnt:[4026531841]")
    proc.link("1/ns/mnt", "mnt:[4026531841]")
    assert kernrecord.PendingSetns(3, 0x00020000).resolve(42, proc).host is True
    # gone altogether: the types from nstype, not the host's
    assert kernrecord.PendingSetns(3, 0x00020000).resolve(43, proc) == Namespaces(
        call="setns", types=("mnt",), host=False)


def test_pid_1s_namespaces_unreadable_are_the_initial_ones(proc):
    proc.link("42/fd/3", f"mnt:[{0xEFFFFFF8}]")
    assert kernrecord.PendingSetns(3, 0).resolve(42, proc).host is True


def test_unshare_types_in_a_fixed_order():
    raw = kevents.decode(_kern(14, flags=0x40000000 | 0x00020000 | 0x10000000 | 0x80 | 0x200))
    assert raw.detail == Namespaces(call="unshare", types=("mnt", "user", "net", "time"))


def test_module_loads(proc):
    raw = kevents.decode(_kern(15, call=privrecord.Call.INIT_MODULE))
    assert raw.detail == ModuleLoad(call="init_module")
    pending = kevents.decode(_kern(15, call=privrecord.Call.FINIT_MODULE, fd=7)).detail
    proc.link("42/fd/7", "/lib/modules/6.1/kernel/net/nf-nat.ko.xz")
    assert pending.resolve(42, proc) == ModuleLoad(
        call="finit_module", path="/lib/modules/6.1/kernel/net/nf-nat.ko.xz", name="nf_nat")
    proc.link("42/fd/8", "/tmp/payload.bin")
    assert kernrecord.PendingModule(8).resolve(42, proc) == ModuleLoad(
        call="finit_module", path="/tmp/payload.bin")
    assert kernrecord.PendingModule(9).resolve(42, proc) == ModuleLoad(call="finit_module")


def test_bpf_loads_name_the_program_type_and_name():
    raw = kevents.decode(_kern(16, flags=5, prog_type=5, name=b"sys_enter\0"))
    assert raw.detail == BpfLoad(cmd="prog_load", prog_type="tracepoint", prog_name="sys_enter")
    assert kernrecord.prog_type_name(29) == "lsm"
    assert kernrecord.prog_type_name(400) == "400"


def test_a_kern_record_of_another_kind_is_refused():
    with pytest.raises(ValueError, match="not a kernel sensor record kind"):
        kernrecord.decode_kern(_kern(9))


# -- what the kernel is told to send -----------------------------------------------------


class FakeMap(dict):
    """A one-entry BPF array: ctypes key and value, kept as ints."""

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key.value, value.value)


class FakeProgram:
    def __init__(self) -> None:
        self.maps: dict[str, FakeMap] = {}

    def __getitem__(self, name: str) -> FakeMap:
        return self.maps.setdefault(name, FakeMap())


def _mask(program: FakeProgram, name: str) -> int:
    ((key, value),) = program[name].items()
    assert key == 0
    return value


def test_only_the_kinds_a_rule_or_a_recording_wants_are_sent(tmp_path, rules_from):
    program = FakeProgram()
    priv, kern = PrivilegeSensor(program), KernelSensor(program)  # type: ignore[arg-type]
    sensors = sensorset.SensorSet([priv, kern], program)  # type: ignore[arg-type]
    rules = rules_from("""
        rules:
          - id: r
            match: {ptrace.request: attach}
          - id: m
            on: [mount, exec]
            match: {proc.name: x}
        """).rules
    sensors.send_only(rules)
    assert _mask(program, "priv_skip") == 1 << 10 | 1 << 11          # setuid, memfd
    assert _mask(program, "kern_skip") == sum(1 << k for k in (13, 14, 15, 16))
    sensors.send_only(rules, everything=True)
    assert _mask(program, "priv_skip") == _mask(program, "kern_skip") == 0


# -- a sensor whose tracepoints this kernel lacks ---------------------------------------


def _tracefs(root: Path, *missing: str) -> str:
    for cls in (PrivilegeSensor, KernelSensor, TcpSensor):
        for tp in bpf.tracepoints_of(cls.source):
            if tp not in missing:
                (root / "events" / tp.replace(":", "/")).mkdir(parents=True, exist_ok=True)
    return str(root)


def test_a_missing_optional_tracepoint_is_compiled_out_and_said_once(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    tracefs = _tracefs(tmp_path, "syscalls:sys_enter_init_module",
                       "syscalls:sys_enter_finit_module")
    keep, dropped, cflags = sensorset.attachable([PrivilegeSensor, KernelSensor], tracefs)
    assert (keep, dropped) == ([PrivilegeSensor, KernelSensor], {})
    assert cflags == ["-DNW_NO_sys_enter_init_module", "-DNW_NO_sys_enter_finit_module"]
    assert [r.getMessage() for r in caplog.records] == [
        "sensor kernel runs without syscalls:sys_enter_init_module, "
        "syscalls:sys_enter_finit_module: this kernel does not have them"]
    # the probes those flags leave out are exactly the module ones
    text = (BPF_DIR / "kernel.bpf.c").read_text()
    for tp in ("sys_enter_init_module", "sys_enter_finit_module"):
        assert re.search(rf"#ifndef NW_NO_{tp}\nTRACEPOINT_PROBE\(syscalls, {tp}\)", text)


def test_a_sensor_missing_a_needed_tracepoint_is_left_out_and_the_others_run(
        tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    tracefs = _tracefs(tmp_path, "syscalls:sys_enter_memfd_create")
    compiled: list[Any] = []

    class Program:
        perf = False

        def __init__(self, sources, on_record, ring_pages, perf, cflags) -> None:
            compiled.append((list(sources), list(cflags)))

        def tracepoints(self) -> list[str]:
            return []

        def attach_tracepoint(self, tracepoint: str, fn_name: str) -> None:
            pass

        def every(self, seconds: float, call) -> None:
            pass

        def close(self) -> None:
            pass

    monkeypatch.setattr(bpf, "check", lambda: None)
    monkeypatch.setattr(bpf, "TRACEFS", tracefs)
    monkeypatch.setattr(bpf, "BpfProgram", Program)
    cfg = Config()
    cfg.sensors = ["tcp", "privilege", "kernel"]
    metrics = Metrics()
    s = sensorset.open_sensors(cfg, lambda r: None, metrics,
                               (TcpSensor, PrivilegeSensor, KernelSensor))
    assert s.names == ["tcp", "kernel"]
    assert compiled == [(["tcp.bpf.c", "kernel.bpf.c"], [])]
    assert metrics.sensor_up.labels(sensor="privilege")._value.get() == 0
    assert [r.getMessage() for r in caplog.records] == [
        "sensor privilege unavailable: this kernel has no tracepoint "
        "syscalls:sys_enter_memfd_create; fix: a kernel with that syscall"]
