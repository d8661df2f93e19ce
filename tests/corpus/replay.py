"""Replay tests/corpus/exec-corpus.yaml through the shipped rules and print the detection
table per ATT&CK technique (the table in rules/README.md):

    .venv/bin/python -m tests.corpus.replay

Each corpus line becomes one recorded event (the format of agent/codec.py, as `nodewarden
replay` reads it), judged by the real engine with the bundled rules."""

from __future__ import annotations

import os
import shlex
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.codec import event_from_json
from agent.engine import loader
from agent.engine.ruleset import Match, RuleSet
from agent.model import Event, Severity

CORPUS = Path(__file__).with_name("exec-corpus.yaml")
WORKSPACE = "ws-corpus"
CONTAINER = "c0ffee" * 10 + "c0ff"
TRUSTED_POD = {"namespace": "kube-system", "name": "node-agent-x"}
TENANT_POD = {"namespace": "team-a", "name": "web-7f9c"}
LOUD = (Severity.HIGH, Severity.CRITICAL)
TACTICS = ("credential-access", "persistence", "defense-evasion", "privilege-escalation",
           "discovery", "exfiltration", "impact", "execution")


@dataclass
class Line:
    """One corpus line, its event and what the rules said about it."""

    entry: dict[str, Any]
    event: Event
    matches: list[Match] = field(default_factory=list)

    @property
    def expect(self) -> str:
        """detect, blind or benign."""
        return str(self.entry.get("expect", "detect" if "attack" in self.entry else "benign"))

    @property
    def loud(self) -> list[str]:
        """Rules that would kill or report high/critical on this line."""
        return [m.rule.id for m in self.matches
                if m.rule.action != "report" or m.rule.severity in LOUD]

    def describe(self) -> str:
        """The command line as a shell would show it, with its context."""
        argv = _argv(self.entry["cmd"])
        return f"[{self.entry.get('ctx', 'host')}] {shlex.join(argv)}"


def _argv(cmd: str | list[str]) -> list[str]:
    return shlex.split(cmd) if isinstance(cmd, str) else [str(a) for a in cmd]


def _process(entry: dict[str, Any], argv: list[str]) -> dict[str, Any]:
    name = os.path.basename(argv[0])
    exe = entry.get("exe") or ("/usr/bin/dash" if name == "sh" else f"/usr/bin/{name}")
    ctx = entry.get("ctx", "host")
    process: dict[str, Any] = {
        "exe": exe, "cmdline": argv, "uid": entry.get("uid", 1000 if ctx == "ws" else 0),
        "ancestors": entry.get("parents") or [{"exe": "/usr/bin/bash", "cmdline": ["bash"]}]}
    comm = entry.get("comm") or ("sh" if name == "sh" else None)
    if comm:
        process["comm"] = comm
    return process


def event_of(entry: dict[str, Any]) -> Event:
    """The recorded event a corpus line stands for."""
    ctx = entry.get("ctx", "host")
    obj: dict[str, Any] = {"kind": entry.get("kind", "exec"),
                           "process": _process(entry, _argv(entry["cmd"]))}
    if ctx == "ws":
        obj["workspace"] = {"id": WORKSPACE}
    if ctx in ("container", "trusted"):
        obj["container"] = {"id": CONTAINER}
        obj["pod"] = entry.get("pod") or (TRUSTED_POD if ctx == "trusted" else TENANT_POD)
    if "conn" in entry:
        obj["connection"] = {"src": "10.0.3.7", "sport": 40000, **entry["conn"]}
    return event_from_json(obj)


def load(path: Path = CORPUS) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The attack and benign entries of the corpus."""
    data = yaml.safe_load(path.read_text())
    return list(data["attacks"]), list(data["benign"])


def replay(rules: RuleSet | None = None, path: Path = CORPUS) -> list[Line]:
    """Every corpus line judged by `rules` (the bundled rules by default)."""
    rs = rules if rules is not None else loader.load([loader.BUNDLED])
    attacks, benign = load(path)
    lines = []
    for entry in attacks + benign:
        line = Line(entry, event_of(entry))
        line.matches = rs.evaluate(line.event)
        lines.append(line)
    return lines


def table(lines: list[Line]) -> str:
    """The per-technique detection table (markdown) and the benign summary."""
    by_tech: dict[tuple[str, str], list[Line]] = defaultdict(list)
    for ln in lines:
        if ln.expect != "benign":
            by_tech[(ln.entry["tactic"], ln.entry["attack"])].append(ln)
    out = ["| tactic | technique | detected | rules | not seen by exec (needs) |",
           "|---|---|---|---|---|"]
    for (tactic, tech), group in sorted(by_tech.items(),
                                        key=lambda kv: (TACTICS.index(kv[0][0]), kv[0][1])):
        hit = [ln for ln in group if ln.matches]
        rules = sorted({m.rule.id for ln in hit for m in ln.matches})
        needs = sorted({str(ln.entry.get("needs")) for ln in group if not ln.matches})
        out.append(f"| {tactic} | {tech} | {len(hit)}/{len(group)} | {', '.join(rules)} | "
                   f"{', '.join(needs) or '-'} |")
    out += ["", "| tactic | detected / attack lines | blind (needs a sensor) |", "|---|---|---|"]
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for ln in lines:
        if ln.expect == "benign":
            continue
        t = per[ln.entry["tactic"]]
        t[0] += bool(ln.matches)
        t[1] += 1
        t[2] += ln.expect == "blind"
    for tactic in TACTICS:
        if tactic in per:
            d, n, b = per[tactic]
            out.append(f"| {tactic} | {d}/{n} | {b} |")
    benign = [ln for ln in lines if ln.expect == "benign"]
    quiet = [ln for ln in benign if not ln.loud]
    silent = [ln for ln in benign if not ln.matches]
    d = sum(bool(ln.matches) for ln in lines if ln.expect != "benign")
    n = sum(1 for ln in lines if ln.expect != "benign")
    out += ["", f"Attack lines detected: {d}/{n}. Benign lines: {len(benign)}; "
                f"{len(quiet)} with no kill and no high/critical finding, {len(silent)} with no "
                f"finding at all (the others get a low or medium report)."]
    return "\n".join(out)


if __name__ == "__main__":
    print(table(replay()))
