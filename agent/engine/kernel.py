"""Which rules the kernel can enforce itself, and what goes into its maps.

A rule compiles into the BPF program when its condition is executable names (compared
with the comm the kernel sets at exec, so only names shorter than its 15 bytes) or full
executable paths, or an `any` with such branches, with action `kill`, no exceptions and
no window: then `sched_process_exec` itself sends SIGKILL before the new image runs an
instruction (or, in audit, marks the exec would_kill). The whole rule is still evaluated
in userspace, which catches what the kernel cannot test (argv0, long names, other
branches) and everything else keeps the userspace path.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.model import COMM_LEN

if TYPE_CHECKING:
    from agent.engine.ruleset import Rule

# resolves values and `$lists` to a flat list; returns a macro's condition node (or None)
Expand = Callable[[Any], list[Any]]
MacroNode = Callable[[str], Any]

PATH_LEN = 255
MAX_KERNEL_RULES = 64

_NAME_FIELDS = ("proc.name", "proc.exe_name")


@dataclass
class KernelExecSpec:
    """Names (comm) and paths that make a rule fire at exec."""

    names: set[str] = field(default_factory=set)
    paths: set[str] = field(default_factory=set)


def exec_spec(match: Any, expand: Expand, macro: MacroNode,
              ) -> KernelExecSpec | None:
    """The kernel form of a rule's `match`, or None when it has any other test. `expand`
    resolves values and `$lists`; `macro` returns a macro's condition node."""
    spec = KernelExecSpec()
    if not _collect(match, spec, expand, macro, ()):
        return None
    return spec if spec.names or spec.paths else None


def _collect(node: Any, spec: KernelExecSpec, expand: Expand,
             macro: MacroNode, stack: tuple[str, ...]) -> bool:
    # only a single term per mapping: {any: [...]}, {macro: m} or {field: values}
    if not isinstance(node, dict) or len(node) != 1:
        return False
    (key, value), = node.items()
    if key == "any":
        # the branches the kernel can test go to the kernel; the rest stay in userspace
        # (the whole rule is still evaluated there), so one compilable branch is enough
        if not isinstance(value, list):
            return False
        found = False
        for v in value:
            part = KernelExecSpec()
            if _collect(v, part, expand, macro, stack):
                spec.names |= part.names
                spec.paths |= part.paths
                found = True
        return found
    if key == "macro":
        if not isinstance(value, str) or value in stack:
            return False
        return _collect(macro(value), spec, expand, macro, (*stack, value))
    if key in _NAME_FIELDS or key == "proc.exe":
        values = _values(value, expand)
        if values is None or not all(isinstance(v, str) and v for v in values):
            return False
        if key == "proc.exe":
            if any(len(v) > PATH_LEN for v in values):
                return False
            spec.paths.update(values)
        else:
            # the kernel compares comm, which is whole only below 15 bytes: a 15-byte comm
            # may be cut from a longer name (`cpuminer-avx512-benchmark-report`), so names
            # of 15 bytes or more stay in userspace, which compares them whole
            short = {v for v in values if len(v.encode()) < COMM_LEN}
            spec.names.update(short)
            return bool(short)
        return True
    return False


def _values(spec: Any, expand: Expand) -> list[Any] | None:
    if isinstance(spec, dict):
        if len(spec) != 1:
            return None
        (op, arg), = spec.items()
        return expand(arg) if op in ("equals", "in") else None
    return expand(spec)


def kernel_rules(rules: Sequence[Rule]) -> list[Rule]:
    """The enabled rules the kernel will enforce, at most MAX_KERNEL_RULES (the first ones
    in file order; the rest stay in userspace)."""
    out = [r for r in rules if r.enabled and r.kernel is not None]
    return out[:MAX_KERNEL_RULES]


@dataclass
class ExecSlot:
    """One slot of the kernel's exec rule maps: the rule, the names and paths that fire it
    in the kernel, and whether the kernel kills (enforce) or only marks would_kill."""

    rule: Rule
    names: set[str]
    paths: set[str]
    enforce: bool


def exec_slots(rules: Sequence[Rule], mode: str,
               protected: Collection[str] = ()) -> list[ExecSlot]:
    """What the kernel's exec maps hold for a rule set, slot by slot, in the agent's `mode`
    (a rule's own mode wins). Protected names never enter them: the kernel does not ask
    userspace before it kills, so it cannot tell a node daemon from a tenant's binary."""
    out = []
    for r in kernel_rules(rules):
        spec = r.kernel
        assert spec is not None  # kernel_rules keeps only rules with a kernel form
        out.append(ExecSlot(r, spec.names - set(protected), set(spec.paths),
                            (r.mode or mode) == "enforce"))
    return out


MAX_KERNEL_PORTS = 4096


@dataclass
class KernelConnectSpec:
    """Destination networks and/or ports that make a connect rule fire (both when both)."""

    cidrs: list[tuple[int, bytes]] = field(default_factory=list)  # (prefixlen over v6, addr)
    ports: set[int] = field(default_factory=set)
    need_net: bool = False
    need_ports: bool = False


def connect_spec(match: Any, expand: Expand, macro: MacroNode,
                 ) -> KernelConnectSpec | None:
    """The kernel form of a connect rule: a conjunction of `conn.dst` (cidr, equals, in),
    `conn.dport` (ports, equals, in) and `conn.direction: outbound`, nothing else."""
    spec = KernelConnectSpec()
    terms = _conjunction(match, macro, ())
    if terms is None:
        return None
    for key, value in terms:
        if key == "conn.direction":
            if _values(value, expand) != ["outbound"]:
                return None
            continue
        if isinstance(value, dict) and len(value) == 1:
            (op, arg), = value.items()
        else:
            op, arg = "in", value
        if key == "conn.dst" and op in ("cidr", "equals", "in"):
            ok = _add_networks(spec, expand(arg))
        elif key == "conn.dport" and op in ("ports", "equals", "in"):
            ok = _add_ports(spec, expand(arg))
        else:
            ok = False
        if not ok:
            return None
    return spec if spec.need_net or spec.need_ports else None


def _add_networks(spec: KernelConnectSpec, values: list[Any]) -> bool:
    """Add destination networks as the kernel's LPM trie keys (IPv4 mapped into IPv6)."""
    spec.need_net = True
    for v in values:
        try:
            net = ipaddress.ip_network(str(v), strict=False)
        except ValueError:
            return False
        if net.version == 4:
            mapped = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + net.network_address.packed)
            spec.cidrs.append((96 + net.prefixlen, mapped.packed))
        else:
            spec.cidrs.append((net.prefixlen, net.network_address.packed))
    return True


def _add_ports(spec: KernelConnectSpec, values: list[Any]) -> bool:
    """Add destination ports and `low-high` ranges; False past MAX_KERNEL_PORTS."""
    spec.need_ports = True
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool):
            spec.ports.add(v)
        elif isinstance(v, str) and "-" in v:
            lo, hi = (int(x) for x in v.split("-"))
            spec.ports.update(range(lo, hi + 1))
        else:
            return False
    return len(spec.ports) <= MAX_KERNEL_PORTS


def _conjunction(node: Any, macro: MacroNode,
                 stack: tuple[str, ...]) -> list[tuple[str, Any]] | None:
    """A condition as its list of (field, test) terms, if it is only an AND of field tests."""
    if not isinstance(node, dict) or not node:
        return None
    out: list[tuple[str, Any]] = []
    for key, value in node.items():
        if key == "all":
            if not isinstance(value, list):
                return None
            for sub in value:
                part = _conjunction(sub, macro, stack)
                if part is None:
                    return None
                out.extend(part)
        elif key == "macro":
            if not isinstance(value, str) or value in stack:
                return None
            part = _conjunction(macro(value), macro, (*stack, value))
            if part is None:
                return None
            out.extend(part)
        elif key in ("any", "not"):
            return None
        else:
            out.append((str(key), value))
    return out


def kernel_connect_rules(rules: Sequence[Rule]) -> list[Rule]:
    """The enabled connect rules the kernel will refuse, at most MAX_KERNEL_RULES."""
    out = [r for r in rules if r.enabled and r.kernel_connect is not None]
    return out[:MAX_KERNEL_RULES]


@dataclass
class ConnectSlot:
    """One slot of the kernel's connect rule maps: the rule, what it refuses, and whether
    the kernel refuses the connect (enforce) or only reports it would have."""

    rule: Rule
    spec: KernelConnectSpec
    enforce: bool


def connect_slots(rules: Sequence[Rule], mode: str) -> list[ConnectSlot]:
    """What the kernel's connect maps hold for a rule set, slot by slot, in `mode`."""
    out = []
    for r in kernel_connect_rules(rules):
        spec = r.kernel_connect
        assert spec is not None  # kernel_connect_rules keeps only rules with one
        out.append(ConnectSlot(r, spec, (r.mode or mode) == "enforce"))
    return out
