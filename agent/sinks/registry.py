"""Every place findings go, opened from the config, fanned out to, reconfigured, closed.

The writers (stdout, the findings file) take every finding synchronously: they are the
record. The sinks behind a service (Slack, pod Events, the `webhook:` section, and any
config section like it) are queued and never block.

A new sink is a config section: a dataclass field of `Config` whose type has
`open_sink(metrics) -> Sink | None` (see agent/sinks/webhook.py, `WebhookConfig`). This
module finds such sections by looking at the config, so adding one changes no file here.
The flat keys of the older sinks (slack_*, kubernetes_event*) keep their own openers.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence, Sized
from dataclasses import dataclass, fields
from typing import Any, Protocol, TextIO, runtime_checkable

from agent.config import Config
from agent.errors import ConfigError
from agent.kubeapi import Kube
from agent.metrics import Metrics
from agent.sinks.base import Sink
from agent.sinks.findings import Finding, FindingWriter

log = logging.getLogger("nodewarden.sinks")


class SinkSection(Protocol):
    """A config section that is a sink's settings and knows how to open it."""

    def open_sink(self, metrics: Metrics) -> Sink | None:
        """The sink these settings ask for, None when off. Raises ConfigError."""


def sections(cfg: Config) -> Iterator[tuple[str, SinkSection]]:
    """(config key, section) of every sink section of `cfg`."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if callable(getattr(value, "open_sink", None)):
            yield f.name, value


def _slack_settings(cfg: Config) -> tuple[Any, ...]:
    return (cfg.slack_webhook_url_env, cfg.slack_webhook_url_file, cfg.slack_min_severity,
            cfg.slack_dedupe_seconds, cfg.slack_rate_per_second, cfg.slack_queue_size)


def _event_settings(cfg: Config) -> tuple[Any, ...]:
    return (cfg.kubernetes_event_rate_per_second, cfg.kubernetes_event_dedupe_seconds)


# the bounded caches sinks hold, by the slot of the sink that holds each (cache metrics)
SINK_CACHES = {"slack_incidents": "slack", "kubernetes_event_series": "kubernetes"}


@runtime_checkable
class _Caching(Protocol):
    def cache(self) -> Sized: ...


@dataclass
class _Slot:
    """One sink and the settings it was opened with (a change reopens it)."""

    settings: Any
    sink: Sink | None


class Sinks:
    """The writers and sinks of one running agent."""

    def __init__(self, metrics: Metrics, writers: Sequence[FindingWriter],
                 kube: Kube | None) -> None:
        self.metrics = metrics
        self.writers = list(writers)
        self.kube = kube
        self.slots: dict[str, _Slot] = {}
        self.events_on = False
        # read at each scrape: the sink that runs now, none while it is off
        metrics.watch_caches({name: functools.partial(self._cache, slot)
                              for name, slot in SINK_CACHES.items()})

    @classmethod
    def open(cls, cfg: Config, metrics: Metrics, out: TextIO, fmt: str,
             findings_file: TextIO | None = None, kube: Kube | None = None) -> Sinks:
        """Writers for `out` (in `fmt`: table or json) and the findings file (JSON lines),
        and every sink `cfg` turns on. Raises ConfigError (a secret file unreadable)."""
        writers = [FindingWriter(out, fmt)]
        if findings_file is not None:
            writers.append(FindingWriter(findings_file, "json"))
        sinks = cls(metrics, writers, kube)
        try:
            sinks._apply(cfg, strict=True)
        except BaseException:
            sinks.close(0.0)
            raise
        return sinks

    def submit(self, findings: Sequence[Finding]) -> None:
        """Write `findings` and hand them to every sink (Events while kubernetes_events)."""
        for w in self.writers:
            w.write(findings)
        for name, slot in self.slots.items():
            if slot.sink is None or (name == "kubernetes" and not self.events_on):
                continue
            for f in findings:
                slot.sink.submit(f)

    def _cache(self, name: str) -> Sized | None:
        slot = self.slots.get(name)
        sink = slot.sink if slot is not None else None
        return sink.cache() if isinstance(sink, _Caching) else None

    def reconfigure(self, cfg: Config) -> None:
        """Follow a reloaded config: a sink whose settings did not change keeps running
        with its state (dedupe windows, queue); one whose settings changed is closed and
        reopened; one turned off is closed. A sink that fails to reopen (its secret file
        unreadable) is logged and the running one kept."""
        self._apply(cfg, strict=False)

    def _apply(self, cfg: Config, strict: bool) -> None:
        from agent.sinks.kubeevents import PodEventSink
        from agent.sinks.slack import open_slack

        self._set("slack", _slack_settings(cfg), lambda: open_slack(cfg, self.metrics), strict)
        kube = self.kube
        if kube is not None:
            self._set("kubernetes", _event_settings(cfg),
                      lambda: PodEventSink.open(kube, cfg, self.metrics), strict)
        self.events_on = cfg.kubernetes_events
        for name, section in sections(cfg):
            self._set(name, section, functools.partial(section.open_sink, self.metrics), strict)

    def _set(self, name: str, settings: Any, open_: Callable[[], Sink | None],
             strict: bool = True) -> None:
        old = self.slots.get(name)
        if old is not None and old.settings == settings:
            return
        try:
            sink = open_()
        except ConfigError as e:
            if strict:
                raise
            log.error("%s not reopened, the running one stays: %s", name, e)
            return
        self.slots[name] = _Slot(settings, sink)
        if old is not None and old.sink is not None:
            log.info("%s settings changed: reopened", name)
            # what the old one still holds gets a second, off the agent's loop
            threading.Thread(target=old.sink.close, args=(1.0,), daemon=True).start()

    def close(self, deadline: float) -> None:
        """Close every sink at once, each given what is left of `deadline` seconds."""
        end = time.monotonic() + deadline
        threads = [threading.Thread(target=s.sink.close, args=(deadline,), daemon=True)
                   for s in self.slots.values() if s.sink is not None]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(0.0, end - time.monotonic()))
        self.slots.clear()
