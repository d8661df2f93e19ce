"""What the kernel watches for the file rules: the paths, directory prefixes and names a
rule's `match` requires, each with the ops (read, write, ...) the rule can fire on (pure).

The file sensor filters in the kernel (bpf/file.bpf.c), so a rule on file events must say,
in a form the kernel can test, which files it is about: its `match` must require
`file.path` (equals, in, prefix) or `file.name` (equals, in), or `file.dest` for renames,
possibly in every branch of an `any:`. A `file.op` test beside them narrows the ops. The
rule loader refuses a file rule without one (`WatchError`, at the rule's line) and a rule
set whose watches do not fit the kernel's maps (`too_many`); the file sensor turns the
loaded rules' watches into the maps' contents (`kernel_entries`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.details import FILE_OPS

# resolves values and `$lists` to a flat list; returns a macro's condition node (or None)
Expand = Callable[[Any], list[Any]]
MacroNode = Callable[[str], Any]

OP_BIT = {op: 1 << i for i, op in enumerate(FILE_OPS)}   # enum nw_file_op in bpf/events.h
ALL_OPS = (1 << len(FILE_OPS)) - 1
RENAME = OP_BIT["rename"]

MAX_WATCHES = 1024    # watched paths, prefixes and names of a rule set (the kernel's maps)
PATH_LEN = 255        # NW_FILE_PATH_LEN - 1: bytes of a path the kernel compares
NAME_LEN = 31         # NW_FILE_NAME_LEN - 1
RELATIVE_DEPTH = 3    # relative forms of a watched path: its last 1..3 components
TRIE_MAX = 4096       # the LPM trie's entries: every watch and its relative forms
SPELLED_OTHERWISE = 16  # names map: ops << 16 for an exact path's last component
FIRST_BITS = 16       # NW_FILE_FIRST_BITS: the kernel's filter of the trie's first bytes
NAME_BITS = 14        # NW_FILE_NAME_BITS: its filter of the watched names
FIRST_KS = (16, 8, 4)  # a trie entry's filter key: its first 16, 8 or 4 bytes


def first_key(entry: bytes) -> bytes:
    """The bytes of a trie entry the first-bytes filter has: its first k, k the largest
    of FIRST_KS not over its length, or all of it when shorter than the smallest."""
    for k in FIRST_KS:
        if len(entry) >= k:
            return entry[:k]
    return entry

PATH, PREFIX, NAME = "path", "prefix", "name"
FIX = ("add e.g. `file.path: {prefix: /etc/cron.d/}` or `file.name: {in: [authorized_keys]}` "
       "to the rule's match")


class WatchError(ValueError):
    """A file rule the kernel cannot filter for; the message says why and the fix."""


@dataclass(frozen=True, slots=True)
class Watch:
    """One watched thing: an exact path, a path prefix or a last component, and the ops
    (bitmask of OP_BIT) some rule wants of it."""

    kind: str
    value: str
    ops: int

    def describe(self) -> str:
        """How `rules check` names it."""
        ops = ", ".join(op for op, bit in OP_BIT.items() if self.ops & bit)
        return f"{self.kind} {self.value} ({ops})"


# a condition's watches (None: it does not restrict which files) and the ops it allows
_Found = tuple[tuple[Watch, ...] | None, int]


def rule_watches(match: Any, expand: Expand, macro: MacroNode) -> tuple[Watch, ...]:
    """The watches a file rule's `match` requires; raises WatchError when it requires none
    the kernel can test, or names a path or name the kernel cannot hold."""
    found, _ = _condition(match, expand, macro, ())
    if found is None:
        raise WatchError("a rule on file events must test, in its match, file.path with "
                         "equals, in or prefix, or file.name with equals or in (the kernel "
                         "watches only the files rules name); " + FIX)
    return merge(found)


def _condition(node: Any, expand: Expand, macro: MacroNode, stack: tuple[str, ...]) -> _Found:
    """A mapping's terms are ANDed: any one restricting term restricts the whole."""
    if not isinstance(node, dict):
        return None, ALL_OPS
    return _and(_term(str(key), value, expand, macro, stack) for key, value in node.items())


def _and(terms: Iterable[_Found]) -> _Found:
    """Terms ANDed: the cheapest restricting term's watches, with the ops every term
    allows (None: no term restricts)."""
    ops = ALL_OPS
    candidates: list[tuple[Watch, ...]] = []
    for found, term_ops in terms:
        ops &= term_ops
        if found is not None:
            candidates.append(found)
    if not candidates:
        return None, ops
    best = min(candidates, key=_cost)
    return tuple(Watch(w.kind, w.value, w.ops & ops) for w in best), ops


def _term(key: str, value: Any, expand: Expand, macro: MacroNode,
          stack: tuple[str, ...]) -> _Found:
    if key == "all" and isinstance(value, list):
        return _all(value, expand, macro, stack)
    if key == "any" and isinstance(value, list):
        return _any(value, expand, macro, stack)
    if key == "macro" and isinstance(value, str) and value not in stack:
        return _condition(macro(value), expand, macro, (*stack, value))
    if key == "file.op":
        return None, _op_mask(value, expand)
    if key == "file.made_executable" and value is True:
        return None, OP_BIT["chmod"]
    if key in ("file.path", "file.dest", "file.name"):
        return _field(key, value, expand), ALL_OPS
    return None, ALL_OPS


def _all(items: list[Any], expand: Expand, macro: MacroNode, stack: tuple[str, ...]) -> _Found:
    return _and(_condition(sub, expand, macro, stack) for sub in items)


def _any(items: list[Any], expand: Expand, macro: MacroNode, stack: tuple[str, ...]) -> _Found:
    """Restricting only when every branch restricts: the union of the branches' watches."""
    out: list[Watch] = []
    ops = 0
    restricted = bool(items)
    for sub in items:
        found, sub_ops = _condition(sub, expand, macro, stack)
        ops |= sub_ops
        if found is None:
            restricted = False
        else:
            out.extend(found)
    return (tuple(out) if restricted else None), ops


def _split(spec: Any) -> list[tuple[str, Any]]:
    """A field test's (operator, argument) pairs, as conditions.py reads them."""
    if isinstance(spec, dict):
        return [(str(op), arg) for op, arg in spec.items()]
    return [("in", spec)] if isinstance(spec, list) else [("equals", spec)]


def _op_mask(spec: Any, expand: Expand) -> int:
    mask = ALL_OPS
    for op, arg in _split(spec):
        if op in ("equals", "in"):
            mask &= sum(OP_BIT.get(v, 0) for v in set(map(str, expand(arg))))
    return mask


def _field(key: str, spec: Any, expand: Expand) -> tuple[Watch, ...] | None:
    """The watches a file.path / file.dest / file.name test requires (None: none)."""
    ops = RENAME if key == "file.dest" else ALL_OPS
    best: tuple[Watch, ...] | None = None
    for op, arg in _split(spec):
        if op in ("equals", "in"):
            kind = NAME if key == "file.name" else PATH
        elif op == "prefix" and key != "file.name":
            kind = PREFIX
        else:
            continue
        found = tuple(_checked(kind, v, key, ops) for v in expand(arg))
        if found and (best is None or _cost(found) < _cost(best)):
            best = found
    return best


def _checked(kind: str, value: Any, key: str, ops: int) -> Watch:
    if not isinstance(value, str) or not value:
        raise WatchError(f"{key} values must be non-empty strings, not {value!r}")
    raw = value.encode("utf-8", "surrogateescape")
    if kind == NAME:
        if "/" in value:
            raise WatchError(f"file.name {value!r} has a '/': a name is a path's last "
                             f"component; test file.path for a path")
        if len(raw) > NAME_LEN:
            raise WatchError(f"file.name {value!r} is longer than the {NAME_LEN} bytes the "
                             f"kernel compares; test file.path with prefix instead")
        return Watch(kind, value, ops)
    if not value.startswith("/"):
        raise WatchError(f"{key} {value!r} is not absolute: watched paths start with '/' "
                         f"(relative paths are resolved before rules see them)")
    if len(raw) > PATH_LEN:
        raise WatchError(f"{key} {value!r} is longer than the {PATH_LEN} bytes the kernel "
                         f"compares; watch a shorter prefix")
    return Watch(kind, value, ops)


def _cost(watches: Sequence[Watch]) -> float:
    """How much a set of watches wakes userspace, roughly: a short prefix the most."""
    cost = 0.0
    for w in watches:
        if w.kind == PATH:
            cost += 1
        elif w.kind == NAME:
            cost += 4
        else:
            cost += 1 + 256 / len(w.value)
    return cost


def merge(watches: Iterable[Watch]) -> tuple[Watch, ...]:
    """One watch per (kind, value), its ops those of all; watches of no op dropped."""
    ops: dict[tuple[str, str], int] = {}
    for w in watches:
        ops[(w.kind, w.value)] = ops.get((w.kind, w.value), 0) | w.ops
    return tuple(Watch(k, v, o) for (k, v), o in ops.items() if o)


def too_many(per_rule: Sequence[tuple[Any, Sequence[Watch]]]) -> tuple[Any, int] | None:
    """(the first rule whose watches take the rule set past what the kernel's maps hold,
    the count then), or None when they fit. `per_rule`: (rule, its watches) in file order."""
    seen: set[tuple[str, str]] = set()
    for rule, watches in per_rule:
        for w in watches:
            seen.add((w.kind, w.value))
        if len(seen) > MAX_WATCHES:
            return rule, len(seen)
    return None


def relative_forms(value: str) -> list[str]:
    """The forms a watched absolute path or prefix takes relative to a directory above it
    (`/etc/cron.d/` -> `cron.d/`, `etc/cron.d/`): its last RELATIVE_DEPTH components."""
    parts = value.split("/")   # "", "etc", "cron.d", "" for "/etc/cron.d/"
    last = len(parts) - 1 if parts[-1] else len(parts) - 2   # the last named component
    out = []
    for start in range(last, max(0, last - RELATIVE_DEPTH), -1):
        form = "/".join(parts[start:])
        if form and start > 0:
            out.append(form)
    return out


_MASK64 = (1 << 64) - 1


def first_hash(head: bytes) -> int:
    """The filter bit of a path's first len(head) (1..16) bytes: bpf/file.bpf.c's
    trie_may_match computes the same from the path it read."""
    lo = int.from_bytes(head[:8], "little") ^ (len(head) << 56)
    hi = int.from_bytes(head[8:16], "little")
    x = ((lo * 0x9E3779B97F4A7C15) & _MASK64) ^ hi
    return ((x * 0xC2B2AE3D27D4EB4F) & _MASK64) >> (64 - FIRST_BITS)


def name_hash(name: bytes) -> int:
    """The filter bit of a last component: its length, first two bytes (the second of a
    one-byte name is the NUL after it) and last byte, as bpf/file.bpf.c's name_watched."""
    v = (len(name) << 24) | (name[0] << 16) | ((name[1] if len(name) > 1 else 0) << 8) \
        | name[-1]
    return ((v * 0x9E3779B1) & 0xFFFFFFFF) >> (32 - NAME_BITS)


def bloom(bits: Iterable[int], size_bits: int) -> tuple[int, ...]:
    """The filter's 64-bit words with these bits set."""
    words = [0] * ((1 << size_bits) // 64)
    for b in bits:
        words[b >> 6] |= 1 << (b & 63)
    return tuple(words)


@dataclass(frozen=True)
class KernelWatch:
    """The kernel maps' contents: LPM trie entries (bytes to match as a prefix -> ops),
    names (-> ops of name watches | ops of exact paths << SPELLED_OTHERWISE), the union of
    every op, the distinct name lengths, and the filters before the trie and the names map
    (`first_ks`: bit k set when some entry's filter key is k bytes long)."""

    prefixes: dict[bytes, int]
    names: dict[bytes, int]
    ops: int
    name_lens: tuple[int, ...]
    first_ks: int = 0
    first_bloom: tuple[int, ...] = ()
    name_bloom: tuple[int, ...] = ()

    def may_be_watched(self, path: bytes) -> bool:
        """What the kernel's filters say of a path (as read: no NUL): False when neither
        a trie entry can be its prefix nor a name its last component."""
        raw = path + b"\0"
        for k in range(1, FIRST_KS[0] + 1):
            if self.first_ks >> k & 1 and len(raw) >= k and _bit(self.first_bloom,
                                                                   first_hash(raw[:k])):
                return True
        last = path.rpartition(b"/")[2]
        return bool(last) and len(last) in self.name_lens and _bit(self.name_bloom,
                                                                   name_hash(last))


def _bit(words: tuple[int, ...], b: int) -> bool:
    return bool(words) and bool(words[b >> 6] >> (b & 63) & 1)


def kernel_entries(watches: Iterable[Watch]) -> KernelWatch:
    """What bpf/file.bpf.c's maps hold for these watches (pure). An exact path is its bytes
    and a NUL; a prefix its bytes; each with its relative forms (cut at TRIE_MAX)."""
    prefixes: dict[bytes, int] = {}
    names: dict[bytes, int] = {}

    def add(table: dict[bytes, int], key: bytes, ops: int) -> None:
        table[key] = table.get(key, 0) | ops

    merged = merge(watches)
    paths = [w for w in merged if w.kind != NAME]
    for w in merged:
        if w.kind == NAME:
            add(names, _raw(w.value), w.ops)
        else:
            add(prefixes, _trie_key(w, w.value), w.ops)
    for w in paths:   # relative forms after every absolute entry: the cut keeps those
        if w.kind == PATH:
            # its last component too (ops << SPELLED_OTHERWISE): `/etc//shadow` and
            # `/etc/./shadow` miss the trie's `/etc/shadow` but end in `shadow`; the kernel
            # sends such a path only when it is not canonical, userspace makes it so
            base = _raw(w.value.rpartition("/")[2])
            if 0 < len(base) <= NAME_LEN:
                add(names, base, w.ops << SPELLED_OTHERWISE)
        for form in relative_forms(w.value):
            if len(prefixes) >= TRIE_MAX:
                break
            add(prefixes, _trie_key(w, form), w.ops)
    # the trie answers with its LONGEST matching entry only: each entry carries the ops of
    # the shorter entries it starts with (`/etc/` for writes, `/etc/shadow` for reads)
    inherited = {key: ops | _ancestors(key, prefixes) for key, ops in prefixes.items()}
    ops = 0
    for v in (*inherited.values(), *names.values()):
        ops |= (v | v >> SPELLED_OTHERWISE) & ALL_OPS
    heads = {first_key(key) for key in inherited}
    return KernelWatch(inherited, names, ops, tuple(sorted({len(n) for n in names})),
                       first_ks=sum({1 << len(h) for h in heads}),
                       first_bloom=bloom((first_hash(h) for h in heads), FIRST_BITS),
                       name_bloom=bloom((name_hash(n) for n in names if n), NAME_BITS))


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _trie_key(w: Watch, form: str) -> bytes:
    """A trie entry of a path or prefix watch (its value or a relative form of it): an
    exact path's bytes and a NUL, a prefix's bytes."""
    return _raw(form) + (b"\0" if w.kind == PATH else b"")


def _ancestors(key: bytes, prefixes: dict[bytes, int]) -> int:
    ops = 0
    for i in range(1, len(key)):
        ops |= prefixes.get(key[:i], 0)
    return ops


def under_watch(cwd: str, prefixes: dict[bytes, int]) -> int:
    """The ops of the watched directories a working directory is under (0: none): the
    kernel's test at chdir, for the processes already running when the watch is loaded."""
    raw = cwd.encode("utf-8", "surrogateescape")
    if not raw.endswith(b"/"):
        raw += b"/"
    ops = 0
    for key, v in prefixes.items():
        if key.startswith(b"/") and not key.endswith(b"\0") and raw.startswith(key):
            ops |= v
    return ops
