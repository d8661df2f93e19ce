"""Rule files to a RuleSet: validation with `file:line` problems, then compilation.

Every problem in every file is collected (not just the first), each naming the rule and
the fix. Lists and macros are shared across the files of one set; `overrides` in a later
file change a shipped rule's severity, mode, action or enabled flag by id.

The steps, each in its own module: files.py reads each file once (the digest is of the
bytes compiled), definitions.py collects lists and macros, rules.py compiles each rule
(conditions.py and operators.py its condition; windows.py and messages.py the rest),
overrides.py applies overrides; examples.py compiles the examples when asked for.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence

from agent.engine import regexmemo
from agent.engine.definitions import Definitions
from agent.engine.files import BUNDLED as BUNDLED  # the public API: the lead's and reload's
from agent.engine.files import RuleFile, digest, read_rule_file
from agent.engine.files import bundled_rules_dir as bundled_rules_dir
from agent.engine.files import rule_files as rule_files
from agent.engine.filewatch import MAX_WATCHES, too_many
from agent.engine.overrides import apply_overrides
from agent.engine.problems import Problems
from agent.engine.rules import RuleCompiler
from agent.engine.ruleset import Rule, RuleSet
from agent.errors import RuleError, RuleProblem


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
    problems = Problems()
    sources = [src for f in files if (src := read_rule_file(f, problems)) is not None]
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
    over = too_many([(r, r.file_watches) for r in rules.values()])
    if over is not None:
        rule, count = over
        problems.file, problems.rule_id = rule.file, rule.id
        problems.add(rule.line, f"with this rule the file rules watch {count} paths and "
                                f"names (the kernel holds {MAX_WATCHES}): watch a directory "
                                f"with file.path prefix instead of its files one by one")


def load(paths: Sequence[str], examples: bool = False) -> RuleSet:
    """Load and compile a rule set; raises RuleError with every problem found."""
    ruleset, problems = check(paths, examples)
    if ruleset is None:
        raise RuleError(problems)
    return ruleset
