"""bpf/events.h is the one definition of the kernel's records: its kinds, verdicts, config
slots and struct layout. These tests parse the header and hold the Python side to it, so
a change on one side only fails here, not as garbled events at run time."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from agent.engine import kernel
from agent.model import EventKind
from agent.sources import bpf, execrecord, kevents
from agent.sources.kevents import KcfgSlot, RecordKind, Verdict
from agent.sources.recordkind import records_of
from agent.sources.registry import SENSORS

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
HEADER = (BPF_DIR / "events.h").read_text()
C_TYPES = {"u64": "Q", "u32": "I", "u16": "H", "u8": "B", "char": "s"}


def c_enum(name: str) -> dict[str, int]:
    """NAME -> value of `enum name { ... }` (every member with an explicit value)."""
    body = re.search(rf"enum {name}\s*{{(.*?)}};", HEADER, re.S)
    assert body is not None, f"enum {name} is gone from events.h"
    text = re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.S)
    members = dict(re.findall(r"(\w+)\s*=\s*(\d+)", text))
    assert len(members) == text.count(",") + (0 if text.strip().endswith(",") else 1), \
        f"every member of enum {name} needs an explicit value"
    return {k: int(v) for k, v in members.items()}


def c_defines() -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"#define (NW_\w+) (\d+)", HEADER)}


def c_struct_fields(struct_name: str = "nw_event") -> list[tuple[str, str]]:
    """(name, struct code) of each field of `struct struct_name`, in order."""
    body = re.search(rf"struct {struct_name}\s*{{(.*?)}};", HEADER, re.S)
    assert body is not None, f"struct {struct_name} is gone from events.h"
    text = re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.S)
    defines = c_defines()
    out = []
    for ctype, name, size in re.findall(r"(\w+)\s+(\w+)(?:\[(\w+)\])?;", text):
        code = C_TYPES[ctype]
        if size:
            n = defines[size] if size in defines else int(size)
            code = f"{n}s"
        out.append((name, code))
    return out


def test_record_kinds_match_enum_nw_kind():
    assert c_enum("nw_kind") == {f"NW_{k.name}": k.value for k in RecordKind}
    # every record kind becomes one of the event kinds of agent.model
    assert set(kevents.EVENT_KINDS) == set(RecordKind)
    assert all(isinstance(v, EventKind) for v in kevents.EVENT_KINDS.values())


def test_each_sensor_skips_its_kinds_by_the_record_each_is_sent_as():
    assert records_of({EventKind.CONNECT, EventKind.DNS, EventKind.MOUNT}) == {
        EventKind.CONNECT: RecordKind.CONNECT, EventKind.DNS: RecordKind.DNS,
        EventKind.MOUNT: RecordKind.MOUNT}
    switched = [s for s in SENSORS if getattr(s, "kind_switch", None) is not None]
    assert {s.name for s in switched} == {"tcp", "privilege", "kernel", "udp"}
    for s in switched:
        records = s.kind_switch.records
        assert all(kevents.EVENT_KINDS[RecordKind(r)] == k for k, r in records.items())
        assert set(records) <= s.kinds


def test_verdicts_and_config_slots_match_their_enums():
    assert c_enum("nw_verdict") == {f"NW_VERDICT_{v.name}": v.value for v in Verdict}
    slots = c_enum("nw_kcfg_slot")
    assert slots.pop("NW_KCFG_SLOTS") == kevents.KCFG_SLOTS
    assert slots == {f"NW_KCFG_{s.name}": s.value for s in KcfgSlot}
    assert sorted(slots.values()) == list(range(kevents.KCFG_SLOTS))


def test_every_record_struct_has_its_layout_and_every_kind_its_decoder():
    assert set(re.findall(r"^struct (nw_\w*event)\s*{", HEADER, re.M)) == set(kevents.LAYOUTS)
    assert set(kevents.DECODERS) == {int(k) for k in RecordKind}


@pytest.mark.parametrize("name,size", [("nw_proc_event", 40), ("nw_conn_event", 88)])
def test_each_record_layout_matches_its_struct(name, size):
    fields = c_struct_fields(name)
    assert fields == list(kevents.LAYOUTS[name])
    # the record contract: every record starts with u64 ts_ns; u32 kind (enum nw_kind)
    assert fields[:2] == [("ts_ns", "Q"), ("kind", "I")]
    # no padding between the fields (native alignment gives the same offsets), so the
    # packed little-endian format reads each at its C offset; sizeof() rounds up to 8
    codes = "".join(c for _, c in fields)
    assert struct.calcsize("@" + codes) == struct.calcsize("<" + codes)
    assert (struct.calcsize("<" + codes) + 7) // 8 * 8 == size


def test_the_rule_compiler_cuts_names_and_paths_where_the_record_does():
    """engine/kernel.py may not import sources/: its limits are held to the record here."""
    assert kernel.COMM_LEN == kevents.COMM_LEN - 1
    assert kernel.PATH_LEN == kevents.FILENAME_LEN - 1


def _kinds_sent(source: str) -> set[EventKind]:
    text = (BPF_DIR / source).read_text()
    names = set(re.findall(r"fill_task\(\w+, NW_(\w+)\)", text))
    names |= set(re.findall(r"->kind = NW_(\w+);", text))
    names |= set(re.findall(r"(?:reserve|new)_\w+\(NW_(\w+)\)", text))
    return {kevents.EVENT_KINDS[RecordKind[n]] for n in names}


@pytest.mark.parametrize("sensor", [s for s in SENSORS if issubclass(s, bpf.BpfSensor)],
                         ids=lambda s: s.name)
def test_each_bpf_sensor_declares_the_kinds_its_source_sends(sensor):
    assert _kinds_sent(sensor.source) == sensor.kinds


def test_no_magic_config_slot_in_the_c_sources():
    for path in BPF_DIR.glob("*.bpf.c"):
        assert not re.search(r"cfg_get\(\d", path.read_text()), path.name
        assert "kcfg.lookup" not in path.read_text(), path.name


def test_the_program_inlines_each_header_once_and_only_enabled_sources():
    text = bpf.program_text(["exec.bpf.c", "tcp.bpf.c"], BPF_DIR)
    assert text.count("struct nw_conn_event {") == 1
    assert text.count("BPF_RINGBUF_OUTPUT(events") == 1
    assert '#include "' not in text
    assert "sched_process_exec" in text and "inet_sock_set_state" in text
    assert "nw_connect4" not in text


def _struct_fields(name: str) -> list[tuple[str, str]]:
    """(field, struct code) of `struct name` in events.h, arrays as NNs."""
    body = re.search(rf"struct {name}\s*{{(.*?)}};", HEADER, re.S)
    assert body is not None, f"struct {name} is gone from events.h"
    text = re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.S)
    defines = c_defines()
    return [(field, f"{defines.get(size) or int(size)}s" if size else C_TYPES[ctype])
            for ctype, field, size in re.findall(r"(\w+)\s+(\w+)(?:\[(\w+)\])?;", text)]


def test_the_exec_record_layout_matches_struct_nw_exec_event():
    """p-exec's record: the decoder reads the fixed part, then args_len bytes of argv."""
    fields = _struct_fields("nw_exec_event")
    assert fields[-1] == ("args", f"{execrecord.ARGS_LEN}s")
    assert fields[:-1] == list(execrecord.EXEC_FIELDS)
    codes = "".join(c for _, c in fields[:-1])
    # no padding: the packed format reads each field at its C offset; args starts at FIXED
    assert struct.calcsize("@" + codes) == struct.calcsize("<" + codes) == execrecord.EXEC_FIXED
    defines = c_defines()
    assert defines["NW_EXEC_FIXED"] == execrecord.EXEC_FIXED
    assert {k: defines[f"NW_{k}"] for k in (
        "ARGS_LEN", "ARGV_MAX", "ENV_MAX", "MARKERS_MAX", "MARKER_NAME_MAX",
        "MARKER_VALUE_LEN")} == {k: getattr(execrecord, k) for k in (
            "ARGS_LEN", "ARGV_MAX", "ENV_MAX", "MARKERS_MAX", "MARKER_NAME_MAX",
            "MARKER_VALUE_LEN")}
    assert c_enum("nw_exec_flag") == {f"NW_EXEC_{f.name}": f.value for f in execrecord.ExecFlag}
    # every record starts with u64 ts_ns; u32 kind (the contract with the other records)
    assert fields[:2] == [("ts_ns", "Q"), ("kind", "I")]


def test_the_marker_table_matches_struct_nw_markers():
    src = (BPF_DIR / "exec.bpf.c").read_text()
    marker = re.search(r"struct nw_marker\s*{(.*?)};", src, re.S)
    assert marker is not None
    assert re.findall(r"(\w+)\s+(\w+)(?:\[(\w+)\])?;", marker.group(1)) == [
        ("u64", "word", "8"), ("u64", "mask", "8"), ("u32", "len", ""), ("u32", "pad", "")]
    assert re.search(r"u32 count;\s*u32 set_id;[^}]*struct nw_marker m\[NW_MARKERS_MAX\];", src)
    assert len(execrecord.marker_table(["A"])) == 8 + execrecord.MARKERS_MAX * (64 + 64 + 8)


def test_the_file_record_and_its_ops_match_events_h():
    from agent.details import FILE_OPS
    from agent.engine import filewatch
    from agent.sources import filerecord

    fields = c_struct_fields("nw_file_event")
    assert fields == list(filerecord.FILE_FIELDS)
    codes = "".join(c for _, c in fields)
    assert struct.calcsize("@" + codes) == struct.calcsize("<" + codes) == 568
    assert c_enum("nw_file_op") == {f"NW_FILE_{op.upper()}": i for i, op in enumerate(FILE_OPS)}
    assert {op: 1 << i for i, op in enumerate(FILE_OPS)} == filewatch.OP_BIT
    defines = c_defines()
    assert defines["NW_FILE_PATH_LEN"] == filerecord.PATH_LEN == filewatch.PATH_LEN + 1
    assert defines["NW_FILE_NAME_LEN"] == filerecord.NAME_LEN == filewatch.NAME_LEN + 1
    assert defines["NW_FILE_FIRST_BITS"] == filewatch.FIRST_BITS
    assert defines["NW_FILE_NAME_BITS"] == filewatch.NAME_BITS
    assert defines["NW_AT_FDCWD"] == filerecord.AT_FDCWD == 2**32 - 100
    src = (BPF_DIR / "file.bpf.c").read_text()
    trie = re.search(r"BPF_LPM_TRIE\(file_watch, struct file_key, u32, (\d+)\)", src)
    names = re.search(r"BPF_HASH\(file_names, struct name_key, u32, (\d+)\)", src)
    assert trie and int(trie.group(1)) == filewatch.TRIE_MAX
    assert names and int(names.group(1)) >= filewatch.MAX_WATCHES


_TOP_LEVEL = re.compile(r"^(?:struct (\w+) \{|BPF_\w+\((\w+)|static[^(\n]*?[ *](\w+)\()", re.M)


def test_no_two_sensors_define_the_same_name():
    """Every enabled sensor's source is compiled into one BCC module: a struct, map or
    function name defined in two sources fails the whole compile (and every sensor)."""
    defined: dict[str, str] = {}
    clashes = []
    for path in sorted(bpf.source_dir().glob("*.bpf.c")):
        for m in _TOP_LEVEL.finditer(path.read_text()):
            name = next(g for g in m.groups() if g)
            if name in defined and defined[name] != path.name:
                clashes.append((name, defined[name], path.name))
            defined.setdefault(name, path.name)
    assert clashes == []
