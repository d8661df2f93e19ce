"""The agent image's Dockerfile and build context, checked by structure.

`make image` builds it and tests/container/ runs it; these tests check what the chart
relies on (a Debian base with BCC's Python bindings, a venv that sees
them, the package installed non-editable, the `nodewarden` entry point) and that the build
context .dockerignore leaves holds everything `pip install .` reads.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    logical = ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue  # Docker drops comment lines, also inside a continued instruction
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        word, _, rest = logical.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        logical = ""
    return out


def args_of(kind: str, stage: int | None = None) -> list[str]:
    """The arguments of every `kind` instruction (of one stage: 0 first, -1 the image)."""
    stages: list[list[tuple[str, str]]] = []
    for word, rest in instructions():
        if word == "FROM":
            stages.append([])
        stages[-1].append((word, rest))
    chosen = stages if stage is None else [stages[stage]]
    return [rest for st in chosen for word, rest in st if word == kind]


def installed(stage: int) -> set[str]:
    installs = [r for r in args_of("RUN", stage) if "apt-get install" in r]
    assert installs, "no apt-get install"
    assert all("rm -rf /var/lib/apt/lists" in r for r in installs)
    return set(shlex.split(" ".join(installs)))


def test_debian_base_with_bcc_python_bindings():
    bases = args_of("FROM")
    assert len(bases) == 2, "a build stage and the image"
    for base in bases:
        assert re.fullmatch(r"debian:(12|bookworm)(-slim)?( AS \w+)?", base), base
    # the image: Python and BCC, no pip, no venv module, no compiler
    image = installed(-1)
    assert {"python3", "python3-bpfcc", "--no-install-recommends"} <= image
    assert not image & {"python3-venv", "python3-pip", "gcc", "clang", "build-essential"}
    assert {"python3", "python3-venv", "python3-bpfcc"} <= installed(0)


def test_venv_sees_system_site_packages_and_installs_the_package_non_editable():
    [build] = [r for r in args_of("RUN", 0) if " -m venv " in r]
    assert re.search(r"python3 -m venv --system-site-packages \"?\$VIRTUAL_ENV\"?", build)
    [package] = [r for r in args_of("RUN", 0) if "/src" in r and "--no-deps" in r]
    pip = re.search(r"pip\" install ([^&]+)", package)
    assert pip, package
    assert "-e" not in shlex.split(pip.group(1)) and "--editable" not in pip.group(1)
    # the build proves the venv imports BCC and the package data it ships, and so does
    # the image, where only the venv is copied
    assert "import agent.rules, agent.bpf" in package and "bcc" in package
    assert any("import agent.rules, agent.bpf, bcc" in r for r in args_of("RUN", -1))
    assert args_of("COPY", -1) == ["--from=build /opt/nodewarden /opt/nodewarden"]
    env = " ".join(args_of("ENV", -1))
    venv = re.search(r"VIRTUAL_ENV=(\S+)", env)
    assert venv and re.search(rf"PATH={re.escape(venv.group(1))}/bin:\$PATH", env)
    assert "PYTHONUNBUFFERED=1" in env  # findings reach the pod log line by line


def test_pip_trusts_the_ca_bundle_given_as_a_build_secret_only():
    [deps] = [r for r in args_of("RUN", 0) if "requirements.txt" in r]
    assert deps.startswith("--mount=type=secret,id=pip-cert ")
    assert "PIP_CERT=/run/secrets/pip-cert" in deps
    script = (REPO / "scripts" / "image.sh").read_text()
    assert "--secret \"id=pip-cert,src=$cert\"" in script


def test_entrypoint_is_nodewarden():
    [entrypoint] = args_of("ENTRYPOINT")
    assert json.loads(entrypoint) == ["nodewarden"]
    [cmd] = args_of("CMD")
    assert json.loads(cmd) == ["run", "--config", "/etc/nodewarden/config/config.yaml"]


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (is an exception '!', regex), in order: the last match decides."""
    out = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            else:
                regex += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
                i += 1
        out.append((negate, re.compile(regex)))
    return out


def in_build_context(path: str) -> bool:
    """Docker's rule: a pattern matching a directory also matches everything below it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negate, regex in _ignore_patterns():
        if any(regex.fullmatch(p) for p in prefixes):
            included = negate
    return included


def test_build_context_holds_what_pip_install_reads_and_nothing_else():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    dirs = {setuptools["package-dir"].get(p, p.replace(".", "/")) for p in setuptools["packages"]}
    needed = ["pyproject.toml", project["project"]["readme"]]
    for d in sorted(dirs):
        files = [p for p in (REPO / d).iterdir() if p.is_file() and "__pycache__" not in p.parts]
        assert files, d
        needed += [str(p.relative_to(REPO)) for p in files]
    for path in needed:
        assert in_build_context(path), f"{path} is left out of the image's build context"
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "charts/README.md",
                 "build/lib/agent/cli.py", "agent/__pycache__/cli.cpython-311.pyc"):
        assert not in_build_context(path), f"{path} is sent to the Docker build"
