"""Hot reload of rules and config: on a change of the watched files, or on SIGHUP.

Files are fingerprinted through their symlinks (inode, size, mtime of what they point at),
so the Kubernetes ConfigMap update, which swaps a `..data` symlink rather than writing the
files, is seen like an edit. A new rule set or config that does not load is refused: its
problems are logged and counted, and the old one keeps running. A check that runs out of
file descriptors (listing a directory, reading a file) is not a verdict on the files: it is
counted and tried again a turn later, the files' fingerprints left as they were.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from agent.config import Config, load_config
from agent.engine import loader
from agent.engine.ruleset import RuleSet
from agent.errors import ConfigError, FdExhausted, RuleProblem
from agent.fdlimit import EXHAUSTED, Bursts
from agent.metrics import Metrics

log = logging.getLogger("nodewarden.reload")

Fingerprint = tuple[tuple[str, int, int, int], ...]


def fingerprint(paths: Sequence[str]) -> Fingerprint:
    """What the files under `paths` are now, following symlinks."""
    out = []
    for f in loader.rule_files([os.path.realpath(p) if os.path.isdir(p) else p for p in paths]):
        try:
            st = os.stat(f)
        except OSError:
            out.append((str(f), -1, -1, -1))
            continue
        out.append((str(f), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class Reloader:
    """Checks for changes at most every `every` seconds; `request()` (SIGHUP) forces one."""

    def __init__(self, config_path: str | None, cfg: Config, rule_paths: Sequence[str],
                 apply_rules: Callable[[RuleSet], None], apply_config: Callable[[Config], None],
                 metrics: Metrics, every: float = 1.0,
                 effective: Callable[[Config], Config] = lambda c: c) -> None:
        self.config_path = config_path
        self.cfg = cfg
        self.rule_paths = list(rule_paths)
        self.apply_rules = apply_rules
        self.apply_config = apply_config
        self.metrics = metrics
        self.every = every
        # the config as it runs: the file's, with the command line's overrides laid over it
        self.effective = effective
        self._requested = threading.Event()
        self._bursts = Bursts(metrics)
        self._next = 0.0
        self._rules_fp = fingerprint(self.rule_paths)
        self._config_fp = self._config_fingerprint()
        # a rule set being compiled: (thread, its result once done, why)
        self._compiling: tuple[threading.Thread, list[Any], str] | None = None
        self._recompile = ""

    def request(self) -> None:
        """Check every file on the next tick, changed or not (SIGHUP)."""
        self._requested.set()

    def _config_fingerprint(self) -> Fingerprint:
        if self.config_path is None:
            return ()
        try:
            st = os.stat(self.config_path)
        except OSError:
            return ((self.config_path, -1, -1, -1),)
        return ((self.config_path, st.st_ino, st.st_size, st.st_mtime_ns),)

    def tick(self) -> None:
        """Reload what changed (called from the agent's loop)."""
        self._rules_done()
        forced = self._requested.is_set()
        now = time.monotonic()
        if not forced and now < self._next:
            return
        self._next = now + self.every
        self._requested.clear()
        try:
            self._check(forced)
        except OSError as e:
            self._bursts.failed("reload", e)
            if forced:
                self._requested.set()  # the SIGHUP is not lost: retried next turn
            return
        self._bursts.ok("reload")

    def _check(self, forced: bool) -> None:
        config_fp = self._config_fingerprint()
        if forced or config_fp != self._config_fp:
            self._reload_config()
            self._config_fp = config_fp
        rules_fp = fingerprint(self.rule_paths)
        if forced or rules_fp != self._rules_fp:
            self._reload_rules("SIGHUP" if forced else "a change of the rule files")
            self._rules_fp = rules_fp

    def _reload_config(self) -> None:
        if self.config_path is None:
            return
        try:
            cfg = self.effective(load_config(self.config_path))
        except ConfigError as e:
            _raise_if_starved(str(e))
            self.metrics.reload_failures.labels(what="config").inc()
            log.error("config reload refused, the running config stays: %s", e)
            return
        self.apply_config(cfg)
        if cfg.rules and cfg.rules != self.rule_paths:
            self.rule_paths = list(cfg.rules)
            self._rules_fp = ()  # load the new paths now
        self.cfg = cfg
        log.info("config reloaded: mode=%s", cfg.mode)

    def _reload_rules(self, why: str) -> None:
        """Compile the rule files in a thread of their own: a large rule set must not stop
        the agent's loop (its events, scans and /healthz) meanwhile. A later tick applies it."""
        if self._compiling is not None:
            self._recompile = why  # changed again meanwhile: compile once more after this one
            return
        paths = list(self.rule_paths)
        result: list[tuple[RuleSet | None, list[RuleProblem]]] = []

        def compile_rules() -> None:
            try:
                result.append(loader.check(paths))
            except Exception as e:  # noqa: BLE001 - refused like any bad rule set, not fatal
                result.append((None, [RuleProblem(", ".join(paths), 0, f"cannot load: {e!r}")]))

        thread = threading.Thread(target=compile_rules, name="rules-compile", daemon=True)
        try:
            thread.start()
        except RuntimeError as e:  # no thread to be had now (out of memory or pids)
            self.metrics.reload_failures.labels(what="rules").inc()
            log.error("rule reload after %s postponed: %s; the running rules stay", why, e)
            self._rules_fp = ()  # try again on the next check
            return
        self._compiling = (thread, result, why)

    def _rules_done(self) -> None:
        """Apply (or refuse) the rule set a finished compile made."""
        if self._compiling is None or self._compiling[0].is_alive():
            return
        _, result, why = self._compiling
        self._compiling = None
        ruleset, problems = result[0]
        if self._recompile:
            self._reload_rules(self._recompile)
            self._recompile = ""
        if ruleset is None:
            try:
                _raise_if_starved(" ".join(p.message for p in problems))
            except FdExhausted as e:
                # not a verdict on the files: counted, and compiled again on the next check
                self._bursts.failed("reload", e)
                self._rules_fp = ()
                return
            self.metrics.reload_failures.labels(what="rules").inc()
            for p in problems:
                log.error("%s", p)
            log.error("rule reload after %s refused (%d problems); the running rules stay",
                      why, len(problems))
            return
        self.apply_rules(ruleset)
        self.metrics.set_ruleset(ruleset.digest, len(ruleset))
        log.info("rules reloaded after %s: %d rules, hash %s", why, len(ruleset), ruleset.digest)


def _raise_if_starved(problems: str) -> None:
    """A load refused only because a file could not be opened for want of descriptors
    says nothing about the files: raise, so that the load is tried again."""
    for n in EXHAUSTED:
        if os.strerror(n) in problems:
            raise FdExhausted(n, os.strerror(n))
