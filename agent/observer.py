"""Kernel events to enriched Events: the process tree kept current, connections attributed.

exec reads the new image from procfs (falling back to what the kernel record carries when
the process is already gone), fork remembers the parent for short-lived children, exit
forgets; connect, accept and close become Connections attributed to a process and carry
its network namespace.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sized
from dataclasses import replace
from typing import NamedTuple

from cachetools import LRUCache

from agent import text
from agent.errors import AccessDenied, ProcessGone
from agent.model import Connection, Event, EventKind, Process
from agent.sources import kevents
from agent.sources.cmdline import HEAD, RawCmdline
from agent.sources.kevents import RawEvent
from agent.sources.netstate import ESTABLISHED, LISTEN, NetState
from agent.sources.procfs import Cgroup, parse_cgroup, parse_cmdline
from agent.sources.procfs.cgroup import same_in_v2_cgroup
from agent.sources.procfs.cgroupids import CgroupPaths
from agent.sources.procfs.reader import ExecRead, ImageRead
from agent.sources.proctree import ProcessTree

log = logging.getLogger("nodewarden.observer")

Tuple4 = tuple[str, int, str, int]
_NS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


class _Facts(NamedTuple):
    """A live process's facts as its exec record carries them (no Process made for them:
    the Process is made once, with its executable)."""

    pid: int
    ppid: int
    starttime: int
    comm: str
    uid: int
    state: str
    netns: int


class Observer:
    """Turns RawEvents into Events against a ProcessTree. Every cache here is bounded."""

    def __init__(self, tree: ProcessTree, net: NetState,
                 wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic, cache_size: int = 65536,
                 cgroup_paths: CgroupPaths | None = None) -> None:
        self.tree = tree
        # cgroup v2 id -> its path, for a process gone before its cgroup file was read
        self.cgroup_paths = cgroup_paths if cgroup_paths is not None else CgroupPaths()
        self.net = net
        # kernel timestamps are CLOCK_MONOTONIC: shift them to wall-clock once
        self._offset = wall() - mono()
        # pid -> the parent that forked it, while it runs: a plain dict bounded by dropping the
        # oldest fork (a fork and an exit each cost a dict operation, not an LRU update)
        self._parent_of: dict[int, int] = {}
        self._parents_max = cache_size
        # inbound connections by (remote, rport, local, lport) -> accepting pid, so the
        # close (which runs in softirq context) is attributed
        self._accepted: LRUCache[Tuple4, int] = LRUCache(maxsize=cache_size)
        # cgroup v2 id (from exec records) -> what its /proc/PID/cgroup said: read once per
        # cgroup, not per exec
        self._cgroups: LRUCache[int, Cgroup] = LRUCache(maxsize=4096)
        # record kind -> handler (a record of a kind no handler knows is ignored)
        self._handlers: dict[int, Callable[[RawEvent, float], Event | None]] = {
            kevents.EXEC: self._exec, kevents.FORK: self._fork, kevents.EXIT: self._exit,
            kevents.CONNECT: self._connect, kevents.CONNECT_VERDICT: self._connect_verdict,
            kevents.ACCEPT: self._accept, kevents.CLOSE: self._close,
        }

    def caches(self) -> dict[str, Callable[[], Sized]]:
        """Its bounded caches by name (for the cache metrics)."""
        return {"observer_parents": lambda: self._parent_of,
                "observer_accepted": lambda: self._accepted,
                "observer_cgroups": lambda: self._cgroups,
                "observer_cgroup_paths": lambda: self.cgroup_paths}

    def handle(self, raw: RawEvent) -> Event | None:
        """The Event for one kernel record, or None when there is nothing to judge."""
        handler = self._handlers.get(raw.kind)
        if handler is None:
            if raw.detail is None and raw.kind not in kevents.EVENT_KINDS:
                return None
            handler = self._activity
        return handler(raw, raw.ts_ns / 1e9 + self._offset)

    def _activity(self, raw: RawEvent, t: float) -> Event | None:
        """A record of issue 11's sensors (file, ptrace, mount, udp, dns, ...): the event of
        its kind for the process that made the call, carrying the record's detail, resolved
        against procfs first when the detail needs that (an fd's path, a namespace), and
        the destination when the record has one."""
        kind = kevents.EVENT_KINDS.get(raw.kind)  # type: ignore[call-overload]
        if kind is None:
            return None
        p = self._process(raw.pid) or self._from_record(raw)
        detail = raw.detail
        resolve = getattr(detail, "resolve", None)
        if resolve is not None:
            detail = resolve(raw.pid, self.tree.procfs)
        conn = None
        if raw.family:
            conn = Connection(raw.saddr, raw.sport, raw.daddr, raw.dport, _family(raw.family),
                              "outbound", p.netns)
        ev = self._event(kind, p, t, raw.ts_ns, conn)
        ev.detail = detail
        return ev

    def _exec(self, raw: RawEvent, t: float) -> Event:
        if raw.argv_cut < 0:
            new, marker = self._exec_from_procfs(raw), None
        else:
            new = self._exec_from_kernel(raw)
            # the kernel's scan of the exec's environment stands for environ when it was for
            # the names this tree looks for
            marker = ((raw.marker[1] if raw.marker else "")
                      if raw.markers_scanned == self.tree.markers else None)
        self.tree.add(new, marker)
        ev = self._event(EventKind.EXEC, new, t, raw.ts_ns)
        if raw.state:
            ev.kernel_verdict = (raw.fd, raw.state == kevents.VERDICT_KILLED)
        return ev

    def _exec_from_procfs(self, raw: RawEvent) -> Process:
        """The new image read whole from procfs (a record without argv: taken before the
        sensor attached, unreadable in the kernel, or from the proc connector)."""
        killed = raw.state == kevents.VERDICT_KILLED
        read = self._read(raw.pid)
        if killed and read is not None and not _started_by(read, raw):
            read = None   # reaped already, and the pid names a later process
        elif not killed and read is not None and not (read.exe or read.cmdline):
            # read as its leader exited: once more, through a thread that runs on
            read = self._read(raw.pid)
        if read is None or not (read.exe or read.cmdline):
            # killed in the kernel, gone, or read mid-exit (exe and cmdline already
            # empty): what the kernel record says, with the start time when we have it
            return self._from_record(raw, read)
        return read

    def _exec_from_kernel(self, raw: RawEvent) -> Process:
        """The new image from its record (argv, comm, path) and one read of what the kernel
        did not send: the executable's identity, and stat (parent, start time), uid and
        netns unless the record carries them; the cgroup once per cgroup. A process already
        gone keeps what the record says."""
        cached = self._cgroups.get(raw.cgroup_id) if raw.cgroup_id else None
        if raw.task is not None:
            return self._exec_from_task(raw, raw.task, cached)
        facts, got = self._procfs_facts(raw, cached)
        if got is None or not got.exe:
            return self._gone(raw, facts, cached)
        assert facts is not None
        return self._image(raw, got, cached, facts)

    def _exec_from_task(self, raw: RawEvent, task: tuple[int, int, int],
                        cached: Cgroup | None) -> Process:
        """What the kernel read from the task (parent, start time, effective uid, netns),
        and the executable from procfs: not read for a process the kernel killed at its
        exec (its image is gone, or going). One Process is made, not one for the facts and
        another for the image."""
        starttime, euid, netns = task
        facts = _Facts(raw.pid, raw.ppid, starttime, raw.comm, euid, "R", netns)
        got = None
        if raw.state != kevents.VERDICT_KILLED:
            got = self.tree.procfs.read_image(raw.pid, cgroup=cached is None,
                                              cmdline=raw.argv_cut > 0)
        if got is None or not got.exe:
            return self._gone(raw, facts, cached)
        return self._image(raw, got, cached, facts)

    def _gone(self, raw: RawEvent, facts: _Facts | Process | None,
              cached: Cgroup | None) -> Process:
        """Killed in the kernel, gone, or read mid-exit: the record, and the facts known."""
        p = self._from_record(raw, facts)
        p = self._in_cgroup(p, raw.cgroup_id, cached)
        self._hold_argv(p, raw)
        return p

    def _image(self, raw: RawEvent, got: ImageRead | ExecRead, cached: Cgroup | None,
               facts: _Facts | Process) -> Process:
        """The live process: the facts, the executable read, the record's argv (or procfs's
        head and tail when the kernel cut it), its cgroup (remembered by its v2 id)."""
        cg = cached
        if got.cgroup is not None:
            cg = got.cgroup
            if raw.cgroup_id and same_in_v2_cgroup(cg):
                # the v2 id names the path, and the path says all that is kept (mixed
                # hosts too, when the v2 path names the container)
                self._cgroups[raw.cgroup_id] = cg
        argv, cut, why = raw.argv, raw.argv_cut, "long"
        if got.cmdline is not None and got.cmdline.head:
            # cut in the kernel: procfs keeps the head and the tail, as a scan does
            argv, cut, why = parse_cmdline(got.cmdline.joined()), got.cmdline.cut, ""
        p = Process(pid=facts.pid, ppid=facts.ppid, starttime=facts.starttime, comm=facts.comm,
                    exe=got.exe, cmdline=argv, cmdline_cut=cut, uid=facts.uid,
                    state=facts.state, exe_dev=got.exe_dev, exe_ino=got.exe_ino,
                    container_id=cg.container_id if cg else "",
                    pod_uid=cg.pod_uid if cg else "", netns=facts.netns)
        return self._held(p, why)

    def _procfs_facts(self, raw: RawEvent,
                      cached: Cgroup | None) -> tuple[Process | None, ExecRead | None]:
        """The stat facts, uid, netns and executable read from procfs (a record without
        its task's facts)."""
        try:
            got = self.tree.procfs.read_exec(raw.pid, cgroup=cached is None,
                                             cmdline=raw.argv_cut > 0, ruid=raw.uid)
        except (ProcessGone, AccessDenied):
            return None, None
        st = got.stat
        if raw.state == kevents.VERDICT_KILLED and not (
                st.comm == raw.comm and st.starttime * _NS_PER_TICK <= raw.ts_ns):
            return None, None   # reaped already, and the pid names a later process
        if not got.exe:
            # read mid-exit: its stat still names its parent and start time, not its uid
            return Process(pid=raw.pid, ppid=st.ppid, starttime=st.starttime,
                           comm=st.comm), got
        return Process(pid=st.pid, ppid=st.ppid, starttime=st.starttime, comm=st.comm,
                       uid=got.uid, state=st.state, netns=got.netns), got

    def _in_cgroup(self, p: Process, cgroup_id: int, cached: Cgroup | None) -> Process:
        """A process gone before its /proc/PID/cgroup was read (killed in the kernel at its
        exec, say) in its container and pod: those of the cgroup its record names, found
        by the cgroup's directory when no live process of that cgroup was read before."""
        cg = cached
        if cg is None and cgroup_id:
            path = self.cgroup_paths.path_of(cgroup_id)
            cg = parse_cgroup(f"0::{path}\n") if path else None
        if cg is None or not (cg.container_id or cg.pod_uid):
            return p
        return replace(p, container_id=cg.container_id, pod_uid=cg.pod_uid)

    def _hold_argv(self, p: Process, raw: RawEvent) -> None:
        """A process built from its record: the kernel's argv, held like a read one."""
        self.tree.procfs.cmdlines.hold(p, RawCmdline(b"", b"", p.cmdline_cut), "long")

    def _held(self, p: Process, why: str) -> Process:
        """`p`, its command line counted against the budget (cut to the tight head and
        tail first when the budget is spent, as a read would be)."""
        budget = self.tree.procfs.cmdlines
        head, tail = budget.allowance()
        if head < HEAD:
            data = b"\0".join(map(text.encode, p.cmdline))
            if len(data) > head + tail:
                raw = RawCmdline(data[:head], data[-tail:],
                                 len(data) - head - tail + max(p.cmdline_cut, 0))
                p = replace(p, cmdline=parse_cmdline(raw.joined()), cmdline_cut=raw.cut)
                why = "budget"
        budget.hold(p, RawCmdline(b"", b"", p.cmdline_cut), why)
        return p

    def _fork(self, raw: RawEvent, t: float) -> None:
        parents = self._parent_of
        parents[raw.pid] = raw.ppid
        if len(parents) > self._parents_max:
            del parents[next(iter(parents))]
        self.tree.forked(raw.pid, raw.ppid)

    def _exit(self, raw: RawEvent, t: float) -> Event | None:
        self._parent_of.pop(raw.pid, None)
        gone = self.tree.remove(raw.pid)
        return self._event(EventKind.EXIT, gone, t, raw.ts_ns) if gone is not None else None

    def _connect(self, raw: RawEvent, t: float) -> Event | None:
        p = self._process(raw.pid)
        if p is None:
            return None
        conn = Connection(raw.saddr, raw.sport, raw.daddr, raw.dport, _family(raw.family),
                          "outbound", p.netns, raw.calls)
        return self._event(EventKind.CONNECT, p, t, raw.ts_ns, conn)

    def _connect_verdict(self, raw: RawEvent, t: float) -> Event:
        # an in-kernel connect rule matched before anything was sent
        p = self._process(raw.pid)
        if p is None:
            p = self._from_record(raw)
        conn = Connection("0.0.0.0" if raw.family == kevents.AF_INET else "::", 0,
                          raw.daddr, raw.dport, _family(raw.family), "outbound", p.netns)
        ev = self._event(EventKind.CONNECT, p, t, raw.ts_ns, conn)
        ev.kernel_verdict = (raw.fd, raw.state == kevents.VERDICT_KILLED)
        return ev

    def _accept(self, raw: RawEvent, t: float) -> Event | None:
        p = self._process(raw.pid)
        if p is None:
            return None
        if raw.family:
            # resolved in the kernel: saddr/sport are local, daddr/dport the peer
            remote, rport, local, lport = raw.daddr, raw.dport, raw.saddr, raw.sport
            family = _family(raw.family)
        else:
            # the caller passed no sockaddr: resolve the fd while it is still open
            s = self.net.socket_of_fd(raw.pid, raw.fd)
            if s is None:
                log.debug("accept by pid %d: fd %d is gone or not TCP", raw.pid, raw.fd)
                return None
            remote, rport, local, lport, family = s.remote, s.rport, s.local, s.lport, s.family
        self._accepted[(remote, rport, local, lport)] = p.pid
        conn = Connection(remote, rport, local, lport, family, "inbound", p.netns, raw.calls)
        return self._event(EventKind.ACCEPT, p, t, raw.ts_ns, conn)

    def _close(self, raw: RawEvent, t: float) -> Event | None:
        p: Process | None
        if raw.pid:
            p = self._process(raw.pid)
            conn = Connection(raw.saddr, raw.sport, raw.daddr, raw.dport, _family(raw.family),
                              "outbound", p.netns if p else 0)
        else:
            # the socket's own view: saddr is local; seen from the client, it is the dst
            pid = self._accepted.pop((raw.daddr, raw.dport, raw.saddr, raw.sport), 0)
            p = self._process(pid)
            conn = Connection(raw.daddr, raw.dport, raw.saddr, raw.sport, _family(raw.family),
                              "inbound", p.netns if p else 0)
        if p is None:
            return None
        return self._event(EventKind.CLOSE, p, t, raw.ts_ns, conn)

    def startup_connections(self, now: float) -> list[Event]:
        """Connections that existed before the agent started, one namespace at a time:
        established ones as connect or accept events, listeners remembered."""
        by_netns: dict[int, list[Process]] = {}
        for p in self.tree.procs.values():
            if not p.kthread and p.netns:
                by_netns.setdefault(p.netns, []).append(p)
        events = []
        for netns, procs in by_netns.items():
            sockets = self.net.tables(procs[0].pid)
            if not sockets:
                continue
            owner: dict[int, Process] = {}
            for proc in procs:
                for inode in self.net.socket_inodes(proc.pid).values():
                    owner.setdefault(inode, proc)
            listening = {s.lport for s in sockets if s.state == LISTEN}
            for s in sockets:
                holder = owner.get(s.inode)
                if holder is None or s.state != ESTABLISHED:
                    continue
                p = holder
                if s.lport in listening:
                    self._accepted[(s.remote, s.rport, s.local, s.lport)] = p.pid
                    conn = Connection(s.remote, s.rport, s.local, s.lport, s.family, "inbound",
                                      netns)
                    events.append(self._event(EventKind.ACCEPT, p, now, 0, conn))
                else:
                    conn = Connection(s.local, s.lport, s.remote, s.rport, s.family, "outbound",
                                      netns)
                    events.append(self._event(EventKind.CONNECT, p, now, 0, conn))
        return events

    # -- helpers --------------------------------------------------------------------------

    def _read(self, pid: int) -> Process | None:
        try:
            return self.tree.procfs.read(pid)
        except (ProcessGone, AccessDenied):
            return None

    def _process(self, pid: int) -> Process | None:
        if not pid:
            return None
        p = self.tree.procs.get(pid)
        if p is None:
            p = self._read(pid)
            if p is not None:
                self.tree.add(p)
        return p

    def _from_record(self, raw: RawEvent, partial: _Facts | Process | None = None) -> Process:
        """A process we could not read whole: what the kernel record says, completed with
        what procfs still had (a process read mid-exit keeps its stat)."""
        exe = raw.filename
        argv = raw.argv or ((exe,) if exe else ())
        if partial is not None:
            # e.g. a process killed at its exec, a zombie until reaped: its stat still names
            # its parent (whose workspace it is in) and its start time (what scans key on)
            ppid, starttime = partial.ppid or self._parent_of.get(raw.pid, 0), partial.starttime
        else:
            # the exec's time stands in for the unreadable start time, in clock ticks, so
            # two short-lived processes that reused a pid are still two identities
            ppid, starttime = self._parent_of.get(raw.pid, 0), raw.ts_ns // _NS_PER_TICK
        uid = partial.uid if partial is not None and partial.uid >= 0 else raw.uid
        return Process(pid=raw.pid, ppid=ppid, starttime=starttime, comm=raw.comm or
                       (partial.comm if partial else ""), exe=exe, cmdline=argv,
                       cmdline_cut=max(raw.argv_cut, 0) if raw.argv else 0, uid=uid,
                       netns=partial.netns if partial is not None else 0)

    def _event(self, kind: EventKind, p: Process, t: float, ktime: int,
               conn: Connection | None = None) -> Event:
        ev = self.tree.event(kind, p, t)
        ev.connection = conn
        ev.ktime_ns = ktime
        return ev


def _started_by(p: Process, raw: RawEvent) -> bool:
    """Whether `p` (read after the fact) is the process the record is about: the same comm,
    started no later than the record (a process on a recycled pid starts after it)."""
    return p.comm == raw.comm and p.starttime * _NS_PER_TICK <= raw.ts_ns


def _family(af: int) -> str:
    return "ipv6" if af == kevents.AF_INET6 else "ipv4"
