"""Issue 11's corpus (tests/corpus/exec-corpus.yaml and sensor-corpus.yaml) replayed through
the shipped rules and the real engine: every attack line marked `detect` gets a finding,
every command line the exec path cannot see (`blind`, needing the file/mount/DNS sensors)
gets none so the table in rules/README.md stays honest, the same attacks as the sensors see
them get one, and no benign CI, ops or developer line gets a kill or a high/critical
finding."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from agent import details
from agent.engine import loader
from agent.engine.ruleset import Match
from agent.model import RULE_KINDS, EventKind
from tests.corpus.replay import EXEC_KINDS, Line, event_of, load, replay, table

README = Path(__file__).resolve().parents[2] / "rules" / "README.md"


@pytest.fixture(scope="module")
def lines() -> list[Line]:
    return replay()


def _ids(lines: list[Line], expect: str) -> list[str]:
    return [ln.describe() for ln in lines if ln.expect == expect]


def test_the_corpus_is_large_enough_and_every_attack_names_its_technique() -> None:
    attacks, benign = load()
    assert len(attacks) >= 60 and len(benign) >= 40
    for entry in attacks:
        assert re.fullmatch(r"T\d{4}(?:\.\d{3})?", entry["attack"]), entry
        assert entry.get("expect", "detect") in ("detect", "blind"), entry
        if entry.get("expect") == "blind":
            assert entry.get("needs") in ("file", "mount", "dns", "ptrace", "udp"), entry


def test_every_sensor_kind_has_attack_and_benign_lines() -> None:
    """Each issue 11 kind is in the corpus both ways, with the detail its kind carries."""
    attacks, benign = load()
    sensor_kinds = {str(k) for k in RULE_KINDS} - set(EXEC_KINDS) - {"close", "exit"}
    for entries in (attacks, benign):
        kinds = {e.get("kind", "exec") for e in entries}
        assert sensor_kinds <= kinds, sorted(sensor_kinds - kinds)
    for entry in attacks + benign:
        fams = [f for f in details.BY_FAMILY if f in entry]
        kind = entry.get("kind", "exec")
        if kind in (*EXEC_KINDS, "udp"):
            assert fams == [], entry
        else:
            assert len(fams) == 1 and EventKind(kind) in details.BY_FAMILY[fams[0]].kinds, entry


def test_every_attack_line_marked_detect_gets_a_finding(lines: list[Line]) -> None:
    missed = [ln.describe() for ln in lines if ln.expect == "detect" and not ln.matches]
    assert missed == []


def test_attack_lines_the_exec_path_cannot_see_get_no_finding(lines: list[Line]) -> None:
    seen = {ln.describe(): [m.rule.id for m in ln.matches]
            for ln in lines if ln.expect == "blind" and ln.matches}
    assert seen == {}, "now detected: mark these lines `detect`"


def test_no_benign_line_gets_a_kill_or_a_high_or_critical_finding(lines: list[Line]) -> None:
    loud = {ln.describe(): ln.loud for ln in lines if ln.expect == "benign" and ln.loud}
    assert loud == {}


def _judge(entry: dict[str, object]) -> list[Match]:
    return loader.load([loader.BUNDLED]).evaluate(event_of(entry))


def test_context_decides_a_look_alike_not_the_command_alone() -> None:
    """The same mount of a block device: a kill in a workspace, a report in a tenant's
    container, nothing in kube-system (a CSI driver) or on the node (an admin)."""
    found = {ctx: [(m.rule.id, m.rule.action) for m in
                   _judge({"ctx": ctx, "uid": 0, "cmd": "mount /dev/nvme1n1 /mnt"})]
             for ctx in ("ws", "container", "trusted", "host")}
    assert found == {"ws": [("mount-host-device-in-workspace", "kill")],
                     "container": [("mount-host-device-in-container", "report")],
                     "trusted": [], "host": []}


def _sensor_event(ctx: str, **extra: object) -> dict[str, object]:
    return {"ctx": ctx, "kind": "file", "exe": "/usr/bin/python3.11", "comm": "python3",
            "cmd": ["python3", "persist.py"], "uid": 0, **extra}


def test_context_decides_a_cron_file_write_too() -> None:
    """The same cron file written by a program: high in a workspace or a tenant's pod,
    nothing from a maintenance pod, medium on the node, nothing under a package manager."""
    write = {"file": {"path": "/etc/cron.d/sysupd", "op": "create"}}
    found = {ctx: [(m.rule.id, m.rule.severity) for m in _judge(_sensor_event(ctx, **write))]
             for ctx in ("ws", "container", "trusted", "host")}
    assert found == {"ws": [("cron-file-written", "high")],
                     "container": [("cron-file-written", "high")],
                     "trusted": [], "host": [("cron-file-written-on-host", "medium")]}
    dpkg = _sensor_event("host", parents=[{"exe": "/usr/bin/dpkg", "cmdline": ["dpkg", "-i"]}],
                         **write)
    assert _judge(dpkg) == []


def test_a_debugger_is_trusted_on_its_own_users_processes_only() -> None:
    def attach(target_uid: int) -> list[str]:
        return [m.rule.id for m in _judge({
            "ctx": "ws", "kind": "ptrace", "cmd": "gdb -p 4242",
            "ptrace": {"request": "attach", "target_pid": 4242, "target_uid": target_uid}})]

    assert attach(1000) == []
    assert attach(0) == ["ptrace-attach-other-user"]


def test_the_mining_pool_dns_suffixes_are_the_pool_domains() -> None:
    """dns-udp.yaml matches pool names by suffix: its list must follow mining-pools.yaml's."""
    domains = yaml.safe_load((README.parent / "mining-pools.yaml").read_text())["lists"]
    suffixes = yaml.safe_load((README.parent / "dns-udp.yaml").read_text())["lists"]
    assert suffixes["mining_pool_dns_suffixes"] == [
        "." + d for d in domains["mining_pool_domains"]]


def test_the_readme_holds_the_current_detection_table(lines: list[Line]) -> None:
    """rules/README.md shows what `python -m tests.corpus.replay` prints today."""
    assert table(lines) in README.read_text()


def test_the_mining_pool_gate_lets_every_pool_domain_through() -> None:
    """crypto-miner-pool-host tests a few substrings before its regex: each pool domain
    must contain one of them, or the rule would never see it."""
    data = yaml.safe_load((README.parent / "mining-pools.yaml").read_text())["lists"]
    missed = [d for d in data["mining_pool_domains"]
              if not any(g in d for g in data["mining_pool_gate"])]
    assert missed == []
