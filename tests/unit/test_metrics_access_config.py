"""Who may read /metrics on a host install (issue 13, "Also"): `listen: unix:/PATH`,
`metrics_socket_group`, `metrics_token_file`, validated with a clear message and exit 2."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from agent import cli
from agent.config import load_config, read_metrics_token
from agent.errors import ConfigError


def _config(tmp_path: Path, text: str) -> str:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return str(p)


def _token(tmp_path: Path, text: str = "0123abcd\n", mode: int = 0o600) -> Path:
    p = tmp_path / "token"
    p.write_text(text)
    p.chmod(mode)
    return p


def test_a_unix_listen_address_and_a_token_file_are_accepted(tmp_path: Path) -> None:
    token = _token(tmp_path)
    cfg = load_config(_config(tmp_path, "listen: unix:/run/nodewarden/metrics.sock\n"
                                        "metrics_socket_group: '0'\n"
                                        f"metrics_token_file: {token}\n"))
    assert cfg.listen == "unix:/run/nodewarden/metrics.sock"
    assert read_metrics_token(cfg.metrics_token_file) == b"0123abcd"


@pytest.mark.parametrize("text, message", [
    ("listen: unix:run/metrics.sock\n", "absolute path"),
    ("listen: unix:/run/nodewarden/\n", "absolute path"),
    (f"listen: unix:/{'x' * 120}\n", "at most 107 bytes"),
    ("listen: 'host:port'\n", "unix:/run/nodewarden/metrics.sock"),
    ("metrics_socket_group: nodewarden\n", "needs listen: unix:/PATH"),
    ("listen: unix:/run/m.sock\nmetrics_socket_group: no-such-group-here\n", "no group named"),
    ("metrics_token_file: /nonexistent/token\n", "cannot read it"),
    ("metrics_token_file: 3\n", "wrong type"),
])
def test_bad_metrics_access_settings_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_config(tmp_path, text))


@pytest.mark.parametrize("text, mode, message", [
    ("0123abcd\n", 0o644, "readable by every user"),
    ("\n  \n", 0o600, "one word of printable ASCII"),
    ("two words\n", 0o600, "one word of printable ASCII"),
])
def test_bad_token_files_are_refused(tmp_path: Path, text: str, mode: int, message: str) -> None:
    token = _token(tmp_path, text, mode)
    with pytest.raises(ConfigError, match=message):
        load_config(_config(tmp_path, f"metrics_token_file: {token}\n"))


def test_a_directory_as_token_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a regular file|cannot read"):
        read_metrics_token(str(tmp_path))


def test_run_exits_2_with_the_message(tmp_path: Path) -> None:
    token = _token(tmp_path, mode=0o604)
    err = io.StringIO()
    rc = cli.main(["run", "--config", _config(tmp_path, f"metrics_token_file: {token}\n")],
                  out=io.StringIO(), err=err)
    assert rc == 2
    assert "readable by every user" in err.getvalue() and "chmod 600" in err.getvalue()


def test_run_refuses_a_relative_unix_socket_from_the_command_line(tmp_path: Path) -> None:
    err = io.StringIO()
    rc = cli.main(["run", "--listen", "unix:metrics.sock", "--once", "--no-bpf"],
                  out=io.StringIO(), err=err)
    assert rc == 2 and "absolute path" in err.getvalue()
    assert not os.path.exists("metrics.sock")
