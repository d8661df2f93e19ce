"""Config validation (issue 13, defect 12): what a typo or a hostile value in the config or on
the command line does is exit 2 naming the key, never a traceback or a silently dead loop."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import load_config


def run(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), out, err), err.getvalue()


@pytest.mark.parametrize("key,value", [
    ("scan_interval", ".nan"), ("scan_interval", ".inf"), ("scan_interval", "-.inf"),
    ("scan_interval", "0"), ("scan_interval", "-1"), ("slack_rate_per_second", ".nan"),
    ("slack_dedupe_seconds", ".inf"), ("kubernetes_event_rate_per_second", ".nan"),
])
def test_a_number_that_is_not_finite_and_positive_is_exit_2(tmp_path: Path, key: str,
                                                             value: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"{key}: {value}\n")
    code, err = run("run", "--config", str(cfg), "--once", "--listen", "off", "--no-bpf")
    assert code == 2 and f"{cfg}: {key} must be" in err, err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-3", "soon"])
def test_interval_on_the_command_line_must_be_positive_and_finite(value: str) -> None:
    res = subprocess.run([sys.executable, "-m", "agent", "run", "--once", "--interval", value],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2
    assert "argument --interval" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("listen", ["127.0.0.1:70000", "127.0.0.1:0", "127.0.0.1:", ":9808",
                                    "::1:9808", "[::1:9808", "[nope]:9808", "a b:9808",
                                    "127.0.0.1:٣"])
def test_a_listen_address_that_cannot_be_bound_is_exit_2(listen: str) -> None:
    code, err = run("run", "--once", "--no-bpf", "--listen", listen)
    assert code == 2 and "listen must be HOST:PORT" in err, err


def test_a_listen_port_out_of_range_from_the_config_is_exit_2_without_traceback(
        tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("listen: 127.0.0.1:70000\nbpf: 'off'\nkubernetes: 'off'\n")
    res = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(cfg), "--once"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and "from 1 to 65535" in res.stderr


@pytest.mark.parametrize("listen", ["127.0.0.1:9808", "0.0.0.0:1", "[::1]:65535",
                                    "localhost:9808", "node-1.example.:80"])
def test_good_listen_addresses(listen: str) -> None:
    from agent.config import listen_problem

    assert listen_problem(listen) == ""


def test_a_config_file_of_megabytes_is_refused_unparsed(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    with cfg.open("w") as f:
        f.write("protected:\n")
        f.writelines(f"  - name{i}\n" for i in range(10**6))
    code, err = run("run", "--config", str(cfg), "--once", "--listen", "off", "--no-bpf")
    assert code == 2 and f"{cfg}:1: the config is longer than" in err, err


def test_a_config_that_is_not_utf8_is_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"mode: audit\nhost: \xff\xfe\n")
    code, err = run("run", "--config", str(cfg), "--once", "--listen", "off", "--no-bpf")
    assert code == 2 and "not UTF-8" in err, err


def test_an_unquoted_listen_off_turns_the_endpoint_off(tmp_path) -> None:
    # YAML reads `off` as false; the README writes `listen: off`
    f = tmp_path / "c.yaml"
    f.write_text("listen: off\n")
    assert load_config(str(f)).listen == "off"


# -- types from the annotations, nested sections, moved keys ------------------------------------

def _load(tmp_path: Path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return load_config(str(p)), str(p)


def _error(tmp_path: Path, text: str) -> str:
    from agent.errors import ConfigError

    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    return str(e.value).replace(str(p), "c.yaml")


def test_a_config_of_every_default_loads_back_to_the_defaults(tmp_path: Path) -> None:
    import dataclasses

    import yaml

    from agent.config import Config, as_dict

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {k: plain(x) for k, x in dataclasses.asdict(v).items()}
        return str(v) if isinstance(v, str) else v

    text = yaml.safe_dump({k: plain(v) for k, v in as_dict(Config()).items()})
    cfg, _ = _load(tmp_path, text)
    assert cfg == Config(), "every key's type comes from its annotation, sections included"


def test_numbers_severities_and_sections_are_typed(tmp_path: Path) -> None:
    from agent.model import Severity

    cfg, _ = _load(tmp_path, "scan_interval: 3\nslack_min_severity: critical\n"
                             "webhook:\n  url_file: /run/secrets/url\n  min_severity: low\n"
                             "  rate_per_second: 2\n")
    assert cfg.scan_interval == 3.0 and isinstance(cfg.scan_interval, float)
    assert cfg.slack_min_severity is Severity.CRITICAL
    assert cfg.webhook.url_file == "/run/secrets/url"
    assert cfg.webhook.min_severity is Severity.LOW and cfg.webhook.rate_per_second == 2.0
    assert cfg.webhook.queue_size == 1000, "what the section does not say keeps its default"
    empty, _ = _load(tmp_path, "webhook:\n")
    assert empty.webhook.url_file == ""


@pytest.mark.parametrize("text,message", [
    ("mode: audit\nwebhook:\n  url_fle: /x\n",
     "c.yaml:3: unknown setting 'webhook.url_fle' (did you mean 'webhook.url_file'?)"),
    ("webhook:\n  min_severity: hihg\n",
     "c.yaml:2: 'webhook.min_severity' must be one of info, low, medium, high, critical, "
     "not 'hihg' (did you mean 'high'?)"),
    ("slack_min_severity: urgent\n",
     "c.yaml:1: 'slack_min_severity' must be one of info, low, medium, high, critical, "
     "not 'urgent'"),
    ("webhook:\n  queue_size: many\n",
     "c.yaml:2: 'webhook.queue_size' has the wrong type ('many'): it must be a whole number"),
    ("webhook: https://hooks.example/x\n",
     "c.yaml:1: 'webhook' must be a mapping of settings, not 'https://hooks.example/x'"),
    ("protected: [sshd, 3]\n",
     "c.yaml:1: 'protected' has the wrong type (['sshd', 3]): it must be a list of text"),
    ("scan_interval: yes\n",
     "c.yaml:1: 'scan_interval' has the wrong type (True): it must be a number"),
    ("kubernetes_events: 'no'\n",
     "c.yaml:1: 'kubernetes_events' has the wrong type ('no'): it must be true or false"),
    ("webhook:\n  rate_per_second: 0\n  url_file: /x\n",
     "c.yaml: webhook: rate_per_second, queue_size and timeout_seconds must be positive"),
    ("webhook:\n  timeout_seconds: .nan\n",
     "c.yaml: webhook.timeout_seconds must be a finite number, not nan"),
])
def test_config_errors_name_file_line_key_and_fix(tmp_path: Path, text: str,
                                                   message: str) -> None:
    assert _error(tmp_path, text).startswith(message)


def test_a_key_that_moved_names_its_new_place(tmp_path: Path, monkeypatch) -> None:
    from agent import config

    monkeypatch.setitem(config.MOVED, "webhook_url_file", "webhook.url_file")
    monkeypatch.setitem(config.MOVED, "webhook.min_level", "webhook.min_severity")
    assert _error(tmp_path, "mode: audit\nwebhook_url_file: /x\n") == \
        "c.yaml:2: 'webhook_url_file' has moved: it is 'webhook.url_file' now"
    assert _error(tmp_path, "webhook:\n  min_level: high\n") == \
        "c.yaml:2: 'webhook.min_level' has moved: it is 'webhook.min_severity' now"


def test_no_key_is_listed_as_moved_that_still_exists() -> None:
    import dataclasses

    from agent.config import MOVED, Config

    keys = {f.name for f in dataclasses.fields(Config)}
    assert not keys & set(MOVED), "a moved key cannot also be a setting"
