"""Replay tests/corpus/exec-corpus.yaml and sensor-corpus.yaml through the shipped rules and
print the detection table per ATT&CK technique (the table in rules/README.md):

    .venv/bin/python -m tests.corpus.replay

Each corpus line becomes one recorded event (the format of agent/codec.py, as `nodewarden
replay` reads it), or with `repeat` a sequence of them, judged by the real engine with the
bundled rules. Exec lines are what a command line shows; sensor lines are the events of the
issue 11 sensors (file, ptrace, setuid, memfd, mount, setns, unshare, module, bpf, udp,
dns)."""

from __future__ import annotations

import os
import shlex
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent import details
from agent.codec import event_from_json
from agent.engine import loader
from agent.engine.examples import example_events
from agent.engine.ruleset import Match, RuleSet
from agent.model import CONNECTION_KINDS, PROCESS_KINDS, Event, Severity

CORPUS = Path(__file__).with_name("exec-corpus.yaml")
SENSOR_CORPUS = Path(__file__).with_name("sensor-corpus.yaml")
CORPORA = (CORPUS, SENSOR_CORPUS)
EXEC_KINDS = tuple(str(k) for k in (*PROCESS_KINDS, *CONNECTION_KINDS))  # what exec sees
RESOLVER = {"dst": "10.96.0.10", "dport": 53}
LINE_GAP = 1000.0  # seconds between lines: no window spans two of them
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
    events: list[Event]
    matches: list[Match] = field(default_factory=list)

    @property
    def sensor(self) -> bool:
        """A line of an issue 11 sensor's kind (not what a command line shows)."""
        return str(self.entry.get("kind", "exec")) not in EXEC_KINDS

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
        """The command line as a shell would show it, with its context and, for a sensor
        line, what the sensor saw."""
        argv = _argv(self.entry["cmd"])
        seen = "".join(f" {{{fam}: {self.entry[fam]}}}" for fam in details.BY_FAMILY
                       if fam in self.entry)
        kind = f" <{self.entry['kind']}>" if self.sensor else ""
        return f"[{self.entry.get('ctx', 'host')}] {shlex.join(argv)}{kind}{seen}"


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


def _recorded(entry: dict[str, Any], time: float) -> dict[str, Any]:
    """The recorded form of a corpus line's event (with `repeat` when it has one)."""
    ctx = entry.get("ctx", "host")
    kind = entry.get("kind", "exec")
    obj: dict[str, Any] = {"kind": kind, "time": time,
                           "process": _process(entry, _argv(entry["cmd"]))}
    if ctx == "ws":
        obj["workspace"] = {"id": WORKSPACE}
    if ctx in ("container", "trusted"):
        obj["container"] = {"id": CONTAINER}
        obj["pod"] = entry.get("pod") or (TRUSTED_POD if ctx == "trusted" else TENANT_POD)
    conn = entry.get("conn") or (RESOLVER if kind == "dns" else None)
    if conn is not None:
        obj["connection"] = {"src": "10.0.3.7", "sport": 40000, **conn}
    for fam in details.BY_FAMILY:
        if fam in entry:
            obj[fam] = entry[fam]
    if "repeat" in entry:
        obj["repeat"] = entry["repeat"]
    return obj


def events_of(entry: dict[str, Any], time: float = 0.0) -> list[Event]:
    """The recorded events a corpus line stands for: one, or a `repeat` sequence."""
    return example_events(_recorded(entry, time))


def event_of(entry: dict[str, Any]) -> Event:
    """The (first) recorded event a corpus line stands for."""
    return event_from_json({k: v for k, v in _recorded(entry, 0.0).items() if k != "repeat"})


def load(paths: tuple[Path, ...] = CORPORA) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The attack and benign entries of the corpora."""
    attacks: list[dict[str, Any]] = []
    benign: list[dict[str, Any]] = []
    for path in paths:
        data = yaml.safe_load(path.read_text())
        attacks += data["attacks"]
        benign += data["benign"]
    return attacks, benign


def replay(rules: RuleSet | None = None, paths: tuple[Path, ...] = CORPORA) -> list[Line]:
    """Every corpus line judged by `rules` (the bundled rules by default), each line
    LINE_GAP seconds after the one before so that no window spans two lines."""
    rs = rules if rules is not None else loader.load([loader.BUNDLED])
    attacks, benign = load(paths)
    lines = []
    for i, entry in enumerate(attacks + benign):
        line = Line(entry, events_of(entry, i * LINE_GAP))
        for ev in line.events:
            line.matches += rs.evaluate(ev)
        lines.append(line)
    return lines


def _ratio(group: list[Line]) -> str:
    return f"{sum(bool(ln.matches) for ln in group)}/{len(group)}" if group else "-"


def table(lines: list[Line]) -> str:
    """The per-technique detection table (markdown) and the benign summary."""
    by_tech: dict[tuple[str, str], list[Line]] = defaultdict(list)
    for ln in lines:
        if ln.expect != "benign":
            by_tech[(ln.entry["tactic"], ln.entry["attack"])].append(ln)
    out = ["| tactic | technique | command lines detected | sensor events detected | rules | "
           "blind on exec (needs) |", "|---|---|---|---|---|---|"]
    for (tactic, tech), group in sorted(by_tech.items(),
                                        key=lambda kv: (TACTICS.index(kv[0][0]), kv[0][1])):
        rules = sorted({m.rule.id for ln in group for m in ln.matches})
        needs = sorted({str(ln.entry.get("needs")) for ln in group if not ln.matches})
        out.append(f"| {tactic} | {tech} | {_ratio([ln for ln in group if not ln.sensor])} | "
                   f"{_ratio([ln for ln in group if ln.sensor])} | {', '.join(rules)} | "
                   f"{', '.join(needs) or '-'} |")
    out += ["", "| tactic | command lines detected | sensor events detected | "
                "command lines blind on exec |", "|---|---|---|---|"]
    per: dict[str, list[Line]] = defaultdict(list)
    for ln in lines:
        if ln.expect != "benign":
            per[ln.entry["tactic"]].append(ln)
    for tactic in TACTICS:
        if tactic in per:
            group = per[tactic]
            blind = sum(ln.expect == "blind" for ln in group)
            out.append(f"| {tactic} | {_ratio([ln for ln in group if not ln.sensor])} | "
                       f"{_ratio([ln for ln in group if ln.sensor])} | {blind} |")
    attacks = [ln for ln in lines if ln.expect != "benign"]
    benign = [ln for ln in lines if ln.expect == "benign"]
    quiet = [ln for ln in benign if not ln.loud]
    silent = [ln for ln in benign if not ln.matches]
    out += ["", f"Attack lines detected: {_ratio(attacks)} (command lines "
                f"{_ratio([ln for ln in attacks if not ln.sensor])}, sensor events "
                f"{_ratio([ln for ln in attacks if ln.sensor])}). Benign lines: {len(benign)} "
                f"({sum(ln.sensor for ln in benign)} sensor events); {len(quiet)} with no kill "
                f"and no high/critical finding, {len(silent)} with no finding at all (the "
                f"others get a low or medium report)."]
    return "\n".join(out)


if __name__ == "__main__":
    print(table(replay()))
