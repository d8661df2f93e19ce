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
