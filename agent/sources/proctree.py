"""The process tree: who is whose parent, and which workspace each process belongs to.

A workspace is the first process (walking down from init) whose environ carries a marker,
plus all its descendants. Environ is read only for a process that is not already inside a
known workspace. A process found in a workspace stays in it (an exec of `env -i` does not
leave it); one found outside is read again when it runs another program, since every exec
replaces the environment: a launcher without the marker may exec into a workspace.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Generator, Sequence, Sized
from typing import TypeVar

from cachetools import LRUCache

from agent.enrich.workspace import DEFAULT_MARKERS
from agent.errors import AccessDenied, NodewardenError, ProcessGone
from agent.model import Event, Pod, Process
from agent.sources.procfs import Known, ProcFS

MAX_ANCESTORS = 64
# processes read per step of a pass: ~1 ms of reading, the longest a record waits for it
SCAN_CHUNK = 64
# records noted during one pass at most; past it the pass is dropped (the next one reads all)
MAX_CHANGED = 65536

T = TypeVar("T")


def run_steps(steps: Generator[None, None, T]) -> T:
    """Run a stepped pass to its end; its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

log = logging.getLogger("nodewarden")

# (container id, pod uid) -> the pod of a process (agent.enrich.pods.PodIndex.lookup)
PodLookup = Callable[[str, str], Pod | None]

# A process's workspace as last read, and the program it was read for (exe dev, inode): an
# empty answer holds only while the program is the same. (An exec of the same binary with
# only a new environment is seen by its exec event, not by a scan.)
_Known = tuple[str, int, int]


def _known(ws: str, p: Process) -> _Known:
    return (ws, p.exe_dev, p.exe_ino)


def own_processes(proc_root: str) -> list[Process]:
    """The agent and its ancestors (its shell, container runtime) as they are now: protected
    as (pid, start time, executable), so a recycled pid or an ancestor that execs another
    program later is not; an ancestor that has exited protects nothing."""
    own: list[Process] = []
    pid = os.getpid()
    try:
        procfs = ProcFS(proc_root if os.path.isdir(proc_root) else "/proc")
        for _ in range(MAX_ANCESTORS):
            if pid <= 1:
                break
            p = procfs.read(pid)
            own.append(p)
            pid = p.ppid
    except (OSError, NodewardenError):
        log.debug("could not read the agent's ancestry past pid %d", pid)
    return own


class ProcessTree:
    """Processes by pid, with workspace membership and ancestry for enrichment."""

    def __init__(self, procfs: ProcFS, markers: Sequence[str] = DEFAULT_MARKERS,
                 pod_of: PodLookup | None = None) -> None:
        self.procfs = procfs
        self.markers = tuple(markers)
        self.procs: dict[int, Process] = {}
        # pid -> the process as the last scan read it: a rescan reads only the stat of these
        # while they run the same program (ProcFS.refresh)
        self._read: dict[int, Known] = {}
        self._workspace: dict[int, str] = {}
        # (pid, starttime) -> workspace id and the program it was read for: membership
        # sticks when a process is reparented (a double fork does not leave a workspace)
        self._known: dict[tuple[int, int], _Known] = {}
        self.environ_reads = 0
        # pid -> the workspace it was forked into (forks are not in `procs` until they exec):
        # a double fork that clears its environment before its exec stays in the workspace
        self._forked: LRUCache[int, str] = LRUCache(maxsize=65536)
        # (container id, pod uid) -> the pod, when the Kubernetes enrichment runs
        self.pod_of = pod_of
        # pid -> when the last pass read it (CLOCK_MONOTONIC ns)
        self.read_at: dict[int, int] = {}
        # how long the last pass read, in ns, not counting the pauses between its steps
        self.read_ns = 0
        # while a pass runs in steps: pid -> (the process before, after) an exec or exit
        # record changed it; and the count of passes done, so an overtaken pass knows it
        self._changed: dict[int, tuple[Process | None, Process | None]] | None = None
        self._generation = 0
        # pid -> (its Process, its ancestors): every event of a process needs its ancestry
        # (a connect flood re-walked the same chain thousands of times a second). Emptied
        # whenever `procs` changes (scan, add, remove), so an exec, an exit or a reparenting
        # seen by a scan is never answered from an older tree; at most one entry per process.
        self._ancestry: dict[int, tuple[Process, tuple[Process, ...]]] = {}

    def caches(self) -> dict[str, Callable[[], Sized]]:
        """Its bounded caches by name (for the cache metrics): the workspaces of forks."""
        return {"forked": lambda: self._forked}

    def scan(self) -> list[Process]:
        """Read every process from procfs and replace the tree with what is there now.
        Processes that vanish or deny access mid-scan are skipped, never fatal."""
        return run_steps(self.scan_steps(0))

    def scan_steps(self, chunk: int = SCAN_CHUNK) -> Generator[None, None, list[Process]]:
        """`scan` in steps of `chunk` processes (0: in one go), so the agent's loop can take
        the sensors' records between two steps instead of waiting out a whole pass (tens of
        milliseconds at a few thousand processes). The tree stays whole meanwhile: the pass
        builds a new one, and what exec and exit records said while it ran is laid over it
        when it is done (an exec newer than the pass's read of it, an exit the pass may have
        read before). A pass overtaken by another (`scan` from a workspace kill) drops its
        own result. Each process's read time is kept in `read_at` (CLOCK_MONOTONIC ns)."""
        fs = self.procfs
        last = self._read
        read: dict[int, Known] = {}
        read_at: dict[int, int] = {}
        generation = self._generation
        self._changed = {}
        stamp = time.monotonic_ns()
        busy = 0
        try:
            for i, pid in enumerate(fs.pids()):
                if chunk and i and i % chunk == 0:
                    busy += time.monotonic_ns() - stamp
                    yield
                    stamp = time.monotonic_ns()
                prev = last.get(pid)
                try:
                    read[pid] = fs.read_known(pid) if prev is None else fs.refresh(pid, prev)
                except (ProcessGone, AccessDenied):
                    continue
                read_at[pid] = stamp
        finally:
            # also when abandoned or failed (out of descriptors): stop noting records
            changed, self._changed = self._changed, None
            self.read_ns = busy + time.monotonic_ns() - stamp
        if generation != self._generation or changed is None:
            return list(self.procs.values())  # overtaken: the newer pass's tree stands
        self._generation += 1
        found = {pid: k.process for pid, k in read.items()}
        for pid, (was, now) in changed.items():
            old = read.get(pid)
            if old is not None and was is not None and old.process.starttime != was.starttime:
                continue  # the pass read a newer process on this pid than the event saw
            read.pop(pid, None)  # read in full by the next pass
            if now is None:
                found.pop(pid, None)
            else:
                found[pid] = now
        self._read = read
        self.read_at = read_at
        self.procs = found
        self._ancestry.clear()
        self._resolve_workspaces()
        return list(found.values())

    def _resolve_workspaces(self) -> None:
        procs = self.procs
        ws: dict[int, str] = {}
        known: dict[tuple[int, int], _Known] = {}
        for pid, p in procs.items():
            if pid in ws:
                continue
            up = ws.get(p.ppid)
            if up is not None:
                # the parent is resolved (nearly always: pids ascend, parents come first)
                w = up or self._own_workspace(p)
                ws[pid] = w
                known[(pid, p.starttime)] = (w, p.exe_dev, p.exe_ino)
                continue
            # walk up to the nearest resolved ancestor (or the root), then resolve downwards
            chain = []
            on_chain: set[int] = set()
            cur: Process | None = procs[pid]
            while cur is not None and cur.pid not in ws and cur.pid not in on_chain:
                chain.append(cur)
                on_chain.add(cur.pid)
                cur = procs.get(cur.ppid)
            if cur is not None and cur.pid in on_chain:
                cur = None  # a ppid cycle (only in a corrupt tree): treat the top as a root
            inherited = ws.get(cur.pid, "") if cur is not None else ""
            for p in reversed(chain):
                if not inherited:
                    inherited = self._own_workspace(p)
                ws[p.pid] = inherited
                known[(p.pid, p.starttime)] = _known(inherited, p)
        self._workspace = ws
        self._known = known

    def _own_workspace(self, p: Process, execed: bool = False, marker: str | None = None) -> str:
        """The workspace `p` names itself: once in one, always; outside one, read again
        after an exec (`execed`, or a scan that finds another program than last time), or
        the `marker` its exec's environment set as the kernel saw it ("" none: no read)."""
        cached = self._known.get((p.pid, p.starttime))
        if cached is not None and (cached[0] or not execed and cached == _known("", p)):
            return cached[0]
        if marker is not None:
            return marker
        if p.kthread or p.state == "Z":
            return ""
        self.environ_reads += 1
        found = self.procfs.environ_marker(p.pid, self.markers)
        return found[1] if found else ""

    def _note(self, pid: int, was: Process | None, now: Process | None) -> None:
        """An exec or exit record changed `pid` while a pass runs: keep what it was when the
        pass began and what it is now."""
        changed = self._changed
        assert changed is not None
        if len(changed) >= MAX_CHANGED:
            # a flood of records during one pass: drop the pass rather than grow without bound
            self._changed = None
            return
        first = changed.get(pid)
        changed[pid] = (first[0] if first else was, now)

    def forked(self, pid: int, ppid: int) -> None:
        """A fork seen by a sensor: the child belongs to its parent's workspace, even if it
        is reparented and clears its environment before it execs."""
        ws = self._workspace.get(ppid) or self._forked.get(ppid, "")
        if ws:
            self._forked[pid] = ws

    def add(self, p: Process, marker: str | None = None) -> None:
        """Insert or replace one process (an exec seen by a sensor): it inherits the
        workspace of its parent or of the process it was forked from, keeps the one it was
        in, or is judged by the environ this exec gave it (`marker`, when the kernel read
        it: the workspace id, "" for none; None: read /proc/PID/environ)."""
        key = (p.pid, p.starttime)
        ws = self._workspace.get(p.ppid, "") or self._forked.get(p.pid, "")
        if not ws:
            ws = self._own_workspace(p, execed=True, marker=marker)
        if self._changed is not None:
            self._note(p.pid, self.procs.get(p.pid), p)
        self.procs[p.pid] = p
        self._ancestry.clear()
        self._read.pop(p.pid, None)  # the next scan reads what this exec runs in full
        self._workspace[p.pid] = ws
        self._known[key] = _known(ws, p)

    def remove(self, pid: int) -> Process | None:
        """Forget an exited process; returns what was known of it."""
        p = self.procs.pop(pid, None)
        if self._changed is not None:
            self._note(pid, p, None)
        if p is not None:
            self._ancestry.clear()
        self._read.pop(pid, None)
        self._workspace.pop(pid, None)
        self._forked.pop(pid, None)
        if p is not None:
            self._known.pop((p.pid, p.starttime), None)
        return p

    def workspace_of(self, pid: int) -> str:
        """The workspace id of `pid`, "" when it is in none (or unknown)."""
        return self._workspace.get(pid, "")

    def ancestors(self, pid: int) -> tuple[Process, ...]:
        """Parent first, up to init; bounded and safe against ppid cycles. Walked once per
        process while the tree stays as it is (`procs` changes only through scan, add and
        remove)."""
        start = self.procs.get(pid)
        hit = self._ancestry.get(pid)
        if hit is not None and hit[0] is start:
            return hit[1]
        out: list[Process] = []
        seen = {pid}
        p = start
        while p is not None and len(out) < MAX_ANCESTORS:
            parent = self.procs.get(p.ppid)
            if parent is None or parent.pid in seen:
                break
            out.append(parent)
            seen.add(parent.pid)
            p = parent
        chain = tuple(out)
        if start is not None:
            self._ancestry[pid] = (start, chain)
        return chain

    def event(self, kind: str, p: Process, time: float) -> Event:
        """An event about `p`, enriched with its ancestry, workspace and pod."""
        pod = None
        if self.pod_of is not None and (p.container_id or p.pod_uid):
            pod = self.pod_of(p.container_id, p.pod_uid)
        return Event(kind=kind, time=time, process=p, ancestors=self.ancestors(p.pid),
                     workspace=self._workspace.get(p.pid, ""), pod=pod)
