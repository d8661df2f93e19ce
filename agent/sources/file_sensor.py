"""The `file` sensor: opens, creates, truncations, unlinks, renames and chmods of the files
the loaded rules watch (bpf/file.bpf.c), filtered in the kernel.

Until rules are loaded nothing is watched and nothing is sent. `use_rules` (at start and on
every reload) turns the enabled rules' watches (agent/engine/filewatch.py) into the
kernel's maps, replacing what they held, and marks the running processes whose working
directory is under a watched directory (the kernel follows chdir from then on).
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

from agent.engine.filewatch import KernelWatch, Watch, kernel_entries, under_watch
from agent.engine.ruleset import Rule
from agent.model import EventKind
from agent.sources.bpf import BpfSensor
from agent.sources.filerecord import NAME_LEN, PATH_LEN

log = logging.getLogger("nodewarden")


def watches_of(rules: Iterable[Rule]) -> list[Watch]:
    """The watches of the enabled rules (a disabled rule wakes nothing)."""
    return [w for r in rules if r.enabled for w in r.file_watches]


def cwd_marks(kw: KernelWatch, procfs_root: str = "/proc") -> dict[int, int]:
    """pid -> ops, for the processes whose working directory is under a watched directory
    now (their relative paths are sent; later chdirs the kernel follows itself)."""
    if not any(k.startswith(b"/") and not k.endswith(b"\0") for k in kw.prefixes):
        return {}
    out: dict[int, int] = {}
    try:
        names = os.listdir(procfs_root)
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        try:
            cwd = os.readlink(f"{procfs_root}/{name}/cwd")
        except OSError:
            continue
        ops = under_watch(cwd, kw.prefixes)
        if ops:
            out[int(name)] = ops
    return out


def write_watch(trie: Any, names: Any, cfg: Any, cwd: Any, kw: KernelWatch,
                marks: dict[int, int]) -> None:
    """Replace the maps' contents with `kw`. The union of ops is 0 while they change, so
    the kernel never judges against half a watch list (nothing is sent meanwhile)."""
    leaf = cfg.Leaf()
    cfg[ctypes.c_int(0)] = leaf
    trie.clear()
    names.clear()
    cwd.clear()
    for raw, ops in kw.prefixes.items():
        k = trie.Key()
        k.prefixlen = len(raw) * 8
        k.path = raw[:PATH_LEN]
        trie[k] = ctypes.c_uint(ops)
    for raw, ops in kw.names.items():
        k = names.Key.from_buffer_copy(raw[:NAME_LEN - 1].ljust(NAME_LEN, b"\0"))
        names[k] = ctypes.c_uint(ops)
    for pid, ops in marks.items():
        cwd[ctypes.c_uint(pid)] = ctypes.c_uint(ops)
    leaf.lens_mask = sum(1 << n for n in kw.name_lens if n < NAME_LEN)
    leaf.first_ks = kw.first_ks
    leaf.has_cwd = 1 if marks else 0
    for i, word in enumerate(kw.first_bloom):
        leaf.first[i] = word
    for i, word in enumerate(kw.name_bloom):
        leaf.names[i] = word
    leaf.ops = kw.ops
    cfg[ctypes.c_int(0)] = leaf


class FileSensor(BpfSensor):
    """Path-taking syscalls on watched files: the watch list comes from the rules."""

    name = "file"
    title = "file sensor"
    kinds = frozenset({EventKind.FILE})
    source = "file.bpf.c"
    # newer than the oldest kernel it runs on: compiled out, and said once, where missing
    optional_tracepoints = ("syscalls:sys_enter_openat2", "syscalls:sys_enter_fchmodat2")

    def use_rules(self, rules: Sequence[Rule]) -> None:
        """Watch exactly what the enabled rules name, replacing the previous watch list."""
        kw = kernel_entries(watches_of(rules))
        p = self.program
        write_watch(p["file_watch"], p["file_names"], p["file_cfg"], p["file_cwd"], kw,
                    cwd_marks(kw))
        log.info("file sensor: %d watched paths and prefixes (%d with relative forms), "
                 "%d names", sum(1 for k in kw.prefixes if k.startswith(b"/")),
                 len(kw.prefixes), len(kw.names))
