"""Decisions (pure): mode precedence, report vs kill, and what is never acted on."""

from __future__ import annotations

import pytest

from agent.decide import Protection, decide
from agent.engine.ruleset import Match
from agent.model import Event, Process


def _match(rules_from, action: str = "kill", mode: str | None = None, **proc) -> Match:
    mode_line = f"\n    mode: {mode}" if mode else ""
    rs = rules_from(f"rules:\n  - id: r\n    action: {action}{mode_line}\n"
                    "    match: {proc.pid: {exists: true}}\n")
    p = Process(**{"pid": 4242, "ppid": 100, "starttime": 1, "comm": "xmrig", **proc})
    ev = Event("exec", 0.0, p)
    [m] = rs.evaluate(ev)
    return m


@pytest.mark.parametrize("proc,why", [
    ({"pid": 1}, "pid 1"),
    ({"pid": 77, "ppid": 2, "kthread": True}, "kernel thread"),
    ({"pid": 555}, "the agent or its ancestor"),
    ({"comm": "kubelet"}, "protected name kubelet"),
])
def test_protected_processes_are_refused_even_in_enforce(rules_from, proc, why):
    prot = Protection(own=frozenset({(555, 1, 0, 0)}), names=frozenset({"kubelet"}))
    d = decide(_match(rules_from, **proc), "enforce", prot)
    assert (d.outcome, d.reason) == ("protected", why)


def test_mode_precedence_and_read_only_commands(rules_from):
    prot = Protection()
    assert decide(_match(rules_from), "audit", prot).outcome == "would_kill"
    assert decide(_match(rules_from), "enforce", prot).outcome == "kill"
    assert decide(_match(rules_from, mode="audit"), "enforce", prot).outcome == "would_kill"
    assert decide(_match(rules_from, mode="enforce"), "audit", prot).outcome == "kill"
    assert decide(_match(rules_from), "enforce", prot, can_act=False).outcome == "would_kill"
    assert decide(_match(rules_from, action="report"), "enforce", prot).outcome == "reported"


def test_a_protected_name_in_a_container_or_workspace_is_not_protected():
    """A tenant cannot opt out of enforcement by naming its miner sshd."""
    from agent.decide import Protection
    from agent.model import Event, Process

    prot = Protection()
    host = Process(pid=500, ppid=1, starttime=1, comm="sshd", exe="/usr/sbin/sshd")
    assert prot.reason(Event("exec", 0.0, host)) == "protected name sshd"
    boxed = Process(pid=501, ppid=1, starttime=1, comm="sshd", exe="/tmp/sshd",
                    container_id="ab" * 32)
    assert prot.reason(Event("exec", 0.0, boxed)) == ""
    assert prot.reason(Event("exec", 0.0, host, workspace="ws-1")) == ""


AGENT = Process(pid=555, ppid=400, starttime=9000, comm="nodewarden", exe="/usr/bin/python3",
                exe_dev=64769, exe_ino=1111)
LAUNCHER = Process(pid=400, ppid=1, starttime=8000, comm="sh", exe="/usr/bin/dash",
                   exe_dev=64769, exe_ino=2222)


@pytest.mark.parametrize("proc,protected", [
    (AGENT, True),
    (LAUNCHER, True),
    # the pid of the agent's exited launcher, recycled by a tenant's fork: another start time
    (Process(pid=400, ppid=1, starttime=123456, comm="sh", exe="/usr/bin/dash",
             exe_dev=64769, exe_ino=2222), False),
    # the launcher exec'd a miner after starting the agent: same pid and start time, another
    # executable (`sh -c 'nodewarden run & exec ./miner'`)
    (Process(pid=400, ppid=1, starttime=8000, comm="miner", exe="/home/t/miner",
             exe_dev=64769, exe_ino=3333), False),
    # the same program on another device with the same inode number is another file
    (Process(pid=400, ppid=1, starttime=8000, comm="sh", exe="/usr/bin/dash",
             exe_dev=2049, exe_ino=2222), False),
    # reparented after its parent exited: still the same instance and program
    (Process(pid=400, ppid=77, starttime=8000, comm="sh", exe="/usr/bin/dash",
             exe_dev=64769, exe_ino=2222), True),
])
def test_the_agent_and_its_ancestors_are_protected_as_instances_not_pids(proc, protected):
    prot = Protection.of([AGENT, LAUNCHER], names=())
    why = prot.reason(Event("scan", 0.0, proc))
    assert why == ("the agent or its ancestor" if protected else "")
