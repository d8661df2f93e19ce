"""Every bounded cache's fill is on /metrics, as one metric family however many parts
register caches."""

from __future__ import annotations

from cachetools import LRUCache
from prometheus_client import generate_latest

from agent.metrics import Metrics


def test_caches_from_several_parts_are_one_family_with_their_capacity():
    m = Metrics()
    lru: LRUCache[int, int] = LRUCache(maxsize=8)
    lru.update({1: 1, 2: 2})
    procs = {1: "init"}
    m.watch_caches({"judged": lambda: lru})
    m.watch_caches({"processes": lambda: procs})
    procs[2] = "kthreadd"  # read when scraped, not when registered
    text = generate_latest(m.registry).decode()
    assert text.count("# TYPE nodewarden_cache_entries gauge") == 1
    assert 'nodewarden_cache_entries{cache="judged"} 2.0' in text
    assert 'nodewarden_cache_entries{cache="processes"} 2.0' in text
    assert 'nodewarden_cache_capacity{cache="judged"} 8.0' in text
    assert 'nodewarden_cache_capacity{cache="processes"}' not in text  # a dict has none


# -- each bounded cache stays at its capacity under churn, and /metrics shows it --------------

def _series(m: Metrics, cache: str) -> tuple[float | None, float | None]:
    """(entries, capacity) of one cache as scraped."""
    def value(name: str) -> float | None:
        return m.registry.get_sample_value(name, {"cache": cache})
    return value("nodewarden_cache_entries"), value("nodewarden_cache_capacity")


def test_the_cgroup_cache_is_bounded_and_exported():
    from agent.sources.procfs.cgroup import CGROUPS, CgroupCache

    cache = CgroupCache(maxsize=8)
    texts = [f"0::/kubepods.slice/cri-containerd-{i:064x}.scope\n".encode() for i in range(100)]
    for t in texts:
        assert cache.parse(t).container_id == t[-71:-7].decode()  # the right answer ...
    assert len(cache) == 8                                           # ... in 8 entries
    assert cache.parse(texts[-1]) is cache.parse(texts[-1])          # the newest are kept
    CGROUPS.clear()
    for t in texts:
        CGROUPS.parse(t)
    assert _series(Metrics(), "cgroups") == (100, 4096)
    for i in range(5000):
        CGROUPS.parse(f"0::/user.slice/s{i}.scope\n".encode())
    assert _series(Metrics(), "cgroups") == (4096, 4096)
    CGROUPS.clear()


def test_every_rules_window_is_bounded_and_exported_as_one_cache(tmp_path):
    from agent.codec import event_from_json
    from agent.engine import loader
    from agent.metrics import rule_windows

    (tmp_path / "w.yaml").write_text("""\
rules:
  - id: fan-out
    on: connect
    match: {proc.name: nc}
    window: {seconds: 60, threshold: 3, by: [conn.dport]}
  - id: plain
    match: {proc.name: nc}
""")
    rules = loader.load([str(tmp_path)])
    (windowed,) = [r for r in rules.all_rules if r.window is not None]
    m = Metrics()
    m.watch_caches({"rule_windows": rule_windows(lambda: rules.all_rules)})
    assert _series(m, "rule_windows") == (0, 10_000)
    for port in range(12_000):  # a key per port: more keys than a window holds
        ev = event_from_json({"kind": "connect", "time": port / 1000,
                              "process": {"comm": "nc", "exe": "/usr/bin/nc"},
                              "connection": {"dport": port + 1}})
        rules.evaluate(ev)
    assert len(windowed.window.cache()) == 10_000
    assert _series(m, "rule_windows") == (10_000, 10_000)


def test_the_pod_index_is_bounded_under_churn_and_exported():
    from agent.enrich.pods import PodIndex
    from agent.sources.kubepods import PodWatcher

    index = PodIndex(maxsize=8)
    m = Metrics()
    PodWatcher(api=None, node="n1", index=index, metrics=m)  # type: ignore[arg-type]
    live = {"metadata": {"uid": "live", "name": "live", "namespace": "a"}, "status": {}}
    index.upsert(live)
    for i in range(200):  # pods made and deleted faster than their grace period
        obj = {"metadata": {"uid": f"u{i}", "name": f"p{i}", "namespace": "a"}, "status": {}}
        index.upsert(obj)
        index.delete(obj)
        assert index.held() <= 8
    assert index.lookup("", "live") is not None       # the deleted ones went first
    assert index.lookup("", "u199") is not None       # and the newest deleted still resolve
    assert index.lookup("", "u0") is None
    assert _series(m, "pods") == (8, 8)


# -- caches kept bounded by their owners, on /metrics as a user scrapes it ---------------------

def _scraped(m: Metrics, cache: str) -> tuple[str | None, str | None]:
    """(entries, capacity) of one cache in the text /metrics serves."""
    lines = generate_latest(m.registry).decode().splitlines()

    def value(name: str) -> str | None:
        prefix = f'{name}{{cache="{cache}"}} '
        return next((line[len(prefix):] for line in lines if line.startswith(prefix)), None)
    return value("nodewarden_cache_entries"), value("nodewarden_cache_capacity")


def test_a_running_agent_exports_its_fork_cache_and_its_set_of_cut_command_lines():
    import io

    from agent.app import Overrides, Runtime
    from agent.config import Config
    from agent.engine import loader
    from agent.model import Process
    from agent.sources.cmdline import RawCmdline

    cfg = Config(listen="off", bpf="off", kubernetes="off")
    rt = Runtime(cfg, loader.load([loader.bundled_rules_dir()]), Overrides(), None,
                 io.StringIO(), "json")
    try:
        assert _scraped(rt.metrics, "forked") == ("0.0", "65536.0")
        rt.tree.add(Process(pid=100, ppid=1, starttime=1, comm="sh"), marker="ws-1")
        for pid in range(1000, 1000 + 70_000):  # a fork bomb in a workspace
            rt.tree.forked(pid, 100)
        assert rt.tree.workspace_of(100) == "ws-1"
        assert _scraped(rt.metrics, "forked") == ("65536.0", "65536.0")

        budget = rt.tree.procfs.cmdlines
        assert _scraped(rt.metrics, "cmdlines_counted") == ("0.0", "65536.0")
        procs = [Process(pid=pid, ppid=1, starttime=pid, comm="java") for pid in range(3)]
        for p in procs:
            budget.hold(p, RawCmdline(b"java\0-cp\0", b"Main\0", 100_000))
        budget.hold(procs[0], RawCmdline(b"java\0-cp\0", b"Main\0", 100_000))  # read again
        assert _scraped(rt.metrics, "cmdlines_counted") == ("3.0", "65536.0")
    finally:
        rt.close()


def test_slack_incidents_are_exported_while_slack_runs_and_left_out_once_it_is_off(monkeypatch):
    import io
    from dataclasses import replace

    from agent.config import Config
    from agent.sinks.registry import Sinks
    from tests.unit.sample_finding import sample

    # nothing listens there: a delivery is refused at once, on this machine
    monkeypatch.setenv("NW_TEST_SLACK_URL", "http://127.0.0.1:9/services/x")
    cfg = Config(listen="off", bpf="off", kubernetes="off",
                 slack_webhook_url_env="NW_TEST_SLACK_URL")
    m = Metrics()
    sinks = Sinks.open(cfg, m, io.StringIO(), "json")
    try:
        assert _scraped(m, "slack_incidents") == ("0.0", "10000.0")
        sinks.submit([sample(exe=f"/tmp/miner{i}") for i in range(3)])
        sinks.submit([sample(exe="/tmp/miner0")])  # a repeat: the same incident
        assert _scraped(m, "slack_incidents") == ("3.0", "10000.0")
        sinks.reconfigure(replace(cfg, slack_webhook_url_env="NW_TEST_SLACK_UNSET"))
        assert _scraped(m, "slack_incidents") == (None, None)
        assert 'cache="kubernetes_event_series"' not in generate_latest(m.registry).decode()
    finally:
        sinks.close(0.0)
