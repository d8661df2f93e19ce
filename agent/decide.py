"""Matches to decisions (pure): what should happen, under which mode, and why not.

The global mode is audit unless the user says enforce; a rule's own `mode` overrides it.
Protected processes (pid 1, kernel threads, the agent and its ancestors, configured names)
are never acted on, whatever the rule says. The agent and its ancestors are protected as the
process instances running the programs they ran when the agent started, never by pid alone:
a pid is recycled (a tenant can cycle through all of them in seconds) and a launcher can exec
something else after starting the agent.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from agent.engine.ruleset import Match
from agent.model import Event, InstanceKey, Process

DEFAULT_PROTECTED = ("systemd", "init", "kubelet", "containerd", "containerd-shim",
                     "containerd-shim-runc-v2", "dockerd", "crio", "conmon", "runc", "sshd",
                     "nodewarden")


@dataclass(frozen=True)
class Protection:
    """What must never be signalled: our own processes (the agent and its ancestors, each as
    (pid, start time, executable device, inode)) and names."""

    own: frozenset[InstanceKey] = frozenset()
    names: frozenset[str] = frozenset(DEFAULT_PROTECTED)

    @classmethod
    def of(cls, own: Collection[Process], names: Collection[str] = DEFAULT_PROTECTED,
           ) -> Protection:
        """Protection of these processes as they are now (read at the agent's start)."""
        return cls(frozenset(p.instance_key for p in own), frozenset(names))

    def reason(self, ev: Event) -> str:
        """Why the process of `ev` is protected, or "" when it is not."""
        p = ev.process
        if p.pid <= 1:
            return "pid 1"
        if p.kthread or p.ppid == 2 or p.pid == 2:
            return "kernel thread"
        if p.instance_key in self.own:
            return "the agent or its ancestor"
        # names protect the node's own daemons, not what a tenant calls its binary: a
        # process in a container or workspace cannot opt out of enforcement by a name
        if ((p.comm in self.names or p.exe_name in self.names)
                and not p.container_id and not ev.workspace):
            return f"protected name {p.exe_name or p.comm}"
        return ""


@dataclass(frozen=True)
class Decision:
    """The verdict on one match: the effective mode and the outcome to report.

    `outcome` is final for report, protected and would_kill; "kill" means an enforcer
    must act and replace it with killed, gone or failed.
    """

    match: Match
    mode: str
    outcome: str
    reason: str = ""


def decide(match: Match, global_mode: str, protection: Protection, can_act: bool = True,
           ) -> Decision:
    """Decide one match. `can_act` is False for read-only commands (scan, replay)."""
    rule = match.rule
    mode = rule.mode or global_mode
    if rule.action == "report":
        return Decision(match, mode, "reported")
    why = protection.reason(match.event)
    if why:
        return Decision(match, mode, "protected", why)
    if mode != "enforce" or not can_act:
        return Decision(match, mode, "would_kill")
    return Decision(match, mode, "kill")


def decide_all(matches: Collection[Match], global_mode: str, protection: Protection,
               can_act: bool = True) -> list[Decision]:
    """`decide` for each match, in order."""
    return [decide(m, global_mode, protection, can_act) for m in matches]
