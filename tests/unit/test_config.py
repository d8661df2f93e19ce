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
