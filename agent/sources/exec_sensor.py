"""The `exec` sensor: process lifecycle from the kernel (exec, fork, exit; bpf/exec.bpf.c)
and the in-kernel exec rules it enforces at `sched_process_exec`.

The rule maps are filled from one (names, paths, enforce) per kernel rule slot; a record
whose exec matched carries the slot, and userspace maps it back to its rule.
"""

from __future__ import annotations

import ctypes
from collections.abc import Collection, Sequence
from typing import Any

from agent.enrich.workspace import DEFAULT_MARKERS
from agent.model import EventKind
from agent.sources.bpf import BpfSensor, set_kcfg
from agent.sources.execrecord import marker_table
from agent.sources.kevents import COMM_LEN, FILENAME_LEN, KcfgSlot

# one kernel rule slot: executable names (comm), full paths, and whether it kills
ExecSlot = tuple[Collection[str], Collection[str], bool]


def exec_masks(slots: Sequence[ExecSlot]) -> tuple[dict[bytes, int], dict[bytes, int], int]:
    """The maps' contents (pure): name -> slot bitmask, path -> slot bitmask, and the
    bitmask of slots in enforce mode. Keys are cut as the kernel's fields cut them."""
    names: dict[bytes, int] = {}
    paths: dict[bytes, int] = {}
    enforce = 0
    for slot, (ns, ps, enf) in enumerate(slots):
        bit = 1 << slot
        for n in ns:
            key = n.encode()[:COMM_LEN - 1]
            names[key] = names.get(key, 0) | bit
        for p in ps:
            key = p.encode()[:FILENAME_LEN - 1]
            paths[key] = paths.get(key, 0) | bit
        if enf:
            enforce |= bit
    return names, paths, enforce


def write_exec_rules(names_t: Any, paths_t: Any, kcfg: Any, slots: Sequence[ExecSlot]) -> None:
    """Replace the exec rule maps' contents, so a reload never leaves a stale name behind.
    Enforcement is off while the maps change: no half-written set can kill."""
    names, paths, enforce = exec_masks(slots)
    set_kcfg(kcfg, KcfgSlot.EXEC_ENFORCE, 0)
    names_t.clear()
    paths_t.clear()
    for raw, mask in names.items():
        k = names_t.Key()
        k.comm = raw
        names_t[k] = ctypes.c_ulonglong(mask)
    for raw, mask in paths.items():
        k = paths_t.Key()
        k.path = raw
        paths_t[k] = ctypes.c_ulonglong(mask)
    set_kcfg(kcfg, KcfgSlot.EXEC_ENFORCE, enforce)


class ExecSensor(BpfSensor):
    """exec, fork (processes, not threads) and exit, with in-kernel exec rules."""

    name = "exec"
    kinds = frozenset({EventKind.EXEC, EventKind.FORK, EventKind.EXIT})
    source = "exec.bpf.c"

    def start(self) -> None:
        """Attached with the compile; the kernel looks for the default workspace markers
        until `load_markers` names others."""
        self.load_markers(DEFAULT_MARKERS)
        super().start()

    def load_markers(self, names: Sequence[str]) -> None:
        """The workspace marker names the kernel looks for in each exec's environment, in
        the configuration's order (more or longer than it can compare: none, and the
        observer reads /proc/PID/environ as before)."""
        table = self.program["kmarkers"]
        table[ctypes.c_int(0)] = table.Leaf.from_buffer_copy(marker_table(names))

    def load_rules(self, slots: Sequence[ExecSlot]) -> None:
        """Load the in-kernel exec rules: one (names, paths, enforce) per slot, in order."""
        p = self.program
        write_exec_rules(p["kexec_names"], p["kexec_paths"], p["kcfg"], slots)
