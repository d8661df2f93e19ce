"""Carrying out kill decisions without ever hitting the wrong process.

Every signal goes through a pidfd: open it, *then* check the process's start time against
the finding, then signal the pidfd. A pid reused by another process fails the check (its
start time differs); a process that exits after the check makes the pidfd signal fail
with ESRCH. Either way the outcome is `gone`, and nothing else was hit.

A workspace is stopped before it is killed (SIGSTOP through each pidfd, re-scanning for
children forked meanwhile), so no process escapes by forking during the kill. A container
with its own cgroup v2 is killed through `cgroup.kill`; on cgroup v1, its processes are
stopped and killed one by one (its cgroups read through agent.sources.procfs, found on the
host through agent.actions.cgroup).

The Enforcer's dependencies are passed in, the OS edges included (the pidfd opener and
signal sender, the procfs and cgroup roots), and a reload changes what it protects and
whether pods are deleted through one call, `reconfigure`.

Out of file descriptors (EMFILE, ENFILE: no pidfd can be opened), a kill fails with that
reason, counted in `nodewarden_fd_exhausted_total{where="kill"}`; the processes of a
workspace or container stopped before the descriptors ran out are killed, never left
stopped.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Protocol

from agent.actions.cgroup import CgroupFS, usable_v1
from agent.decide import Decision, Protection
from agent.errors import EXHAUSTED, AccessDenied, FdExhausted, ProcessGone
from agent.fdlimit import exhausted
from agent.metrics import Metrics
from agent.model import Event, EventKind, Pod, Process
from agent.sources.procfs import Cgroup, ProcFS, parse_stat
from agent.sources.proctree import ProcessTree
from agent.text import human

log = logging.getLogger("nodewarden.actions")

Sender = Callable[[int, int], None]  # (pidfd, signal)
Opener = Callable[[int], int]  # pid -> pidfd; ProcessLookupError when there is no such pid
MAX_STOP_ROUNDS = 20
# what opening /proc/PID/stat fails with when there is no such process (any more)
_GONE = (errno.ESRCH, errno.ENOENT, errno.ENOTDIR)


def _pidfd_send(pidfd: int, sig: int) -> None:
    signal.pidfd_send_signal(pidfd, sig)


def _pidfd_open(pid: int) -> int:
    return os.pidfd_open(pid)


def _starttime(root: str, pid: int) -> int | None:
    """The start time (clock ticks) in `root`/PID/stat, or None when there is no such
    process or it is unreadable. One open and one read: this runs between a record and its
    kill (ProcFS.stat opens the pid's directory first, twice the time). Out of descriptors
    raises FdExhausted."""
    try:
        fd = os.open(f"{root}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in EXHAUSTED:
            raise FdExhausted(e.errno, e.strerror) from None
        if e.errno in _GONE or isinstance(e, PermissionError):
            return None
        raise
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None  # ESRCH: it exited after the open
    finally:
        os.close(fd)
    try:
        return parse_stat(data).starttime  # its hostile-comm checks (`a) (b`) in one place
    except ValueError:
        return None


class PodDeleterLike(Protocol):
    """What the enforcer needs of a pod deleter (agent.actions.pods.PodDeleter)."""

    def request(self, pod: Pod) -> str:
        """Ask for the deletion of `pod`; returns what the finding should say about it."""
        ...


@dataclass(frozen=True)
class Outcome:
    """What a kill did: `outcome` is killed, gone, protected or failed (the finding's
    `outcome`); `detail` becomes the finding's `reason`."""

    outcome: str
    detail: str = ""


class _Stops:
    """Processes stopped through their pidfds, to be killed together (or, out of file
    descriptors, at least those): a workspace or a v1 container."""

    def __init__(self) -> None:
        self.fds: dict[tuple[int, int], int] = {}
        self.starved: OSError | None = None

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


class Enforcer:
    """Executes `kill` decisions, never on a protected process or a recycled pid."""

    # every dependency comes through __init__ and changes only through `reconfigure`
    __slots__ = ("_metrics", "_open_pidfd", "_pod_deleter", "_protection", "_send", "cgroups",
                 "procfs", "tree")

    def __init__(self, procfs: ProcFS, tree: ProcessTree, protection: Protection, *,
                 pod_deleter: PodDeleterLike | None = None, send: Sender = _pidfd_send,
                 open_pidfd: Opener = _pidfd_open, cgroup_root: str = "/sys/fs/cgroup",
                 metrics: Metrics | None = None) -> None:
        self.procfs = procfs
        self.tree = tree
        self.cgroups = CgroupFS(cgroup_root)
        self._protection = protection
        # set when `delete_pod: true` and the API server is reachable
        self._pod_deleter = pod_deleter
        self._send = send
        self._open_pidfd = open_pidfd
        self._metrics = metrics

    @property
    def protection(self) -> Protection:
        """What the enforcer refuses to signal (as of the last reconfigure)."""
        return self._protection

    def reconfigure(self, protection: Protection, pod_deleter: PodDeleterLike | None) -> None:
        """A config reload: what is protected, and the pod deleter (None: delete_pod off)."""
        self._protection = protection
        self._pod_deleter = pod_deleter

    def carry_out(self, d: Decision) -> Decision:
        """The decision with its final outcome (only `kill` decisions change)."""
        if d.outcome != "kill":
            return d
        ev = d.match.event
        action = d.match.rule.action
        # `decide` refused these already; the code that signals checks once more
        why = self._protection.reason(ev)
        if why:
            return replace(d, outcome="protected", reason=why)
        try:
            res = self._act(action, ev)
        except OSError as e:
            res = Outcome("failed", self._os_error(e, "nothing was signalled"))
        if res.outcome == "failed":
            log.error("%s of pid %d for rule %s failed: %s", action, ev.process.pid,
                      d.match.rule.id, human(res.detail))
        return replace(d, outcome=res.outcome, reason=res.detail or d.reason)

    def _act(self, action: str, ev: Event) -> Outcome:
        if action == "kill-workspace" and ev.workspace:
            return self.kill_workspace(ev.workspace)
        if action == "kill-container" and ev.process.container_id:
            return self.kill_container(ev)
        res = self.kill(ev.process.pid, ev.process.starttime)
        if action == "delete-pod":
            res = Outcome(res.outcome, "; ".join(x for x in (res.detail, self._delete_pod(ev))
                                                 if x))
        return res

    def _os_error(self, e: OSError, what_happened: str) -> str:
        """The reason of a kill that failed on `e` (and the count, when out of descriptors)."""
        if exhausted(e):
            if self._metrics is not None:
                self._metrics.fd_exhausted.labels(where="kill").inc()
            return f"out of file descriptors (EMFILE/ENFILE); {what_happened}"
        return f"{type(e).__name__}: {e.strerror}; {what_happened}"

    def _delete_pod(self, ev: Event) -> str:
        """After the process: its pod, when `delete_pod` is on and the process has one."""
        if ev.pod is None:
            return "not in a known pod: process killed only"
        if self._pod_deleter is None:
            return "delete_pod is off in the config: process killed, pod left running"
        return self._pod_deleter.request(ev.pod)

    def _protected(self, p: Process, workspace: str = "") -> str:
        return self._protection.reason(Event(EventKind.SCAN, 0.0, p, workspace=workspace))

    # -- one process ----------------------------------------------------------------------

    def _open_checked(self, pid: int, starttime: int) -> int | None:
        """A pidfd for the process `pid` that started at `starttime`, or None if that
        process no longer exists (exited, or the pid now names another process). The pidfd
        comes first: a process that the start time check finds is the one it holds."""
        try:
            fd = self._open_pidfd(pid)
        except ProcessLookupError:
            return None
        try:
            same = _starttime(self.procfs.root, pid) == starttime
        except BaseException:
            os.close(fd)
            raise
        if not same:
            os.close(fd)
            return None
        return fd

    def _signal(self, fd: int, sig: int) -> bool:
        try:
            self._send(fd, sig)
            return True
        except ProcessLookupError:
            return False

    def kill(self, pid: int, starttime: int) -> Outcome:
        """SIGKILL the process instance (pid, starttime)."""
        fd = self._open_checked(pid, starttime)
        if fd is None:
            return Outcome("gone", "exited before the kill")
        try:
            if not self._signal(fd, signal.SIGKILL):
                return Outcome("gone", "exited before the kill")
            return Outcome("killed")
        finally:
            os.close(fd)

    # -- stop, then kill: a workspace, or a container on cgroup v1 ------------------------

    def _stop(self, stops: _Stops, p: Process) -> bool:
        """SIGSTOP `p` through a checked pidfd kept in `stops`; True when it was stopped.
        Out of descriptors, `stops.starved` says so and nothing more is stopped."""
        try:
            fd = self._open_checked(p.pid, p.starttime)
        except OSError as e:  # out of descriptors: kill what is stopped
            stops.starved = e
            return False
        if fd is None:
            return False
        if self._signal(fd, signal.SIGSTOP):
            stops.fds[(p.pid, p.starttime)] = fd
            return True
        os.close(fd)
        return False

    def _kill_stopped(self, stops: _Stops, what: str) -> Outcome:
        """SIGKILL every stopped process; the outcome of the whole."""
        killed = sum(1 for fd in stops.fds.values() if self._signal(fd, signal.SIGKILL))
        if stops.starved is not None:
            return Outcome("failed", self._os_error(
                stops.starved, f"{killed} processes of {what} killed, others not"))
        if killed == 0:
            return Outcome("gone")
        return Outcome("killed", f"{killed} processes of {what}")

    def _workspace_round(self, stops: _Stops, workspace: str, protected: list[str]) -> int:
        """Stop the processes of `workspace` not stopped yet; how many were."""
        new = 0
        for p in list(self.tree.procs.values()):
            if (p.pid, p.starttime) in stops.fds or self.tree.workspace_of(p.pid) != workspace:
                continue
            why = self._protected(p)
            if why:
                if f"{p.pid} ({why})" not in protected:
                    protected.append(f"{p.pid} ({why})")
                continue
            new += self._stop(stops, p)
            if stops.starved is not None:
                break
        return new

    def kill_workspace(self, workspace: str) -> Outcome:
        """Stop every process of the workspace (again until no new one appears), then kill
        them all. Protected processes inside it are left alone and named."""
        stops = _Stops()
        protected: list[str] = []
        try:
            for _ in range(MAX_STOP_ROUNDS):
                try:
                    self.tree.scan()
                except OSError as e:  # out of descriptors: kill what is stopped
                    stops.starved = e
                    break
                if self._workspace_round(stops, workspace, protected) == 0:
                    break
                if stops.starved is not None:
                    break
            res = self._kill_stopped(stops, f"workspace {workspace}")
        finally:
            stops.close()
        if protected:
            log.warning("kill-workspace %s: left protected processes alone: %s",
                        human(workspace), human(", ".join(protected)))
        if res.outcome == "gone":
            return Outcome("gone", f"no process of workspace {workspace} left")
        return res

    # -- a container ----------------------------------------------------------------------

    def kill_container(self, ev: Event) -> Outcome:
        """cgroup.kill of the container's own cgroup v2; otherwise its v1 processes;
        otherwise (no cgroup of its own) the process alone, never a shared cgroup."""
        cid = ev.process.container_id
        pid = ev.process.pid
        try:
            # no container id: no cgroup is the container's ("" is in every path)
            cg = self.procfs.cgroup(pid) if cid else Cgroup()
        except (ProcessGone, AccessDenied):
            cg = Cgroup()
        if cg.v2 and cid in cg.v2:
            kill_file = self.cgroups.kill_file(cg.v2, pid)
            if kill_file is not None:
                kill_file.write_text("1")
                return Outcome("killed", f"container {cid[:12]} (cgroup.kill)")
        for controllers, path in cg.v1:
            if usable_v1(controllers) and cid in path:
                pids = self.cgroups.v1_procs(controllers, path, pid)
                if pids:
                    return self._kill_pids(pids, f"container {cid[:12]}")
        res = self.kill(ev.process.pid, ev.process.starttime)
        return Outcome(res.outcome, "the container has no cgroup of its own; killed the process")

    def _kill_pids(self, pids: Iterable[int], what: str) -> Outcome:
        """Stop each unprotected process of `pids`, then kill them all."""
        stops = _Stops()
        try:
            for pid in pids:
                try:
                    p = self.procfs.read(pid)
                except (ProcessGone, AccessDenied):
                    continue
                except OSError as e:  # out of descriptors: kill what is stopped
                    stops.starved = e
                    break
                if not self._protected(p):
                    self._stop(stops, p)
                if stops.starved is not None:
                    break
            return self._kill_stopped(stops, what)
        finally:
            stops.close()
