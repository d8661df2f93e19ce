"""Rule files to a RuleSet: validation with `file:line` problems, then compilation.

Every problem in every file is collected (not just the first), each naming the rule and
the fix. Lists and macros are shared across the files of one set; `overrides` in a later
file change a shipped rule's severity, mode, action or enabled flag by id.

The steps, each in its own module: files.py reads each file once (the digest is of the
bytes compiled), definitions.py collects lists and macros, rules.py compiles each rule
(conditions.py and operators.py its condition; windows.py and messages.py the rest),
overrides.py applies overrides; examples.py compiles the examples when asked for.
setcache.py keeps what a set that compiled without a problem says of its rules, so that
`scan` (`load(..., lazy=True)`) recalls it and compiles on first use only.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from agent.engine import setcache
from agent.engine.files import BUNDLED as BUNDLED  # the public API: the lead's and reload's
from agent.engine.files import RuleFile, digest, read_bytes, read_rule_file
from agent.engine.files import bundled_rules_dir as bundled_rules_dir
from agent.engine.files import rule_files as rule_files
from agent.engine.problems import Problems
from agent.engine.ruleset import Rule, RuleSet
from agent.errors import RuleError, RuleProblem
from agent.model import EventKind, Severity

# the compiler (conditions, patterns, RE2, the kernel's forms) is imported when a rule set
# is compiled, not with this module: a set recalled from setcache.py may never need it
if TYPE_CHECKING:
    from agent.engine.rules import RuleCompiler


def check(paths: Sequence[str], examples: bool = False,
          ) -> tuple[RuleSet | None, list[RuleProblem]]:
    """Load the rule files under `paths`; returns (rule set or None, problems). With
    `examples`, each rule's examples are compiled too (`rules check`, `rules test`)."""
    with _no_collection():
        return _check(paths, examples)


@contextlib.contextmanager
def _no_collection() -> Iterator[None]:
    """The cyclic garbage collector off while rules load: a load makes tens of thousands of
    objects that all live on, and the collections their allocation set off (found nothing,
    ~4% of a short `scan`'s instructions) only walked them. Back on as it was afterwards."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _check(paths: Sequence[str], examples: bool) -> tuple[RuleSet | None, list[RuleProblem]]:
    files = rule_files(paths)
    if not files:
        return None, [RuleProblem(", ".join(paths) or "-", 0,
                                  "no rule files (*.yaml) found; pass a file or a directory")]
    return _compile(files, None, examples)


def _compile(files: list[Path], raws: list[bytes] | None, examples: bool
             ) -> tuple[RuleSet | None, list[RuleProblem]]:
    """Compile `files` (from `raws`, their bytes, when given; else read here)."""
    from agent.engine import regexmemo
    from agent.engine.definitions import Definitions
    from agent.engine.overrides import apply_overrides
    from agent.engine.rules import RuleCompiler

    problems = Problems()
    sources = [src for i, f in enumerate(files)
               if (src := read_rule_file(f, problems, raws[i] if raws else None)) is not None]
    defs = Definitions(problems)
    for src in sources:
        defs.collect(src)
    defs.finish()
    compiler = RuleCompiler(problems, defs)
    recalled = regexmemo.recall()
    compiler.conditions.check_macros()
    rules = _compile_rules(compiler, sources, problems)
    regexmemo.keep(recalled)
    _check_watches(rules, problems)
    if examples:
        from agent.engine.examples import attach_examples  # the codec: only when asked

        attach_examples(sources, rules, problems)
    for src in sources:
        apply_overrides(src, rules, problems)
    if problems.found:
        return None, problems.sorted()
    return RuleSet(list(rules.values()), digest(sources), [str(f) for f in files]), []


def _compile_rules(compiler: RuleCompiler, sources: Sequence[RuleFile],
                   problems: Problems) -> dict[str, Rule]:
    """Every rule of every file, by id in file order; an id defined twice is a problem."""
    seen: dict[str, Rule] = {}
    for src in sources:
        for r in compiler.rules(src, len(seen)):
            if r.id in seen:
                problems.file = r.file
                problems.add(r.line, f"rule id '{r.id}' is already defined at "
                                     f"{seen[r.id].file}:{seen[r.id].line}; to change a "
                                     f"shipped rule use 'overrides'")
                continue
            seen[r.id] = r
    return seen


def _check_watches(rules: dict[str, Rule], problems: Problems) -> None:
    """The file rules' watches must fit the kernel's maps: refused at the rule that
    takes them over, here rather than when the agent fills the maps."""
    from agent.engine.filewatch import MAX_WATCHES, too_many

    over = too_many([(r, r.file_watches) for r in rules.values()])
    if over is not None:
        rule, count = over
        problems.file, problems.rule_id = rule.file, rule.id
        problems.add(rule.line, f"with this rule the file rules watch {count} paths and "
                                f"names (the kernel holds {MAX_WATCHES}): watch a directory "
                                f"with file.path prefix instead of its files one by one")


def load(paths: Sequence[str], examples: bool = False, lazy: bool = False) -> RuleSet:
    """Load and compile a rule set; raises RuleError with every problem found.

    With `lazy` (a short command such as `scan`), a set whose very files and compiler
    compiled without a problem before is built from what setcache.py kept of it, and its
    rules' conditions compile from the bytes read now on their first use; any other set is
    checked and compiled here, and kept for the next time."""
    if lazy and not examples:
        return _recalled_or_loaded(paths)
    ruleset, problems = check(paths, examples)
    if ruleset is None:
        raise RuleError(problems)
    return ruleset


def _recalled_or_loaded(paths: Sequence[str]) -> RuleSet:
    files = rule_files(paths)
    problems = Problems()
    raws = [read_bytes(f, problems) for f in files]
    entry = None
    if files and not problems.found:
        entry = setcache.name([(str(f), raw) for f, raw in zip(files, raws, strict=True)
                               if raw is not None])
    kept = setcache.recall(entry) if entry is not None else None
    whole = [raw for raw in raws if raw is not None]
    if kept is not None:
        ruleset = _from_skeleton(kept[0], kept[1], files, whole)
        if ruleset is not None:
            return ruleset
    if entry is None:
        return load(paths)   # no files, or one unreadable: the full check says so
    # a miss: the bytes the entry is named by are the ones compiled and kept (read once)
    with _no_collection():
        ruleset, found = _compile(files, whole, False)
    if ruleset is None:
        raise RuleError(found)
    setcache.keep(entry, ruleset.digest, ruleset.all_rules)
    return ruleset


def _from_skeleton(digest: str, kept: setcache.Skeleton, files: list[Path], raws: list[bytes]
                   ) -> RuleSet | None:
    """The rule set of a kept skeleton: each rule's own facts now, the rest on first use;
    None when the entry does not read as one."""
    rules: list[Rule] = []
    compile_all = _materializer(rules, files, raws)
    try:
        for values in kept:
            rule = Rule.__new__(Rule)
            facts = dict(zip(setcache.FIELDS, values, strict=True))
            facts["severity"] = Severity(facts["severity"])
            facts["kinds"] = tuple(EventKind(k) for k in facts["kinds"])
            rule.__dict__.update(facts, _pending=compile_all)
            rules.append(rule)
        return RuleSet(rules, digest, [str(f) for f in files])
    except (TypeError, ValueError, AttributeError):
        return None


def _materializer(rules: list[Rule], files: list[Path], raws: list[bytes]
                  ) -> Callable[[], None]:
    """What compiles `rules` (recalled) from `raws`, once, and gives each rule its
    conditions, message, window and the rest of what compiling makes."""
    lock = threading.Lock()

    def compile_all() -> None:
        with lock:
            if not rules or "_pending" not in rules[0].__dict__:
                return  # another thread did
            with _no_collection():
                ruleset, problems = _compile(files, raws, False)
            if ruleset is None:
                raise RuleError(problems)
            fresh = {r.id: r for r in ruleset.all_rules}
            for rule in rules:
                made = fresh.get(rule.id)
                if made is None:  # the same bytes and code compiled otherwise: say so
                    raise RuleError([RuleProblem(rule.file, rule.line, f"rule '{rule.id}' "
                                                 "did not compile as it did before")])
                del rule.__dict__["_pending"]
                rule.__dict__.update(made.__dict__)
                rule.__post_init__()

    return compile_all
