"""The Reloader on real files: what a change, a SIGHUP, a broken file and the command line's
overrides lead to (the end-to-end cases are in tests/integration/test_reload*.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.app import Overrides
from agent.config import Config, load_config
from agent.engine.ruleset import RuleSet
from agent.metrics import Metrics
from agent.reload import Reloader

RULE = "rules:\n  - id: {rid}\n    severity: high\n    match: {{proc.exe_name: {rid}}}\n"


class Applied:
    """What the reloader handed over, in order."""

    def __init__(self) -> None:
        self.configs: list[Config] = []
        self.rulesets: list[RuleSet] = []

    def config(self, cfg: Config) -> None:
        self.configs.append(cfg)

    def rules(self, rs: RuleSet) -> None:
        self.rulesets.append(rs)


def _rules_dir(tmp: Path, name: str, rid: str) -> Path:
    d = tmp / name
    d.mkdir(exist_ok=True)
    (d / "r.yaml").write_text(RULE.format(rid=rid))
    return d


def _reloader(tmp: Path, config: str, overrides: Overrides | None = None
              ) -> tuple[Reloader, Applied, Metrics, Path]:
    overrides = overrides or Overrides()
    path = tmp / "config.yaml"
    path.write_text(config)
    cfg = overrides.apply(load_config(str(path)))
    applied, metrics = Applied(), Metrics()
    r = Reloader(str(path), cfg, cfg.rules, apply_rules=applied.rules,
                 apply_config=applied.config, metrics=metrics, every=0.0,
                 effective=overrides.apply)
    return r, applied, metrics, path


def _tick_until(r: Reloader, done, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the reloader never got there"
        r.tick()
        time.sleep(0.01)


def _rewrite(path: Path, text: str) -> None:
    """A new file (new inode), as an editor or a ConfigMap swap leaves it."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    tmp.replace(path)


def test_a_changed_config_is_applied_with_the_command_line_laid_over_it(tmp_path):
    cli = _rules_dir(tmp_path, "cli", "alpha")
    cfgdir = _rules_dir(tmp_path, "cfg", "beta")
    over = Overrides(dry_run=True, rules=(str(cli),), interval=0.5)
    r, applied, _, path = _reloader(tmp_path, f"rules: [{cfgdir}]\n", over)
    _rewrite(path, f"mode: enforce\nrules: [{cfgdir}]\nscan_interval: 60\nprotected: [x]\n")
    _tick_until(r, lambda: applied.configs)
    cfg = applied.configs[-1]
    assert (cfg.mode, cfg.rules, cfg.scan_interval) == ("audit", [str(cli)], 0.5)
    assert cfg.protected == ["x"]  # what the command line does not say comes from the file
    assert r.rule_paths == [str(cli)]


def test_a_config_that_names_other_rules_loads_them(tmp_path):
    first = _rules_dir(tmp_path, "first", "alpha")
    second = _rules_dir(tmp_path, "second", "beta")
    r, applied, _, path = _reloader(tmp_path, f"rules: [{first}]\n")
    _rewrite(path, f"rules: [{second}]\n")
    _tick_until(r, lambda: applied.rulesets)
    assert [rule.id for rule in applied.rulesets[-1].rules] == ["beta"]


def test_a_broken_config_is_refused_counted_and_the_old_one_stays(tmp_path):
    r, applied, metrics, path = _reloader(tmp_path, "mode: audit\n")
    _rewrite(path, "mode: enforec\n")
    r.tick()
    assert applied.configs == []
    assert metrics.reload_failures.labels(what="config")._value.get() == 1
    _rewrite(path, "mode: enforce\n")
    _tick_until(r, lambda: applied.configs)
    assert applied.configs[-1].mode == "enforce"


def test_broken_rules_are_refused_and_fixed_ones_applied(tmp_path):
    d = _rules_dir(tmp_path, "rules", "alpha")
    r, applied, metrics, _ = _reloader(tmp_path, f"rules: [{d}]\n")
    _rewrite(d / "r.yaml", "rules:\n  - id: alpha\n    match: {proc.exe_nmae: x}\n")
    _tick_until(r, lambda: metrics.reload_failures.labels(what="rules")._value.get() == 1)
    assert applied.rulesets == []
    _rewrite(d / "r.yaml", RULE.format(rid="gamma"))
    _tick_until(r, lambda: applied.rulesets)
    assert [rule.id for rule in applied.rulesets[-1].rules] == ["gamma"]


def test_sighup_reloads_unchanged_files(tmp_path):
    d = _rules_dir(tmp_path, "rules", "alpha")
    r, applied, _, _ = _reloader(tmp_path, f"rules: [{d}]\n")
    r.tick()
    assert applied.configs == [] and applied.rulesets == []
    r.request()
    _tick_until(r, lambda: applied.configs and applied.rulesets)
    assert [rule.id for rule in applied.rulesets[-1].rules] == ["alpha"]


@pytest.mark.parametrize("interval", [0.0, -1.0])
def test_overrides_are_validated_like_the_file(tmp_path, interval):
    from agent.errors import ConfigError

    with pytest.raises(ConfigError, match="scan_interval"):
        Overrides(interval=interval).apply(Config())
