"""Where the running kernel keeps a few task fields, read from its own BTF (pure parsing).

BCC compiles against the kernel headers installed, which need not be the running kernel's
(a Debian 6.1 header package on a 6.18 kernel, say): a `task->field` read compiled from
them would read whatever lies at the old offset. The offsets an exec record needs
(`task_struct.start_boottime`, `real_parent`, `tgid`, `cred->euid`,
`nsproxy->net_ns->ns.inum`) are therefore looked up here, by name, in the BTF the running
kernel describes itself with (/sys/kernel/btf/vmlinux), and handed to the BPF program as
constants; without BTF, or when a field is not found with the size expected, there are none
and the observer reads those facts from /proc as before.

The BTF format (include/uapi/linux/btf.h): a header, then the types (ids from 1), each a
12-byte `struct btf_type` followed by what its kind needs, then the string section.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from typing import NamedTuple

log = logging.getLogger("nodewarden.btf")

VMLINUX = "/sys/kernel/btf/vmlinux"
MAGIC = 0xEB9F

# BTF_KIND_* and the bytes that follow a btf_type of that kind (per vlen when a tuple)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_EXTRA = {INT: 4, ARRAY: 12, VAR: 4, DECL_TAG: 4}
_PER_MEMBER = {STRUCT: 12, UNION: 12, ENUM: 8, FUNC_PROTO: 8, DATASEC: 12, ENUM64: 12}
# kinds that only qualify or rename another type (followed to what they name)
_ALIASES = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)

_HEADER = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")
_MEMBER = struct.Struct("<III")


class BtfError(ValueError):
    """Not BTF, or not the BTF of a kernel with the fields asked for."""


class Field(NamedTuple):
    """A member found: its byte offset in the struct, its type id, and its size."""

    offset: int
    type_id: int
    size: int


class Btf:
    """The types of one BTF blob, looked up by struct and member name."""

    def __init__(self, data: bytes) -> None:
        if len(data) < _HEADER.size:
            raise BtfError("too short for a BTF header")
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = (
            _HEADER.unpack_from(data))
        if magic != MAGIC:
            raise BtfError("not BTF (bad magic)")
        self._data = data
        self._types_at = hdr_len + type_off
        self._strings = data[hdr_len + str_off:hdr_len + str_off + str_len]
        self._pos = self._index(self._types_at, self._types_at + type_len)
        self._structs: dict[str, int] = {}

    def _index(self, at: int, end: int) -> list[int]:
        """The position of each type (index = its id; id 0 is void)."""
        data, unpack = self._data, _TYPE.unpack_from
        extra, per_member = _EXTRA.get, _PER_MEMBER.get
        pos = [0]
        append = pos.append
        while at < end:
            append(at)
            info = unpack(data, at)[1]
            kind = (info >> 24) & 0x1F
            at += 12 + extra(kind, 0) + per_member(kind, 0) * (info & 0xFFFF)
        return pos

    def _name(self, off: int) -> str:
        end = self._strings.find(b"\0", off)
        return self._strings[off:end if end >= 0 else len(self._strings)].decode(
            "ascii", "replace")

    def _type(self, type_id: int) -> tuple[int, int, int, int, int]:
        """(name offset, kind, vlen, kind_flag, size or type) of a type id."""
        if not 0 < type_id < len(self._pos):
            raise BtfError(f"no type {type_id}")
        name, info, size = _TYPE.unpack_from(self._data, self._pos[type_id])
        return name, (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size

    def struct_id(self, name: str) -> int:
        """The id of `struct name` (a full definition, not a forward declaration)."""
        found = self._structs.get(name)
        if found is not None:
            return found
        # the name's offsets in the string section (BTF keeps each string once, but a
        # blob may not), compared as numbers: no name of another type is decoded
        want = set()
        key = b"\0" + name.encode() + b"\0"
        at = self._strings.find(key)
        while at >= 0:
            want.add(at + 1)
            at = self._strings.find(key, at + 1)
        if self._strings.startswith(key[1:]):
            want.add(0)
        data, unpack, pos = self._data, _TYPE.unpack_from, self._pos
        for tid in range(1, len(pos)):
            noff, info, _size = unpack(data, pos[tid])
            if noff in want and (info >> 24) & 0x1F == STRUCT and info & 0xFFFF:
                self._structs[name] = tid
                return tid
        raise BtfError(f"no struct {name}")

    def resolve(self, type_id: int) -> int:
        """`type_id` with typedefs and qualifiers followed."""
        for _ in range(32):
            _n, kind, _v, _kf, ref = self._type(type_id)
            if kind not in _ALIASES:
                return type_id
            type_id = ref
        raise BtfError("a typedef chain too long")

    def size(self, type_id: int) -> int:
        """The size in bytes of a type (pointers 8: this is for 64-bit kernels)."""
        _n, kind, _v, _kf, size = self._type(self.resolve(type_id))
        if kind == PTR:
            return 8
        if kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT):
            return size
        raise BtfError(f"type {type_id} has no size here")

    def member(self, struct_or_union: int, name: str) -> Field:
        """The member `name` of a struct or union (also inside its anonymous members)."""
        found = self._member(self.resolve(struct_or_union), name, 0)
        if found is None:
            raise BtfError(f"no member {name}")
        return found

    def _member(self, tid: int, name: str, base: int) -> Field | None:
        _n, kind, vlen, kflag, _size = self._type(tid)
        if kind not in (STRUCT, UNION):
            return None
        at = self._pos[tid] + 12
        anonymous = []
        for i in range(vlen):
            noff, mtype, moff = _MEMBER.unpack_from(self._data, at + 12 * i)
            bits = moff & 0xFFFFFF if kflag else moff
            if noff == 0:
                anonymous.append((mtype, base + bits // 8))
            elif self._name(noff) == name:
                if bits % 8 or (kflag and moff >> 24):
                    raise BtfError(f"member {name} is a bit field")
                return Field(base + bits // 8, mtype, self.size(mtype))
        for mtype, off in anonymous:
            hit = self._member(self.resolve(mtype), name, off)
            if hit is not None:
                return hit
        return None

    def pointee(self, type_id: int) -> int:
        """The type a pointer type points to (a forward declaration: its definition)."""
        _n, kind, _v, _kf, ref = self._type(self.resolve(type_id))
        if kind != PTR:
            raise BtfError(f"type {type_id} is not a pointer")
        ref = self.resolve(ref)
        name, kind, _v, _kf, _s = self._type(ref)
        return self.struct_id(self._name(name)) if kind == FWD else ref

    def path(self, struct_name: str, members: Sequence[str]) -> tuple[list[int], Field]:
        """Byte offsets along `members` from `struct struct_name`, one per pointer followed:
        each relative to what the previous pointer points to, a struct member's offset
        added to its container's; and the last member found."""
        tid = self.struct_id(struct_name)
        out = [0]
        f = Field(0, tid, 0)
        for i, name in enumerate(members):
            f = self.member(tid, name)
            out[-1] += f.offset
            if i == len(members) - 1:
                break
            _n, kind, _v, _kf, _s = self._type(self.resolve(f.type_id))
            if kind == PTR:
                tid = self.pointee(f.type_id)
                out.append(0)
            else:
                tid = f.type_id
        return out, f


# the task facts an exec record carries: cflag name -> (path from task_struct, size read)
TASK_FIELDS: dict[str, tuple[tuple[str, ...], int]] = {
    "START_BOOTTIME": (("start_boottime",), 8),
    "REAL_PARENT": (("real_parent", "tgid"), 4),
    "CRED": (("cred", "euid", "val"), 4),
    "NSPROXY": (("nsproxy", "net_ns", "ns", "inum"), 4),
}


def task_offsets(btf: Btf) -> dict[str, list[int]]:
    """For each TASK_FIELDS entry, the offsets along its path (raises BtfError when one is
    missing or not of the size the record takes)."""
    out = {}
    for key, (members, size) in TASK_FIELDS.items():
        offsets, last = btf.path("task_struct", members)
        if last.size != size:
            raise BtfError(f"task_struct.{'.'.join(members)} is {last.size} bytes, not {size}")
        out[key] = offsets
    return out


def task_cflags(path: str = VMLINUX) -> list[str]:
    """-D flags naming the offsets of the task facts, for bpf/exec.bpf.c; [] (the facts
    are then read from /proc) when the running kernel has no BTF or not these fields."""
    try:
        with open(path, "rb") as f:
            offsets = task_offsets(Btf(f.read()))
    except (OSError, BtfError, struct.error) as e:
        log.info("exec records carry no task facts (%s): read from /proc", e)
        return []
    flags = []
    for key, offs in offsets.items():
        for i, off in enumerate(offs):
            flags.append(f"-DNW_TASK_{key}_{i}={off}")
    return flags
