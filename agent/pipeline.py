"""Wiring: events -> rules -> decisions, with each process judged once.

`Judge` holds the rule set, the global mode and the LRU of process identities; sources
(procfs scans now, eBPF events later) hand it enriched events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from agent.decide import Decision, Protection, decide
from agent.engine.ruleset import Match, Rule, RuleSet
from agent.fdlimit import Bursts
from agent.lru import LRU
from agent.model import Event, InstanceKey, Process
from agent.sources.proctree import SCAN_CHUNK, ProcessTree, run_steps
from agent.text import human

if TYPE_CHECKING:
    from prometheus_client import Counter

    from agent.metrics import Metrics

log = logging.getLogger("nodewarden")

# a loss pass at most this often: under a sustained flood a miner whose exec record was
# dropped is found within about twice this plus one pass (issue 10: within 1.5 s)
LOSS_SCAN_GAP = 0.5
# a loss pass takes bigger steps: records are being dropped anyway, the pass is what sees
# what they were about
LOSS_CHUNK = 4 * SCAN_CHUNK
# a scan that failed on an OS error (out of descriptors) is tried again this much later
RETRY_GAP = 1.0

# Kinds that judge a process instance: a process judged by either is not judged by a scan.
_PER_PROCESS = ("exec", "scan")
# /proc/PID/stat states of a process that has exited but is not reaped yet
_DEAD = ("Z", "X")


class EventSource(Protocol):
    """What the loop polls for kernel records (agent.sources.sensorset.SensorSet)."""

    def poll(self, timeout_ms: int) -> None:
        """Deliver pending records, waiting up to `timeout_ms` for one."""
        ...

    def lost(self) -> dict[str, int]:
        """Records lost so far, by source."""
        ...


class StartupState(Protocol):
    """What reports the state that existed before the agent started (agent.observer)."""

    def startup_connections(self, now: float) -> list[Event]:
        """Events for the connections open now."""
        ...


class Judge:
    """Judges events with the rules and decides what to do about each match.

    A process is marked seen only after it was judged, so a crash or a rules error mid-way
    never leaves a process marked but unjudged. Seen is keyed by the process instance and
    its program (`Process.instance_key`), not by `id`: `id` includes the ppid, so a process
    reparented by its parent's exit would be judged and reported again by the next scan.
    """

    def __init__(self, ruleset: RuleSet, mode: str = "audit",
                 protection: Protection | None = None, metrics: Metrics | None = None,
                 cache_size: int = 65536, can_act: bool = False) -> None:
        self.ruleset = ruleset
        self.mode = mode
        self.protection = protection or Protection()
        self.metrics = metrics
        self.can_act = can_act
        self.seen: LRU[InstanceKey, int] = LRU(cache_size)
        # labelled counter children, looked up once per kind rather than once per event
        self._event_counters: dict[str, Counter] = {}
        self._match_counters: dict[tuple[str, str, str], Counter] = {}

    def use(self, ruleset: RuleSet, mode: str, protection: Protection) -> None:
        """Judge by these rules, in this global mode, sparing these processes (from the next
        event on; at start and on every reload)."""
        self.ruleset = ruleset
        self.mode = mode
        self.protection = protection
        self._match_counters = {}

    def judged(self, p: Process) -> bool:
        """Whether this process, running this program, was judged already. A hit refreshes
        its LRU position (`in` alone would not), so live processes stay cached."""
        return self.seen.get(p.instance_key) is not None

    def judge(self, ev: Event) -> list[Decision]:
        """Decisions for `ev`; [] when nothing matched or a scan found a process that was
        already judged. Every exec is judged: a re-exec of the same binary with new
        arguments (`exec bash -c ...`) keeps pid, starttime and executable, so its identity,
        but it is a new program."""
        kind = ev.kind
        if kind == "scan":
            if self.judged(ev.process):
                return []
        elif kind == "exec" and ev.ktime_ns:
            read_at = self.seen.get(ev.process.instance_key)
            if read_at and ev.ktime_ns < read_at:
                # a scan that began reading after this exec judged this program already
                # (its record came late, behind the scan): one finding, not two
                return []
        matches = self.ruleset.evaluate(ev)
        if kind in _PER_PROCESS:
            # when a scan began reading it (CLOCK_MONOTONIC ns), 0 for an exec
            self.seen[ev.process.instance_key] = ev.ktime_ns if kind == "scan" else 0
        m = self.metrics
        if m is not None:
            counter = self._event_counters.get(ev.kind)
            if counter is None:
                counter = self._event_counters[ev.kind] = m.events.labels(source=ev.kind)
            counter.inc()
        if not matches:
            return []
        decisions = [decide(x, self.mode, self.protection, self.can_act) for x in matches]
        if m is not None:
            for d in decisions:
                self._match_counter(m, d.match.rule, d.mode).inc()
        return decisions

    def _match_counter(self, m: Metrics, rule: Rule, mode: str) -> Counter:
        """The rule_matches child of (rule, mode), looked up once (a labels() call costs
        ~8 µs, on the way from a record to its kill); dropped with the rules on reload."""
        key = (rule.id, rule.severity, mode)
        counter = self._match_counters.get(key)
        if counter is None:
            counter = self._match_counters[key] = m.rule_matches.labels(
                rule=rule.id, severity=rule.severity, mode=mode)
        return counter


def scan_once(tree: ProcessTree, judge: Judge, metrics: Metrics | None = None,
              clock: Callable[[], float] = time.time,
              on_event: Callable[[Event], None] | None = None) -> list[Decision]:
    """One procfs pass in one go (`scan_steps` without steps): every decision it made."""
    out: list[Decision] = []
    run_steps(scan_steps(tree, judge, out.extend, metrics, clock, on_event))
    return out


def scan_steps(tree: ProcessTree, judge: Judge, on_decisions: Callable[[list[Decision]], None],
               metrics: Metrics | None = None, clock: Callable[[], float] = time.time,
               on_event: Callable[[Event], None] | None = None,
               chunk: int = 0) -> Generator[None, None, None]:
    """One procfs pass: read every process, judge those not yet judged, in steps of `chunk`
    processes (0: in one go) with the decisions of each step handed to `on_decisions` as it
    ends, so that a kill is not held back by the rest of the pass. Zombies are not judged:
    they run nothing (a process killed in the kernel at its exec is one until its parent
    reaps it, and was reported then); a process whose main thread exited while others run
    on is not a zombie (procfs reads it through a live thread)."""
    started_ns = time.monotonic_ns()  # an exec the kernel saw before this, the scan sees
    procs = yield from tree.scan_steps(chunk)
    busy = tree.read_ns / 1e9   # its steps' time, not the pauses between them
    resumed = time.monotonic()
    now = clock()
    read_at = tree.read_at
    out: list[Decision] = []
    n = 0
    for p in procs:
        if p.state in _DEAD or judge.judged(p):
            continue  # skip building the event, not only judging it
        n += 1
        if chunk and n % chunk == 0:
            if out:
                on_decisions(out)
                out = []
            busy += time.monotonic() - resumed
            yield
            resumed = time.monotonic()
            if judge.judged(p):
                continue  # its exec record came meanwhile
        ev = tree.event("scan", p, now)
        # when the pass read it: an exec record older than that was judged by this scan
        ev.ktime_ns = read_at.get(p.pid, started_ns)
        out.extend(judge.judge(ev))
        if on_event is not None:
            on_event(ev)
    if out:
        on_decisions(out)
    if metrics is not None:
        metrics.scan_duration.observe(busy + time.monotonic() - resumed)
        metrics.processes.set(len(procs))


class Agent:
    """The running agent: judges every event a source hands it, scans procfs at start, on a
    timer, and at once when the kernel reports lost events, and reports every decision."""

    def __init__(self, tree: ProcessTree, judge: Judge, report: Callable[[list[Decision]], None],
                 metrics: Metrics, scan_interval: float,
                 record: Callable[[Event], None] | None = None,
                 act: Callable[[Decision], Decision] | None = None,
                 ticks: Sequence[Callable[[], None]] = ()) -> None:
        self.tree = tree
        self.judge = judge
        self.report = report
        self.metrics = metrics
        self.scan_interval = scan_interval
        self.record = record
        self.act = act
        self.scans = 0
        # called on every turn of the loop, in order (signals first, then reloads)
        self.ticks = tuple(ticks)
        # the rules the kernel enforces, by slot (records carry the slot of a verdict)
        self.kernel_rules: list[Rule] = []
        self.kernel_connect_rules: list[Rule] = []
        # monotonic time of the loop's last turn (/healthz) and whether start-up is done
        self.heartbeat = time.monotonic()
        self.ready = False
        # OS errors the loop survives (out of descriptors above all): counted, logged once
        # per burst; an event dropped for one asks for a scan, like an event the kernel lost
        self.bursts = Bursts(metrics)
        self._rescan = False
        # records the sensors lost since they loaded, by source, as last counted (from 0: a
        # loss between loading and the loop's first turn is counted too); a loss scan owed,
        # and when the next one may run
        self._lost_seen: dict[str, int] = {}
        self._loss_pending = False
        self._next_loss_scan = 0.0
        # the procfs pass under way, run a step per turn of the loop; when the next is due
        self._pass: Generator[None, None, None] | None = None
        self._next_scan = 0.0

    def set_scan_interval(self, seconds: float) -> None:
        """Scan procfs every `seconds` (from the next scan on)."""
        self.scan_interval = seconds

    def use_kernel_rules(self, exec_rules: Sequence[Rule], connect_rules: Sequence[Rule]) -> None:
        """The rules now in the kernel's maps, by slot: a record's verdict names its slot."""
        self.kernel_rules = list(exec_rules)
        self.kernel_connect_rules = list(connect_rules)

    def failed(self, where: str, e: OSError) -> None:
        """A step failed on an OS error (EMFILE, ENFILE, ...): count it and carry on. A
        failed scan is retried after RETRY_GAP; a dropped event asks for a scan."""
        self.bursts.failed(where, e)
        if where == "events":
            self._rescan = True

    def handle(self, ev: Event) -> None:
        """Judge one event from a sensor, act on it, and report what happened. Nothing is
        written before the signal is sent: the --record line comes last (written even when
        judging fails, as it always was), findings and their log lines after acting."""
        try:
            self._judge_and_act(ev)
        finally:
            if self.record is not None:
                self.record(ev)

    def _judge_and_act(self, ev: Event) -> None:
        """`handle` without the record: the kernel's verdict, or the rules' decisions."""
        verdict = ev.kernel_verdict
        rules = self.kernel_connect_rules if ev.kind == "connect" else self.kernel_rules
        if verdict is not None and verdict[0] < len(rules):
            self._kernel_decision(ev, rules[verdict[0]], verdict[1])
            return
        decisions = self.judge.judge(ev)
        if ev.kind == "connect" and self.kernel_connect_rules:
            # the kernel judged these connects already (a verdict record came first)
            decisions = [d for d in decisions if d.match.rule not in self.kernel_connect_rules]
        if decisions:
            self._finish(decisions)

    def _kernel_decision(self, ev: Event, rule: Rule, killed: bool) -> None:
        """A record the BPF program already judged: report its verdict; unless the process
        was killed, the other rules judge the exec too (not this rule a second time)."""
        mode = rule.mode or self.judge.mode
        match = Match(rule, ev, rule.message(ev))
        first = Decision(match, mode, "killed" if killed else "would_kill", "in-kernel")
        if killed and ev.kind == "connect" and self.act is not None:
            # the kernel refused the connect; `_finish` kills the caller through a pidfd,
            # unless `decide` finds it protected (then the refused connect is all there is)
            d = decide(match, mode, self.judge.protection)
            first = replace(d, reason="in-kernel deny" if d.outcome == "kill"
                            else f"connect refused; {d.reason}")
        others: list[Decision] = []
        if not killed:
            others = [d for d in self.judge.judge(ev) if d.match.rule is not rule]
        elif ev.kind == "exec":
            # and as a scan may read it until it is a zombie: with its executable, then
            # without (gone with its memory at exit)
            p = ev.process
            self.judge.seen[p.instance_key] = 0
            self.judge.seen[(p.pid, p.starttime, 0, 0)] = 0
        self.metrics.rule_matches.labels(rule=rule.id, severity=rule.severity, mode=mode).inc()
        self._finish([first, *others])

    def try_scan(self, reason: str) -> bool:
        """`scan`, surviving an OS error (counted; the caller retries on a later turn)."""
        try:
            self.scan(reason)
        except OSError as e:
            self.failed("scan", e)
            return False
        self.bursts.ok("scan")
        self._rescan = False
        return True

    def scan(self, reason: str) -> None:
        """A reconciliation pass in one go: every process not yet judged is judged now,
        acted on, and only then reported and recorded."""
        run_steps(self._scan_steps(reason, 0))

    def _scan_steps(self, reason: str, chunk: int) -> Generator[None, None, None]:
        judged: list[Event] = []
        try:
            yield from scan_steps(self.tree, self.judge, self._finish, self.metrics,
                                  on_event=judged.append if self.record is not None else None,
                                  chunk=chunk)
            self.scans += 1
            self.metrics.scans.labels(reason=reason).inc()
        finally:
            if self.record is not None:
                for ev in judged:
                    self.record(ev)

    def start_scan(self, reason: str) -> None:
        """Begin a pass that the loop runs a step (SCAN_CHUNK processes, LOSS_CHUNK for a
        loss pass) per turn, taking the sensors' records between steps; nothing when one is
        running already."""
        if self._pass is None:
            self._pass = self._scan_steps(reason, LOSS_CHUNK if reason == "loss" else SCAN_CHUNK)

    @property
    def scanning(self) -> bool:
        """Whether a stepped pass is under way."""
        return self._pass is not None

    def _step(self) -> None:
        """One step of the pass under way; at its end, when the next periodic one is due
        (a pass that failed on an OS error is tried again after RETRY_GAP)."""
        assert self._pass is not None
        try:
            next(self._pass)
            return
        except StopIteration:
            self.bursts.ok("scan")
            self._rescan = False
            gap = self.scan_interval
        except OSError as e:
            self.failed("scan", e)
            self._rescan = True  # whatever it was for is owed
            gap = RETRY_GAP
        self._pass = None
        self._next_scan = time.monotonic() + gap

    def _finish(self, decisions: list[Decision]) -> None:
        """Carry out kills (the enforcer turns `kill` into killed, gone or failed), count
        and report every decision, whatever its outcome. Every signal is sent before the
        first line (log, finding, sink) is written: a write can block (a full pipe, a slow
        disk) and must not delay a kill."""
        done = [self.act(d) if self.act is not None else d for d in decisions]
        for d in done:
            self.metrics.actions.labels(action=d.match.rule.action, outcome=d.outcome).inc()
            if d.outcome == "protected":
                p = d.match.event.process
                # comm and the reason (which names the executable) are the workload's
                # choice: escaped, so a newline in a file name cannot forge a line
                log.warning("PROTECTED: rule %s wanted to %s pid %d (%s), refused: %s",
                            d.match.rule.id, d.match.rule.action, p.pid, human(p.comm),
                            human(d.reason))
        self.report(done)

    def run(self, stop: threading.Event, sensor: EventSource | None = None,
            observer: StartupState | None = None,
            on_ready: Callable[[], None] | None = None) -> None:
        """Until `stop` is set. `sensor` (the running sensors) delivers records to the
        observer, whose Events come back to `handle`; without one, procfs scans are the only
        source. The observer also reports the connections that were open at start."""
        scanned = self.try_scan("startup")
        if sensor is not None and observer is not None:
            try:
                for ev in observer.startup_connections(time.time()):
                    self.handle(ev)
            except OSError as e:
                self.failed("events", e)
        self.ready = True
        if on_ready is not None:
            on_ready()
        self._next_scan = time.monotonic() + (self.scan_interval if scanned else RETRY_GAP)
        try:
            while not stop.is_set():
                self.heartbeat = time.monotonic()
                self._tick()
                busy = self._pass is not None
                if sensor is not None:
                    self._pump(sensor, stop, 0 if busy else 100)
                elif not busy:
                    stop.wait(max(0.0, min(0.5, self._next_scan - time.monotonic())))
                if self._pass is not None:
                    self._step()
                elif time.monotonic() >= self._next_scan:
                    self.start_scan("periodic")
        finally:
            if self._pass is not None:
                self._pass.close()  # stops the tree noting records for it
                self._pass = None

    def _tick(self) -> None:
        """The loop's other work (signals, reloads), each surviving an OS error."""
        for tick in self.ticks:
            try:
                tick()
            except OSError as e:
                self.failed("reload", e)

    def _pump(self, sensor: EventSource, stop: threading.Event, timeout_ms: int) -> None:
        """One poll of the sensors (up to `timeout_ms`), then a loss scan if records were
        lost: at once, but at most one per LOSS_SCAN_GAP seconds, so a sustained flood costs
        two procfs passes a second, not one per poll. A pass that began before the loss
        may have listed the processes already: the loss scan is then owed after it."""
        try:
            sensor.poll(timeout_ms)
        except OSError as e:
            self.failed("events", e)
            stop.wait(0.1)  # a sensor that fails at once must not spin the loop
        for source, lost in sensor.lost().items():
            seen = self._lost_seen.get(source, 0)
            if lost > seen:
                self.metrics.events_lost.labels(source=source).inc(lost - seen)
                self._lost_seen[source] = lost
                self._loss_pending = True
        if ((self._loss_pending or self._rescan) and self._pass is None
                and time.monotonic() >= self._next_loss_scan):
            # the kernel dropped records, or we could not read one: whatever they were
            # about, a scan sees it
            self._loss_pending = False
            self.start_scan("loss")
            self._next_loss_scan = time.monotonic() + LOSS_SCAN_GAP
