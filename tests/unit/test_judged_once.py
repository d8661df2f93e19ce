"""A process is judged once per program: a scan that read it after its exec leaves the exec
record that arrives late (behind the scan) nothing to report; a later exec of the same
binary (same identity, new arguments) is judged again."""

from __future__ import annotations

from agent.model import Event, Process
from agent.pipeline import Judge

RULE = "rules:\n  - id: miner\n    severity: high\n    match: {proc.exe_name: nwminer}\n"


def _ev(kind: str, ktime_ns: int) -> Event:
    p = Process(pid=4242, ppid=1, starttime=777, comm="nwminer", exe="/tmp/nwminer",
                cmdline=("/tmp/nwminer",), exe_dev=1, exe_ino=2)
    return Event(kind, 0.0, p, ktime_ns=ktime_ns)


def test_an_exec_record_older_than_the_scan_that_judged_it_is_not_reported_again(rules_from):
    judge = Judge(rules_from(RULE))
    assert len(judge.judge(_ev("scan", ktime_ns=2_000))) == 1
    assert judge.judge(_ev("exec", ktime_ns=1_500)) == []      # exec'd before the scan read it
    assert judge.judge(_ev("scan", ktime_ns=3_000)) == []      # and no scan reports it again


def test_an_exec_after_the_scan_is_a_new_program_and_judged(rules_from):
    judge = Judge(rules_from(RULE))
    assert len(judge.judge(_ev("scan", ktime_ns=2_000))) == 1
    assert len(judge.judge(_ev("exec", ktime_ns=2_500))) == 1  # exec'd again after the read
    assert len(judge.judge(_ev("exec", ktime_ns=2_600))) == 1  # every exec record is judged


def test_an_exec_without_a_kernel_time_is_always_judged(rules_from):
    judge = Judge(rules_from(RULE))
    judge.judge(_ev("scan", ktime_ns=2_000))
    assert len(judge.judge(_ev("exec", ktime_ns=0))) == 1      # replay, recorded events


def test_matches_are_counted_by_rule_severity_and_mode_across_a_reload(rules_from):
    from agent.decide import Protection
    from agent.metrics import Metrics

    m = Metrics()

    def count(severity: str, mode: str) -> float:
        return m.registry.get_sample_value("nodewarden_rule_matches_total", {
            "rule": "miner", "severity": severity, "mode": mode}) or 0.0

    judge = Judge(rules_from(RULE), "audit", metrics=m)
    for t in (1, 2):
        judge.judge(_ev("exec", ktime_ns=t))
    assert count("high", "audit") == 2
    # a reload: the same rule id, another severity, enforce mode
    judge.use(rules_from(RULE.replace("high", "low")), "enforce", Protection())
    judge.judge(_ev("exec", ktime_ns=3))
    assert (count("high", "audit"), count("low", "enforce")) == (2, 1)
