"""The answers of one event kind's rules, remembered by what the rules read.

Rules are pure tests of an event's fields, so two events that agree on every field the
rules of their kind test get the same rules firing. Most execs on a node are the same few
programs with the same arguments under the same shells (`git status`, `ls`, a compiler),
so the answer of the first is the answer of the next thousand: one tuple built and one
dict lookup instead of the index and the rules.

The key holds the event's raw values the fields derive from, never the derived ones
(`cmdline_norm`, `whole_name` cost what judging costs): a process's comm, executable and
argv for every text field of it, its uid or pid where a rule tests them, the workspace,
container, pod or connection value a rule tests (only whether it is there, when every test
of it is `exists`). A kind is not remembered when one of its rules has a window (its count
changes with every event) or tests something whose reads are not known; then its rules
run on every event, as before. Values come from the schema's fixed expressions
(schema.Field.expr) and generated names only, as in codegen.py.

The ancestors' part of a key is one small integer, a token per distinct lineage (their
comm, executable and argv, parent first): a lineage is one tuple shared by every event of
a process and by every event a recording repeats it in (proctree.py's ancestry, codec.py's
`_Ancestors`), so its token is found by the tuple's identity and the key neither rebuilds
nor hashes nor compares the ancestors' texts (a third of what an exec's judging cost).

The store is bounded twice: entries, and the characters of the command lines its keys
hold (a workload that makes up long unique command lines cannot make it big); full, it
is cleared and fills again with what runs now. Only the kinds that judge a program (exec,
scan) remember: other kinds carry a path or an address that seldom repeats, where a key
would cost more than it saves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from agent.engine import codegen
from agent.engine.schema import FIELDS, field
from agent.model import Event

if TYPE_CHECKING:
    from agent.engine.ruleset import Rule

# a bucket's store holds this many answers at most, and keys whose command lines (of the
# process and the ancestors the key names) total this many characters
MAX_ENTRIES = 4096
MAX_CHARS = 4 * 1024 * 1024
# an event whose key would hold more than this is judged without being remembered
MAX_KEY_CHARS = 16 * 1024

# the Process attributes the text fields of a process derive from (comm, exe_name from
# exe or comm, argv0, args, the joined and normal forms from argv, whole_name from all)
_TEXT = ("comm", "exe", "cmdline")
# process field suffix -> the raw attributes its value derives from (an expression of `q`)
_PROC_PARTS: dict[str, tuple[str, ...]] = {
    **{s: _TEXT for s in ("name", "exe", "exe_name", "argv0", "cmdline", "args", "argv",
                          "cmdline_norm", "args_norm")},
    "cmdline_truncated": ("cmdline_cut > 0",),
    "uid": ("uid",), "pid": ("pid",), "ppid": ("ppid",),
}
# a field's value expression -> its name (Tests carry the expression)
_BY_EXPR = {f.expr: name for name, f in FIELDS.items() if f.expr is not None}


class Unknown(Exception):
    """A rule reads something the key cannot name: the kind is not remembered."""


class Store:
    """Remembered answers: key -> the rules that fire, bounded by entries and characters
    (see MAX_ENTRIES, MAX_CHARS); cleared when full. `len` and `maxsize` are what the
    cache metrics read. It also holds the lineage tokens its keys name (`Lineages`), no
    more of them than answers."""

    __slots__ = ("answers", "chars", "lineages", "maxsize")

    def __init__(self) -> None:
        self.answers: dict[tuple[Any, ...], tuple[Rule, ...]] = {}
        self.chars = 0
        self.maxsize = MAX_ENTRIES
        self.lineages = Lineages()

    def put(self, key: tuple[Any, ...], chars: int, fired: Sequence[Rule]) -> None:
        """Remember `fired` for `key` (whose command lines total `chars` characters)."""
        if chars > MAX_KEY_CHARS:
            return
        if len(self.answers) >= MAX_ENTRIES or self.chars + chars > MAX_CHARS:
            self.answers.clear()
            self.chars = 0
            self.lineages.clear()
        self.answers[key] = tuple(fired)
        self.chars += chars

    def __len__(self) -> int:
        return len(self.answers)


class Lineages:
    """A token (int) per distinct lineage, found by the identity of the tuple of ancestors.

    `by_id` maps id(tuple) -> (the tuple, its token): the tuple is held, so its id is not
    reused while the entry lives. `tokens` maps a lineage's texts to its token. A token is
    never given twice (a counter), so a key that names a forgotten token can never match
    another lineage: it is only an answer not found again. At most MAX_ENTRIES of each;
    cleared with the store's answers (each miss adds at most one answer and one lineage)."""

    __slots__ = ("by_id", "count", "part", "tokens")

    def __init__(self) -> None:
        self.by_id: dict[int, tuple[tuple[Any, ...], int]] = {}
        self.tokens: dict[tuple[Any, ...], int] = {}
        self.count = 0
        # the texts of one ancestor that a key holds (set by `remembering`)
        self.part: Callable[[Any], tuple[Any, ...]] = lambda q: (q.cmdline, q.comm, q.exe)

    def token(self, ancestors: tuple[Any, ...]) -> int:
        """The token of this lineage (made, and found by identity from now on)."""
        texts = tuple(map(self.part, ancestors))
        tok = self.tokens.get(texts)
        if tok is None:
            if len(self.tokens) >= MAX_ENTRIES:
                self.tokens.clear()
            tok = self.tokens[texts] = self.count = self.count + 1
        if len(self.by_id) >= MAX_ENTRIES:
            self.by_id.clear()
        self.by_id[id(ancestors)] = (ancestors, tok)
        return tok

    def clear(self) -> None:
        """Forget every lineage (tokens given stay given)."""
        self.by_id.clear()
        self.tokens.clear()


class _Reads:
    """What the rules of a kind read, as key parts: process attributes of the event's
    process, of its parent, of every ancestor, and other values (by expression)."""

    def __init__(self) -> None:
        self.proc: set[str] = set()
        self.parent: set[str] = set()
        self.ancestors: set[str] = set()
        # expression -> whether its value is needed (False: only whether it is there)
        self.values: dict[str, bool] = {}
        # fields without an expression: their getters, called
        self.getters: dict[str, Callable[[Event], Any]] = {}

    def field(self, name: str, value: bool) -> None:
        """Note a read of field `name` (`value`: more than `exists` asks of it)."""
        scope, _, suffix = name.partition(".")
        if scope in ("proc", "parent", "ancestor"):
            parts = _PROC_PARTS.get(suffix)
            if parts is None:
                raise Unknown(name)
            {"proc": self.proc, "parent": self.parent, "ancestor": self.ancestors}[
                scope].update(parts)
            return
        fld = FIELDS.get(name)
        if fld is not None and fld.expr is not None:
            self.values[fld.expr] = self.values.get(fld.expr, False) or value
            return
        fld = fld or field(name)
        if fld is None:
            raise Unknown(name)
        self.getters[name] = fld.get

    def walk(self, e: codegen.Expr) -> None:
        """Note every read of condition `e`."""
        if isinstance(e, codegen.Test):
            name = _BY_EXPR.get(e.access)
            if name is None:
                raise Unknown(e.access)
            self.field(name, e.op != "exists")
        elif isinstance(e, (codegen.All, codegen.Some)):
            for p in e.parts:
                self.walk(p)
        elif isinstance(e, codegen.Not):
            self.walk(e.part)
        elif isinstance(e, codegen.Call):
            if e.reads is None:
                raise Unknown(repr(e.fn))
            for name in e.reads:
                self.field(name, True)
        else:
            raise Unknown(type(e).__name__)


def reads_of(rules: Sequence[Rule]) -> _Reads | None:
    """What `rules` read, or None when they cannot be remembered (a window, or a read the
    key cannot name)."""
    r = _Reads()
    try:
        for rule in rules:
            if rule.window is not None or rule.forms is None:
                return None
            match, exceptions = rule.forms
            for e in (match, exceptions):
                if e is not None:
                    r.walk(e)
    except Unknown:
        return None
    return r


def _proc_key(obj: str, attrs: set[str]) -> str:
    """The tuple of `attrs` of process `obj` (text; attrs from _PROC_PARTS only)."""
    return "(" + "".join(f"{obj}.{a}, " for a in sorted(attrs)) + ")"


def remembering(rules: Sequence[Rule], judge: Callable[[Event], Sequence[Rule]],
                store: Store) -> Callable[[Event], Sequence[Rule]] | None:
    """`judge` (the rules of one kind that fire on an event) in front of `store`: an
    event whose key is there gets the answer remembered, others are judged and their
    answer kept. None when the rules cannot be remembered (`reads_of`)."""
    r = reads_of(rules)
    if r is None:
        return None
    consts: dict[str, Any] = {"_store": store.answers, "_put": store.put, "_judge": judge,
                              "_EMPTY": codegen.EMPTY}
    parts: list[str] = []
    chars = ["_n = 0"]
    if r.proc:
        parts.append(_proc_key("_p", r.proc))
        if "cmdline" in r.proc:
            chars.append("_n += sum(map(len, _p.cmdline))")
    if r.parent and not r.ancestors:
        parts.append(f"({_proc_key('_a[0]', r.parent)} if _a else None)")
        if "cmdline" in r.parent:
            chars.append("if _a: _n += sum(map(len, _a[0].cmdline))")
    lineage: list[str] = []
    if r.ancestors:
        every = r.ancestors | r.parent
        # the lineage's token (see Lineages): by the tuple's identity, else made
        part = codegen.source_function([f"return {_proc_key('ev', every)}"], {})
        if part is None:
            return None
        store.lineages.part = part
        consts.update(_by_id=store.lineages.by_id, _token=store.lineages.token, _id=id)
        lineage = ["    _m = _by_id.get(_id(_a))",
                   "    _l = _m[1] if _m is not None and _m[0] is _a else _token(_a)"]
        parts.append("_l")
        if "cmdline" in every:
            chars.append("for q in _a: _n += sum(map(len, q.cmdline))")
    for expr, value in sorted(r.values.items()):
        parts.append(expr if value else f"({expr} not in _EMPTY)")
    for i, (_, get) in enumerate(sorted(r.getters.items())):
        consts[f"_g{i}"] = get
        parts.append(f"_g{i}(ev)")
    body = ["_p = ev.process", "_a = ev.ancestors", "try:", *lineage,
            f"    _key = ({''.join(p + ', ' for p in parts)})",
            "    _hit = _store.get(_key)",
            "except TypeError:",  # a value that cannot be a key: judged as it is
            "    return _judge(ev)",
            "if _hit is not None: return _hit",
            "_fired = _judge(ev)",
            *chars,
            "_put(_key, _n, _fired)",
            "return _fired"]
    return codegen.source_function(body, consts)
