"""What each sink sends, built by pure functions: the finding's JSON form, the Slack Block Kit
message and its suppressed follow-up, the pod Event and its patch, the webhook body and its
signature. No service is contacted here."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json

import pytest

from agent.decide import Decision
from agent.engine.ruleset import Match
from agent.model import Connection, Event, Pod, Process
from agent.sinks import kubeevents, slack, webhook
from agent.sinks.findings import Finding, table_header, table_row
from tests.unit.sample_finding import WHEN, sample

CID = "c0ffee" + "0" * 58


# -- the finding's JSON form (DESIGN.md, "Finding") ------------------------------------------

def test_finding_of_a_decision_is_the_design_json_exactly():
    class Rule:
        id = "crypto-miner-exec"
        severity = "critical"
        tags = ("T1496",)
        action = "kill"
        mode = None

    p = Process(4242, 4200, 123456, "xmrig", "/tmp/xmrig", ("xmrig", "-o", "pool"), uid=1000,
                container_id=CID, netns=4026531840)
    parent = Process(4200, 1, 100, "bash", "/bin/bash", ("bash",))
    conn = Connection("10.0.0.5", 51234, "1.2.3.4", 3333, netns=4026531840)
    ev = Event("connect", 0.0, p, (parent,), "ws-123", Pod("team-a", "ws-123", "u-1"), conn)
    d = Decision(Match(Rule, ev, "known miner binary xmrig started"),  # type: ignore[arg-type]
                 "enforce", "protected", "protected name xmrig")
    f = Finding.of(d, "node-1", now=WHEN + 0.123)
    assert f.to_json() == {
        "time": "2026-11-23T10:00:00.123Z", "host": "node-1", "rule": "crypto-miner-exec",
        "severity": "critical", "tags": ["T1496"], "source": "connect", "action": "kill",
        "mode": "enforce", "outcome": "protected",
        "process": {"pid": 4242, "ppid": 4200, "starttime": 123456, "id": p.id_hex,
                    "comm": "xmrig", "exe": "/tmp/xmrig", "cmdline": ["xmrig", "-o", "pool"],
                    "cmdline_truncated": False, "cmdline_cut_bytes": 0, "uid": 1000,
                    "netns": 4026531840, "ancestors": [{"pid": 4200, "comm": "bash"}]},
        "workspace": {"id": "ws-123"}, "container": {"id": CID},
        "pod": {"namespace": "team-a", "name": "ws-123", "uid": "u-1", "labels": {}},
        "connection": {"src": "10.0.0.5", "sport": 51234, "dst": "1.2.3.4", "dport": 3333,
                       "family": "ipv4", "direction": "outbound", "netns": 4026531840},
        "message": "known miner binary xmrig started",
        "reason": "protected name xmrig",
    }
    # serialised, the enums are their text
    assert json.loads(json.dumps(f.to_json()))["severity"] == "critical"


def test_a_finding_on_the_host_has_nulls_and_no_reason():
    js = sample(ws="").to_json()
    assert js["workspace"] is None and js["container"] is None and js["pod"] is None
    assert js["connection"] is None and "reason" not in js


def test_table_row_lines_up_under_the_header():
    row = table_row(sample())
    assert row.split()[:4] == ["critical", "crypto-miner-exec", "killed", "4242"]
    assert table_header().split()[0] == "SEVERITY"


def test_a_slim_finding_keeps_no_command_line():
    f = sample(message="m" * 5000).slim(1024)
    assert f.process.cmdline == () and f.ancestors == () and len(f.message) == 1024
    assert (f.process.pid, f.process.comm) == (4242, "xmrig")


# -- Slack --------------------------------------------------------------------------------------

def _slack_fields(msg: dict) -> list[str]:
    return [x["text"] for x in msg["attachments"][0]["blocks"][1]["fields"]]


def test_slack_message_of_a_finding_in_a_workspace_on_the_host():
    msg = slack.message(sample())
    assert msg["text"] == ":rotating_light: CRITICAL: known miner started"
    att = msg["attachments"][0]
    assert att["color"] == slack.COLOURS["critical"]
    assert _slack_fields(msg) == [
        "*Rule*\n`crypto-miner-exec`", "*Severity*\ncritical", "*Outcome*\nkilled (enforce)",
        "*Host*\nnode-1", "*Process*\n`xmrig` pid 4242\n`/tmp/xmrig -o pool:3333`",
        "*Where*\nworkspace `ws-1`"]
    assert att["blocks"][2]["elements"][0]["text"] == "nodewarden · 2026-11-23T10:00:00.000Z"


def test_slack_message_names_pod_container_and_connection():
    f = sample(ws="", pod=Pod("team-a", "ws-123", "u"), container=CID,
               connection=Connection("10.0.0.5", 5, "1.2.3.4", 3333, direction="outbound"))
    fields = _slack_fields(slack.message(f))
    assert fields[5] == f"*Where*\npod `team-a/ws-123`, container `{CID[:12]}`"
    assert fields[6] == "*Connection*\noutbound 10.0.0.5:5 -> 1.2.3.4:3333"


@pytest.mark.parametrize("severity", ["info", "low", "medium", "high", "critical"])
def test_every_severity_has_its_colour(severity):
    assert slack.message(sample(severity=severity))["attachments"][0]["color"] == \
        slack.COLOURS[severity]


def test_slack_suppressed_message_counts_repeats():
    msg = slack.suppressed_message(("r", "ws-1", "/tmp/x"), 4, 300.0)
    assert msg["text"] == ("4 more `r` finding(s) for `/tmp/x` in workspace `ws-1` suppressed "
                           "in the last 300s")
    assert "in workspace" not in slack.suppressed_message(("r", "", "/tmp/x"), 1, 0.5)["text"]
    assert slack.incident_key(sample()) == ("crypto-miner-exec", "ws-1", "/tmp/xmrig")


# -- Kubernetes Events ------------------------------------------------------------------------

POD = Pod("team-a", "ws-1", "uid-1")


@pytest.mark.parametrize("outcome,reason", [
    ("killed", "NodewardenKilled"), ("would_kill", "NodewardenWouldKill"),
    ("reported", "NodewardenDetected"), ("gone", "NodewardenDetected"),
    ("protected", "NodewardenProtected"), ("failed", "NodewardenKillFailed"),
    ("anything-else", "NodewardenDetected")])
def test_event_reason_of_each_outcome(outcome, reason):
    assert kubeevents.reason_of(outcome) == reason


def test_event_body_is_a_warning_on_the_pod():
    f = sample(pod=POD, outcome="would_kill", mode="audit")
    body = kubeevents.event_body(f, POD, "ws-1.abc", 3, WHEN, WHEN + 61, "node-1")
    assert body == {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "ws-1.abc", "namespace": "team-a",
                     "labels": {"app.kubernetes.io/managed-by": "nodewarden"}},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": "team-a",
                           "name": "ws-1", "uid": "uid-1"},
        "type": "Warning", "reason": "NodewardenWouldKill",
        "message": "[critical] crypto-miner-exec: would_kill (audit), pid 4242 xmrig: "
                   "known miner started",
        "count": 3, "firstTimestamp": "2026-11-23T10:00:00Z",
        "lastTimestamp": "2026-11-23T10:01:01Z",
        "source": {"component": "nodewarden", "host": "node-1"},
    }


def test_event_patch_replaces_count_time_and_message_only():
    patch = kubeevents.event_patch(sample(pod=POD), 7, WHEN)
    assert [(p["op"], p["path"]) for p in patch] == [
        ("replace", "/count"), ("replace", "/lastTimestamp"), ("replace", "/message")]
    assert patch[0]["value"] == 7 and patch[1]["value"] == "2026-11-23T10:00:00Z"


def test_event_message_is_cut_to_what_the_apiserver_keeps():
    msg = kubeevents.event_message(sample(message="x" * 5000))
    assert len(msg) == kubeevents.MESSAGE_LIMIT and msg.endswith("…")


def test_event_names_are_the_pods_plus_a_hash_unique_per_series():
    key = ("uid-1", "r", "NodewardenKilled")
    a = kubeevents.event_name("ws-1", key, WHEN)
    assert a.startswith("ws-1.") and len(a) == len("ws-1.") + 16
    assert a == kubeevents.event_name("ws-1", key, WHEN)
    assert a != kubeevents.event_name("ws-1", key, WHEN + 1)
    assert len(kubeevents.event_name("p" * 300, key, WHEN)) <= 253


# -- webhook ----------------------------------------------------------------------------------

def test_webhook_body_is_the_json_line_and_the_signature_its_hmac():
    f = sample(exe="/tmp/\udcff")            # not UTF-8 on disk: escaped, still valid UTF-8
    body = webhook.body_of(f)
    body.decode("utf-8")
    assert b"\\udcff" in body and json.loads(body) == f.to_json(), "the same escape as stdout"
    assert webhook.signature(b"k", body) == \
        "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert webhook.signature(b"k", body + b" ") != webhook.signature(b"k", body)


def test_findings_are_frozen_values():
    with pytest.raises(dataclasses.FrozenInstanceError):
        sample().rule = "x"  # type: ignore[misc]
