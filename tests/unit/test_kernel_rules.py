"""engine/kernel.py: which rules the kernel enforces itself, and what its maps will hold.

The kernel kills at exec on names (the 15-byte comm) and full paths, and refuses connects
on destination networks and ports; everything else stays in userspace. These tests load
rules as a user writes them and assert what the kernel would be given.
"""

from __future__ import annotations

import ipaddress

import pytest

from agent.engine.kernel import (
    MAX_KERNEL_RULES,
    connect_slots,
    exec_slots,
    kernel_connect_rules,
    kernel_rules,
)
from agent.engine.ruleset import RuleSet


def _rule(rules_from, match: str, action: str = "kill", extra: str = ""):  # type: ignore[no-untyped-def]
    """The one rule of a file with the list `miners` and the macro `is-miner`."""
    lines = ["lists:", "  miners: [xmrig, minerd]", "macros:", "  is-miner: {proc.name: $miners}",
             "rules:", "  - id: r", f"    action: {action}", f"    match: {match}"]
    if extra:
        lines.append(f"    {extra}")
    rs: RuleSet = rules_from("\n".join(lines) + "\n")
    [rule] = rs.rules
    return rule


@pytest.mark.parametrize("match,names,paths", [
    ("{proc.name: xmrig}", {"xmrig"}, set()),
    ("{proc.name: $miners}", {"xmrig", "minerd"}, set()),
    ("{proc.exe_name: {in: [minerd]}}", {"minerd"}, set()),
    ("{proc.exe: /opt/x/miner}", set(), {"/opt/x/miner"}),
    ("{macro: is-miner}", {"xmrig", "minerd"}, set()),
    # names of 15 bytes or more stay in userspace: a 15-byte comm may be cut from them
    ("{proc.name: [xmrig, cpuminer-avx512, a-very-long-miner]}", {"xmrig"}, set()),
    # an `any` sends the branches the kernel can test; userspace still judges the rest
    ("{any: [{proc.name: xmrig}, {proc.args: {contains: [stratum]}}]}", {"xmrig"}, set()),
    ("{any: [{proc.name: xmrig}, {proc.exe: /usr/local/bin/minerd}]}", {"xmrig"},
     {"/usr/local/bin/minerd"}),
])
def test_names_and_paths_the_kernel_kills_on(rules_from, match, names, paths):
    rule = _rule(rules_from, match)
    assert rule.kernel is not None
    assert (rule.kernel.names, rule.kernel.paths) == (names, paths)


@pytest.mark.parametrize("match,action,extra", [
    ("{proc.name: {regex: 'xm.*g'}}", "kill", ""),
    ("{proc.exe: {prefix: /tmp/}}", "kill", ""),
    ("{proc.args: {contains: [stratum+tcp]}}", "kill", ""),
    ("{proc.argv0: xmrig}", "kill", ""),
    ("{proc.name: [cpuminer-avx512]}", "kill", ""),             # only long names
    ("{proc.name: xmrig, proc.uid: 0}", "kill", ""),            # a second test
    ("{not: {proc.name: xmrig}}", "kill", ""),
    ("{proc.name: xmrig}", "report", ""),                       # the kernel only kills
    ("{proc.name: xmrig}", "kill-workspace", ""),
    ("{proc.name: xmrig}", "kill", "except: [{workspace.id: ws-1}]"),
    ("{proc.name: xmrig}", "kill", "on: [scan]"),               # not at exec
])
def test_rules_the_kernel_leaves_to_userspace(rules_from, match, action, extra):
    rule = _rule(rules_from, match, action, extra)
    assert rule.kernel is None
    assert kernel_rules([rule]) == []


def test_what_the_kernel_kills_follows_each_rules_mode_and_spares_protected_names(rules_from):
    rs = rules_from("""
        rules:
          - {id: global, action: kill, match: {proc.name: [xmrig, sshd]}}
          - {id: audited, action: kill, mode: audit, match: {proc.name: minerd}}
          - {id: enforced, action: kill, mode: enforce, match: {proc.exe: /opt/cpuminer}}
          - {id: disabled, action: kill, enabled: false, match: {proc.name: nbminer}}
          - {id: reported, match: {proc.name: t-rex}}
    """)
    audit = exec_slots(rs.rules, "audit", {"sshd"})
    assert [(s.rule.id, s.names, s.paths, s.enforce) for s in audit] == [
        ("global", {"xmrig"}, set(), False),
        ("audited", {"minerd"}, set(), False),
        ("enforced", set(), {"/opt/cpuminer"}, True),
    ]
    enforce = exec_slots(rs.rules, "enforce")
    assert [(s.rule.id, s.enforce) for s in enforce] == [
        ("global", True), ("audited", False), ("enforced", True)]
    assert enforce[0].names == {"xmrig", "sshd"}
    # the rule keeps its names: protection is applied to the slot, not the rule
    assert rs.rules[0].kernel.names == {"xmrig", "sshd"}


def test_at_most_max_kernel_rules_go_to_the_kernel_the_first_in_file_order(rules_from):
    rules = "\n".join(f"  - {{id: r{i}, action: kill, match: {{proc.name: m{i}}}}}"
                      for i in range(MAX_KERNEL_RULES + 3))
    rs = rules_from("rules:\n" + rules + "\n")
    slots = exec_slots(rs.rules, "enforce")
    assert [s.rule.id for s in slots] == [f"r{i}" for i in range(MAX_KERNEL_RULES)]
    assert len(rs.rules) == MAX_KERNEL_RULES + 3  # the rest are still judged in userspace


def _v4(net: str) -> tuple[int, bytes]:
    n = ipaddress.ip_network(net)
    return 96 + n.prefixlen, ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff"
                                                   + n.network_address.packed).packed


def test_connect_rules_of_networks_and_ports_go_to_the_kernel(rules_from):
    rs = rules_from("""
        rules:
          - id: metadata
            action: kill
            on: connect
            match: {conn.dst: {cidr: [169.254.169.254/32, fd00:ec2::254/128]}}
          - id: pool-ports
            action: kill
            mode: audit
            on: connect
            match: {all: [{conn.dport: {ports: [3333, "14444-14446"]}},
                          {conn.direction: outbound}]}
    """)
    metadata, pool = rs.rules
    assert metadata.kernel_connect is not None and pool.kernel_connect is not None
    assert metadata.kernel_connect.cidrs == [
        _v4("169.254.169.254/32"),
        (128, ipaddress.IPv6Address("fd00:ec2::254").packed)]
    assert (metadata.kernel_connect.need_net, metadata.kernel_connect.need_ports) == (True, False)
    assert pool.kernel_connect.ports == {3333, 14444, 14445, 14446}
    assert (pool.kernel_connect.need_net, pool.kernel_connect.need_ports) == (False, True)
    slots = connect_slots(rs.rules, "enforce")
    assert [(s.rule.id, s.enforce) for s in slots] == [("metadata", True), ("pool-ports", False)]


@pytest.mark.parametrize("match,extra", [
    ("{conn.dst: 169.254.169.254, proc.name: curl}", ""),       # a process test too
    ("{any: [{conn.dport: 3333}, {conn.dport: 4444}]}", ""),
    ("{conn.direction: inbound, conn.dport: 22}", ""),
    ("{conn.dport: {ports: ['1-5000']}}", ""),                   # too many ports for the map
    ("{conn.dport: 3333}", "window: {seconds: 10, threshold: 5}"),
    ("{conn.dport: 3333}", "on: [connect, accept]"),            # accept is not refused
    ("{conn.dport: 3333}", ""),              # without `on`, a conn.* rule is on accept too
])
def test_connect_rules_the_kernel_leaves_to_userspace(rules_from, match, extra):
    rule = _rule(rules_from, match, "kill", extra)
    assert rule.kernel_connect is None
    assert kernel_connect_rules([rule]) == []
