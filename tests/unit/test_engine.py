"""The rule engine: operators, combinators, lists, macros, exceptions, index, windows."""

from __future__ import annotations

from typing import Any

import pytest

from agent.codec import event_from_json
from agent.engine.ruleset import naive_evaluate
from agent.errors import RuleError


def ev(**obj: Any):
    return event_from_json(obj)


def fired(rs, event) -> list[str]:
    return [m.rule.id for m in rs.evaluate(event)]


MINER = """
lists:
  miners: [xmrig, minerd]
rules:
  - id: miner
    severity: critical
    action: kill
    match:
      any:
        - proc.name: $miners
        - proc.exe_name: {in: $miners}
    message: "miner {proc.exe_name} in {workspace.id}"
"""


def test_miner_by_basename_not_by_substring(rules_from):
    rs = rules_from(MINER)
    assert fired(rs, ev(process={"exe": "/tmp/xmrig",
                                 "cmdline": ["./xmrig", "-o", "x"]})) == ["miner"]
    # the word appears in the command line, but the program is grep
    assert fired(rs, ev(process={"exe": "/usr/bin/grep",
                                 "cmdline": ["grep", "-r", "xmrig", "/var/log"]})) == []
    # renamed binary: comm is the new name, exe_name too
    assert fired(rs, ev(process={"exe": "/usr/bin/minerd"})) == ["miner"]


def test_message_renders_fields_and_dash_for_missing(rules_from):
    rs = rules_from(MINER)
    [m] = rs.evaluate(ev(process={"exe": "/tmp/xmrig"}))
    assert m.message == "miner xmrig in -"
    [m] = rs.evaluate(ev(process={"exe": "/tmp/xmrig"}, workspace={"id": "ws-9"}))
    assert m.message == "miner xmrig in ws-9"


def test_rule_is_indexed_by_name_and_index_agrees_with_naive_loop(rules_from):
    rs = rules_from(MINER + """
  - id: tmp-exec
    match: {proc.exe: {prefix: [/tmp/, /dev/shm/]}}
""")
    miner = next(r for r in rs.rules if r.id == "miner")
    assert miner.requirement == {"comm": frozenset({"xmrig", "minerd"}),
                                 "exe_name": frozenset({"xmrig", "minerd"})}
    tmp = next(r for r in rs.rules if r.id == "tmp-exec")
    assert tmp.requirement == {"exe_prefix": frozenset({"/tmp/", "/dev/shm/"})}
    # an exec of ls runs no rule at all; one from /tmp runs only the /tmp rule
    assert [r.id for r in rs.candidates(ev(process={"exe": "/bin/ls"}))] == []
    assert [r.id for r in rs.candidates(ev(process={"exe": "/tmp/a/ls"}))] == ["tmp-exec"]
    for e in (ev(process={"exe": "/tmp/xmrig"}), ev(process={"exe": "/bin/ls"}),
              ev(process={"exe": "/dev/shm/minerd"}), ev(process={"exe": "/tmp/ls"}),
              ev(process={"exe": "/tmpfoo/ls"}), ev(process={"exe": "/memfd:x (deleted)"}),
              ev(process={"comm": "xmrig"})):
        assert fired(rs, e) == [m.rule.id for m in naive_evaluate(rs.rules, e)]


def test_all_any_not_and_implicit_and(rules_from):
    rs = rules_from("""
rules:
  - id: r
    match:
      proc.name: {in: [bash, sh]}
      any:
        - proc.args: {equals: -i}
        - proc.args: {regex: "^/dev/(tcp|udp)/"}
      not: {parent.name: sshd}
""")
    assert fired(rs, ev(process={"exe": "/bin/bash", "cmdline": ["bash", "-i"]})) == ["r"]
    assert fired(rs, ev(process={"exe": "/bin/bash", "cmdline": ["bash", "-i"],
                                 "ancestors": [{"exe": "/usr/sbin/sshd"}]})) == []
    assert fired(rs, ev(process={"exe": "/bin/bash", "cmdline": ["bash", "-c", "ls"]})) == []
    assert fired(rs, ev(process={"exe": "/bin/zsh", "cmdline": ["zsh", "-i"]})) == []


@pytest.mark.parametrize("cond,proc,expected", [
    ({"proc.exe": {"prefix": "/tmp/"}}, {"exe": "/tmp/x"}, True),
    ({"proc.exe": {"prefix": "/tmp/"}}, {"exe": "/tmpfs/x"}, False),
    ({"proc.exe": {"suffix": [".sh", ".py"]}}, {"exe": "/a/b.py"}, True),
    ({"proc.cmdline": {"contains": "| sh"}},
     {"exe": "/bin/sh", "cmdline": "sh -c 'curl x | sh'"}, True),
    ({"proc.exe_name": {"glob": "python3*"}}, {"exe": "/usr/bin/python3.11"}, True),
    ({"proc.exe_name": {"glob": "python3*"}}, {"exe": "/usr/bin/python2"}, False),
    ({"proc.args": {"prefix": "stratum+tcp://"}},
     {"exe": "/x/y", "cmdline": ["y", "-o", "stratum+tcp://p:3333"]}, True),
    ({"proc.args": {"prefix": "stratum+tcp://"}},
     {"exe": "/x/y", "cmdline": ["y", "see stratum+tcp://"]}, False),
    ({"proc.uid": 0}, {"exe": "/x", "uid": 0}, True),
    ({"proc.uid": {"in": [0, 1000]}}, {"exe": "/x", "uid": 33}, False),
    ({"proc.argv0": "kworker"}, {"exe": "/x", "cmdline": ["/usr/bin/kworker", "a"]}, True),
    ({"ancestor.name": "sshd"},
     {"exe": "/x", "ancestors": [{"exe": "/bin/bash"}, {"exe": "/usr/sbin/sshd"}]}, True),
    ({"parent.name": "sshd"},
     {"exe": "/x", "ancestors": [{"exe": "/bin/bash"}, {"exe": "/usr/sbin/sshd"}]}, False),
    ({"parent.name": {"exists": False}}, {"exe": "/x"}, True),
    ({"workspace.id": {"exists": True}}, {"exe": "/x"}, False),
])
def test_operators_on_process_fields(rules_from, cond, proc, expected):
    import json
    rs = rules_from("rules:\n  - id: r\n    match: " + json.dumps(cond) + "\n")
    assert (fired(rs, ev(process=proc)) == ["r"]) is expected


@pytest.mark.parametrize("cond,conn,expected", [
    ({"conn.dst": {"cidr": ["10.0.0.0/8"]}}, {"dst": "10.1.2.3", "dport": 1}, True),
    ({"conn.dst": {"cidr": ["10.0.0.0/8"]}}, {"dst": "11.1.2.3", "dport": 1}, False),
    ({"conn.dst": {"cidr": ["10.0.0.0/8"]}}, {"dst": "::ffff:10.9.9.9", "dport": 1}, True),
    ({"conn.dst": {"cidr": ["fd00::/8"]}}, {"dst": "fd12::1", "dport": 1}, True),
    ({"conn.dst": {"cidr": ["fd00::/8"]}}, {"dst": "10.0.0.1", "dport": 1}, False),
    ({"conn.dst": "1.2.3.4"}, {"dst": "1.2.3.4", "dport": 1}, True),
    ({"conn.dport": {"ports": [3333, "14000-14999"]}}, {"dst": "1.1.1.1", "dport": 14444}, True),
    ({"conn.dport": {"ports": ["1-65535"]}}, {"dst": "1.1.1.1", "dport": 80}, True),
    ({"conn.dport": {"ports": [3333]}}, {"dst": "1.1.1.1", "dport": 3334}, False),
    ({"conn.direction": "inbound"}, {"dst": "1.1.1.1", "dport": 1, "direction": "inbound"}, True),
    ({"conn.family": "ipv6"}, {"dst": "::1", "dport": 1}, True),
])
def test_operators_on_connections(rules_from, cond, conn, expected):
    import json
    rs = rules_from("rules:\n  - id: r\n    match: " + json.dumps(cond) + "\n")
    assert rs.rules[0].kinds == ("connect", "accept")
    e = ev(kind="connect", process={"exe": "/x"}, connection=conn)
    assert (fired(rs, e) == ["r"]) is expected


def test_pod_fields_and_labels(rules_from):
    rs = rules_from("""
rules:
  - id: r
    match: {pod.namespace: team-a, pod.labels.app: {prefix: web}}
""")
    assert fired(rs, ev(process={"exe": "/x"},
                        pod={"namespace": "team-a", "labels": {"app": "web-1"}})) == ["r"]
    assert fired(rs, ev(process={"exe": "/x"}, pod={"namespace": "team-a", "labels": {}})) == []
    assert fired(rs, ev(process={"exe": "/x"})) == []


def test_exceptions_suppress(rules_from):
    rs = rules_from("""
rules:
  - id: tmp
    match: {proc.exe: {prefix: /tmp/}}
    except:
      - parent.exe: /usr/bin/make
      - workspace.id: trusted
""")
    assert fired(rs, ev(process={"exe": "/tmp/a"})) == ["tmp"]
    assert fired(rs, ev(process={"exe": "/tmp/a", "ancestors": [{"exe": "/usr/bin/make"}]})) == []
    assert fired(rs, ev(process={"exe": "/tmp/a"}, workspace={"id": "trusted"})) == []


def test_kinds_from_on_and_defaults(rules_from):
    rs = rules_from("""
macros:
  pool_port: {conn.dport: {in: [3333]}}
rules:
  - id: by-macro
    match: {macro: pool_port}
  - id: exit-only
    on: exit
    match: {proc.name: x}
""")
    by_id = {r.id: r for r in rs.rules}
    assert by_id["by-macro"].kinds == ("connect", "accept")
    assert by_id["exit-only"].kinds == ("exit",)
    assert fired(rs, ev(kind="exec", process={"exe": "/x"})) == []
    assert fired(rs, ev(kind="exit", process={"exe": "/x"})) == ["exit-only"]


def test_nested_lists_and_list_splicing(rules_from):
    rs = rules_from("""
lists:
  a: [one, two]
  b: [$a, three]
rules:
  - id: r
    match: {proc.name: {in: [$b, four]}}
""")
    for name in ("one", "three", "four"):
        assert fired(rs, ev(process={"exe": f"/bin/{name}"})) == ["r"]
    assert fired(rs, ev(process={"exe": "/bin/five"})) == []


def test_window_distinct_ports_fires_once_per_window(rules_from):
    rs = rules_from("""
rules:
  - id: scan
    on: connect
    match: {workspace.id: {exists: true}}
    window: {seconds: 10, threshold: 5, distinct: conn.dport, by: [workspace.id]}
""")

    def c(port, t, ws="w1"):
        return ev(kind="connect", time=t, process={"exe": "/x"}, workspace={"id": ws},
                  connection={"dst": "10.0.0.1", "dport": port})

    results = [fired(rs, c(p, 100 + p * 0.1)) for p in range(1, 20)]
    assert results.index(["scan"]) == 5  # the 6th distinct port crosses "more than 5"
    assert sum(1 for r in results if r) == 1  # silent for the rest of the window
    # same port many times: not distinct
    assert all(fired(rs, c(80, 300 + i * 0.1, "w2")) == [] for i in range(20))
    # ports spread wider than the window do not add up
    assert all(fired(rs, c(p, 500 + p * 11, "w3")) == [] for p in range(10))
    # after the window passes, the key can fire again
    assert any(fired(rs, c(p, 200 + p * 0.1)) for p in range(100, 110))


def test_window_count_without_distinct(rules_from):
    rs = rules_from("""
rules:
  - id: burst
    on: connect
    match: {conn.dport: 22}
    window: {seconds: 1, threshold: 3, by: [proc.pid]}
""")
    e = [ev(kind="connect", time=t, process={"exe": "/x", "pid": 7},
            connection={"dst": "1.1.1.1", "dport": 22}) for t in (0.0, 0.1, 0.2, 0.3)]
    assert [bool(fired(rs, x)) for x in e] == [False, False, False, True]


def test_window_state_is_bounded(rules_from):
    rs = rules_from("""
rules:
  - id: scan
    on: connect
    match: {conn.dport: {ports: ["1-65535"]}}
    window: {seconds: 1000, threshold: 5, distinct: conn.dport, by: [conn.src]}
""")
    w = rs.rules[0].window
    for i in range(30_000):
        rs.evaluate(ev(kind="connect", time=float(i), process={"exe": "/x"},
                       connection={"src": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                                   "dst": "1.1.1.1", "dport": 1 + i % 60000}))
    assert len(w._keys) <= 10_000
    assert all(len(s.seen) <= 6 for s in w._keys.values())


def test_overrides_change_shipped_rule_by_id(rules_from):
    rs = rules_from(MINER, """
overrides:
  - {id: miner, severity: low, mode: enforce, action: report}
""")
    r = rs.rules[0]
    assert (r.severity, r.mode, r.action) == ("low", "enforce", "report")
    rs = rules_from(MINER, "overrides:\n  - {id: miner, enabled: false}\n")
    assert fired(rs, ev(process={"exe": "/tmp/xmrig"})) == []


def test_user_file_uses_shipped_lists(rules_from):
    rs = rules_from(MINER, """
rules:
  - id: mine
    match: {parent.name: $miners}
""")
    assert fired(rs, ev(process={"exe": "/bin/sh",
                                 "ancestors": [{"exe": "/tmp/minerd"}]})) == ["mine"]


def test_disabled_rule_does_not_fire(rules_from):
    rs = rules_from("rules:\n  - {id: r, enabled: false, match: {proc.name: x}}\n")
    assert fired(rs, ev(process={"exe": "/x"})) == []
    assert len(rs) == 0 and len(rs.all_rules) == 1


def test_regex_is_re2_linear_on_hostile_input(rules_from):
    # (a+)+$ backtracks catastrophically in Python's re; RE2 answers at once
    rs = rules_from('rules:\n  - id: r\n    match: {proc.cmdline: {regex: "(a+)+$"}}\n')
    cmd = ["x", "a" * 50_000 + "!"]
    assert fired(rs, ev(process={"exe": "/x", "cmdline": cmd})) == []


def test_load_raises_with_all_problems(rules_from):
    with pytest.raises(RuleError) as exc:
        rules_from("rules:\n  - {id: a, match: {proc.nam: x}}\n"
                   "  - {id: b, match: {proc.exe: {regx: y}}}\n")
    assert len(exc.value.problems) == 2


@pytest.mark.parametrize("cmdline,argv0", [
    (["/usr/bin/python3", "-m", "x"], "python3"),
    (["sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups"], "sshd"),
    (["postgres: checkpointer "], "postgres"),
    ([], ""),
])
def test_argv0_is_the_program_even_for_rewritten_titles(cmdline, argv0):
    assert ev(process={"exe": "/x", "cmdline": cmdline}).process.argv0 == argv0


def test_proc_name_compares_with_the_15_byte_comm(rules_from):
    rs = rules_from("rules:\n  - id: r\n    match: {proc.name: {in: [phoenixminer-extra-long]}}\n")
    # the kernel's comm of that program is its first 15 bytes
    e = event_from_json({"process": {"exe": "/opt/phoenixminer-extra-long",
                                     "comm": "phoenixminer-ex"}})
    assert fired(rs, e) == ["r"]


def test_connection_test_in_except_makes_a_connection_rule(rules_from):
    rs = rules_from("rules:\n  - id: r\n    match: {proc.name: bash}\n"
                    "    except:\n      - conn.dst: {cidr: [127.0.0.0/8]}\n")
    assert rs.rules[0].kinds == ("connect", "accept")


def test_parent_name_index_and_mixed_hits_agree_with_naive_loop(rules_from):
    rs = rules_from("""
rules:
  - id: by-parent
    match: {parent.exe_name: {in: [nginx, httpd]}, proc.name: {in: [sh, bash]}}
  - id: by-name
    match: {proc.exe_name: bash}
  - id: any-exec
    match: {proc.uid: 0}
  - id: by-dir
    match: {proc.exe: {prefix: [/usr/bin/]}}
""")
    by_id = {r.id: r for r in rs.rules}
    assert by_id["by-parent"].requirement is not None
    events = [ev(process={"exe": "/usr/bin/bash", "uid": u, "ancestors": [{"exe": p}]})
              for u in (0, 1000) for p in ("/usr/sbin/nginx", "/usr/sbin/sshd")]
    events.append(ev(process={"exe": "/bin/sh"}))
    for e in events:
        assert fired(rs, e) == [m.rule.id for m in naive_evaluate(rs.rules, e)]
    assert fired(rs, events[0]) == ["by-parent", "by-name", "any-exec", "by-dir"]
