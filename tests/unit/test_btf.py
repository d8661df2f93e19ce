"""agent/sources/btf.py: the offsets of the task facts an exec record carries, found by name
in a kernel's BTF (a small one built here, in the format of include/uapi/linux/btf.h)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from agent.sources import btf


class Builder:
    """A BTF blob, type by type (ids from 1)."""

    def __init__(self) -> None:
        self.strings = bytearray(b"\0")
        self.types = bytearray()
        self.count = 0

    def _name(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def _add(self, name: str, kind: int, vlen: int, size: int, extra: bytes = b"",
             kflag: int = 0) -> int:
        info = (kflag << 31) | (kind << 24) | vlen
        self.types += struct.pack("<III", self._name(name), info, size) + extra
        self.count += 1
        return self.count

    def int(self, name: str, size: int) -> int:
        return self._add(name, btf.INT, 0, size, struct.pack("<I", size * 8))

    def ptr(self, to: int) -> int:
        return self._add("", btf.PTR, 0, to)

    def typedef(self, name: str, to: int) -> int:
        return self._add(name, btf.TYPEDEF, 0, to)

    def struct(self, name: str, size: int, members: list[tuple[str, int, int]],
               union: bool = False) -> int:
        extra = b"".join(struct.pack("<III", self._name(n), t, off * 8)
                         for n, t, off in members)
        return self._add(name, btf.UNION if union else btf.STRUCT, len(members), size, extra)

    def blob(self) -> bytes:
        hdr = struct.pack("<HBBIIIII", btf.MAGIC, 1, 0, 24, 0, len(self.types),
                          len(self.types), len(self.strings))
        return hdr + bytes(self.types) + bytes(self.strings)


def kernel(inum_size: int = 4) -> bytes:
    b = Builder()
    u32, u64 = b.int("unsigned int", 4), b.int("long long unsigned int", 8)
    inum = b.int("inum_t", inum_size) if inum_size != 4 else u32
    kuid = b.typedef("kuid_t", b.struct("", 4, [("val", u32, 0)]))
    cred = b.struct("cred", 32, [("usage", u64, 0), ("uid", kuid, 8), ("euid", kuid, 24)])
    ns_common = b.struct("ns_common", 16, [("stashed", u64, 0), ("inum", inum, 8)])
    net = b.struct("net", 64, [("passive", u32, 0), ("ns", ns_common, 40)])
    nsproxy = b.struct("nsproxy", 64, [("count", u64, 0), ("net_ns", b.ptr(net), 40)])
    task_fwd = b._add("task_struct", btf.FWD, 0, 0)
    # tgid and real_parent sit in an anonymous union, as fields often do
    anon = b.struct("", 16, [("tgid", u32, 4), ("real_parent", b.ptr(task_fwd), 8)],
                    union=False)
    b.struct("task_struct", 4096, [
        ("state", u32, 0), ("", anon, 1264), ("start_boottime", u64, 1560),
        ("cred", b.ptr(cred), 1736), ("nsproxy", b.ptr(nsproxy), 1840)])
    return b.blob()


def test_the_task_facts_are_found_by_name_through_pointers_and_anonymous_members():
    offsets = btf.task_offsets(btf.Btf(kernel()))
    assert offsets == {"START_BOOTTIME": [1560], "REAL_PARENT": [1272, 1268],
                       "CRED": [1736, 24], "NSPROXY": [1840, 40, 48]}


def test_a_field_of_another_size_or_missing_gives_no_offsets(tmp_path: Path):
    with pytest.raises(btf.BtfError, match="not 4"):
        btf.task_offsets(btf.Btf(kernel(inum_size=8)))
    with pytest.raises(btf.BtfError, match="magic"):
        btf.Btf(b"\0" * 64)
    bad = tmp_path / "vmlinux"
    bad.write_bytes(kernel(inum_size=8))
    assert btf.task_cflags(str(bad)) == []          # the observer reads /proc instead
    assert btf.task_cflags(str(tmp_path / "none")) == []


def test_the_cflags_name_each_offset_along_its_path(tmp_path: Path):
    good = tmp_path / "vmlinux"
    good.write_bytes(kernel())
    flags = btf.task_cflags(str(good))
    assert "-DNW_TASK_NSPROXY_2=48" in flags and "-DNW_TASK_REAL_PARENT_0=1272" in flags
    assert len(flags) == 8
