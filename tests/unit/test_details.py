"""Event details (agent/details.py): what a file, ptrace, mount, namespace, module, bpf or DNS
event is about, as rules test it, as findings and recordings carry it, and as the observer
attaches it to the process that made the call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent import details
from agent.codec import EventFormatError, event_from_json, event_from_line, event_line
from agent.decide import Protection, decide
from agent.engine.ruleset import naive_evaluate
from agent.errors import RuleError
from agent.model import EventKind
from agent.sinks.findings import Finding
from agent.sources import kevents
from agent.sources.procfs import ProcFS

FIXTURE = Path(__file__).parent.parent / "fixtures" / "proc"

SHADOW = """
rules:
  - id: shadow-read
    severity: high
    match:
      file.path: {in: [/etc/shadow, /etc/gshadow]}
      file.op: read
    except:
      - proc.exe: {in: [/usr/sbin/unix_chkpwd]}
    message: "{proc.exe} read {file.path}"
  - id: executable-in-tmp
    on: file
    match: {file.made_executable: true, file.path: {prefix: /tmp/}}
  - id: mount-host-disk
    match: {mount.source: {prefix: /dev/sd}}
  - id: pool-name
    match: {dns.name: {suffix: .minexmr.com}}
"""


def _ev(kind: str, family: str, detail: dict, **more) -> dict:
    return {"kind": kind, "process": {"pid": 42, "exe": "/usr/bin/python3"}, family: detail,
            **more}


def test_rules_test_detail_fields_and_are_on_their_family_kinds_without_on(rules_from):
    rs = rules_from(SHADOW)
    kinds = {r.id: set(r.kinds) for r in rs.rules}
    assert kinds["shadow-read"] == {EventKind.FILE}
    assert kinds["mount-host-disk"] == {EventKind.MOUNT}
    assert kinds["pool-name"] == {EventKind.DNS}

    def fired(obj: dict) -> list[str]:
        ev = event_from_json(obj)
        got = [m.rule.id for m in rs.evaluate(ev)]
        assert got == [m.rule.id for m in naive_evaluate(rs.rules, ev)]  # compiled == naive
        return got

    assert fired(_ev("file", "file", {"path": "/etc/shadow", "op": "read"})) == ["shadow-read"]
    assert fired(_ev("file", "file", {"path": "/etc/shadow", "op": "write"})) == []
    assert fired(_ev("file", "file", {"path": "/etc/shadow", "op": "read"},
                     process={"pid": 1, "exe": "/usr/sbin/unix_chkpwd"})) == []
    assert fired(_ev("file", "file", {"path": "/tmp/x", "op": "chmod", "mode": 0o755})) == [
        "executable-in-tmp"]
    assert fired(_ev("file", "file", {"path": "/tmp/x", "op": "chmod", "mode": 0o644})) == []
    assert fired(_ev("mount", "mount", {"source": "/dev/sda1", "target": "/mnt"})) == [
        "mount-host-disk"]
    assert fired(_ev("dns", "dns", {"name": "pool.minexmr.com", "qtype": "A"},
                     connection={"dst": "10.0.0.53", "dport": 53})) == ["pool-name"]
    # an exec never has a file: the rule is not even asked
    assert fired({"kind": "exec", "process": {"exe": "/usr/bin/cat",
                                              "cmdline": ["cat", "/etc/shadow"]}}) == []


def test_a_rule_on_kinds_that_never_carry_its_fields_is_a_load_error(rules_from):
    with pytest.raises(RuleError) as e:
        rules_from("rules:\n  - id: r\n    on: [exec, scan]\n"
                   "    match: {mount.target: /}\n")
    assert ("r0.yaml:3: rule 'r': the rule tests mount.* fields, which only mount events "
            "have, but is on exec, scan: add mount to 'on'") in str(e.value)


@pytest.mark.parametrize("detail", [
    details.FileOp("/etc/cron.d/x", "create", 0o1101, mode=0o644),
    details.FileOp("/var/log/a\udcff", "rename", dest="/var/log/b"),
    details.Ptrace("attach", 17, "/usr/bin/bash", 1000),
    details.PrivChange("setresuid", 0),
    details.Memfd("payload", 1),
    details.Mount("/dev/sda1", "/host", "ext4", 1, ("rdonly",)),
    details.Namespaces("setns", ("mnt", "pid"), True, 1),
    details.ModuleLoad("finit_module", "/tmp/rk.ko", "rk"),
    details.BpfLoad("prog_load", "kprobe", "hide"),
    details.Dns("pool.example", "TXT"),
])
def test_a_detail_round_trips_through_a_recorded_line(detail):
    kind = next(iter(detail.kinds))
    ev = event_from_json({"kind": str(kind), "process": {"pid": 7, "exe": "/bin/x"}})
    ev.detail = detail
    line = event_line(ev)
    assert json.loads(line)[detail.family] == detail.to_json()
    back = event_from_line(line)
    assert back.detail == detail and back.kind == kind


@pytest.mark.parametrize("obj, message", [
    ({"file": {"path": 3}}, "'file.path' must be a string, not 3"),
    ({"file": {"pth": "/x"}}, "unknown key 'pth' in file"),
    ({"ns": {"types": "mnt"}}, "'ns.types' must be a list of strings"),
    ({"ptrace": {"target_pid": True}}, "'ptrace.target_pid' must be an integer"),
    ({"file": {"path": "/x"}, "dns": {"name": "a"}}, "one detail, not file and dns"),
])
def test_a_bad_detail_is_refused_naming_the_key(obj, message):
    with pytest.raises(EventFormatError, match=message):
        event_from_json({"kind": "file", **obj})


def test_a_finding_carries_the_detail_under_its_family(rules_from):
    rs = rules_from(SHADOW)
    ev = event_from_json(_ev("file", "file", {"path": "/etc/shadow", "op": "read",
                                               "flags": 0}))
    (match,) = rs.evaluate(ev)
    f = Finding.of(decide(match, "audit", Protection()), "node-1", now=0.0).to_json()
    assert f["source"] == "file"
    assert f["file"] == {"path": "/etc/shadow", "op": "read", "flags": 0, "dest": "",
                         "mode": 0}
    assert f["message"] == "/usr/bin/python3 read /etc/shadow"


class _NeedsProc:
    """A detail that completes itself from procfs while the caller lives."""

    family = "file"

    def __init__(self) -> None:
        self.asked: list[int] = []

    def resolve(self, pid: int, procfs: ProcFS) -> details.FileOp:
        self.asked.append(pid)
        return details.FileOp(f"{procfs.root}/{pid}/cwd/x", "read")


def test_the_observer_attaches_a_records_detail_to_the_calling_process(observer, monkeypatch):
    monkeypatch.setitem(kevents.EVENT_KINDS, 99, EventKind.FILE)
    monkeypatch.setitem(kevents.EVENT_KINDS, 98, EventKind.DNS)
    ws_pid = next(pid for pid in observer.tree.procs if observer.tree.workspace_of(pid))
    op = details.FileOp("/etc/shadow", "read")
    ev = observer.handle(kevents.raw_detail(12_000_000_000, 99, ws_pid, 1000, "python3", op))
    assert ev is not None and ev.kind == "file" and ev.detail == op
    assert ev.process.pid == ws_pid and ev.workspace == observer.tree.workspace_of(ws_pid)
    assert ev.time == pytest.approx(1002.0) and ev.connection is None

    needs = _NeedsProc()
    ev = observer.handle(kevents.raw_detail(1, 99, ws_pid, 0, "x", needs))
    assert needs.asked == [ws_pid] and ev is not None and ev.detail.path.endswith("/cwd/x")

    q = details.Dns("pool.example", "A")
    ev = observer.handle(kevents.raw_detail(1, 98, ws_pid, 0, "dig", q, family=kevents.AF_INET,
                                            sport=5353, dport=53, saddr="10.0.0.2",
                                            daddr="10.0.0.53"))
    assert ev is not None and ev.kind == "dns" and ev.detail == q
    assert ev.connection is not None
    assert (ev.connection.dst, ev.connection.dport) == ("10.0.0.53", 53)

    # a gone process still gets its event, from what the record says
    ev = observer.handle(kevents.raw_detail(1, 99, 999_999, 1000, "ghost", op))
    assert ev is not None and ev.process.pid == 999_999 and ev.process.comm == "ghost"
    # a record of a kind nobody maps is dropped, not a crash
    assert observer.handle(kevents.raw_detail(1, 97, ws_pid, 0, "x", op)) is None
