"""Carrying out kill decisions without ever hitting the wrong process.

Every signal goes through a pidfd: open it, *then* check the process's start time against
the finding, then signal the pidfd. A pid reused by another process fails the check (its
start time differs); a process that exits after the check makes the pidfd signal fail
with ESRCH. Either way the outcome is `gone`, and nothing else was hit.

A workspace is stopped before it is killed (SIGSTOP through each pidfd, re-scanning for
children forked meanwhile), so no process escapes by forking during the kill. A container
with its own cgroup v2 is killed through `cgroup.kill`; on cgroup v1, its processes are
stopped and killed one by one.

Out of file descriptors (EMFILE, ENFILE: no pidfd can be opened), a kill fails with that
reason, counted in `nodewarden_fd_exhausted_total{where="kill"}`; the processes of a
workspace or container stopped before the descriptors ran out are killed, never left
stopped.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.decide import Decision, Protection
from agent.errors import AccessDenied, ProcessGone
from agent.fdlimit import exhausted
from agent.metrics import Metrics
from agent.model import Event
from agent.sources.procfs import ProcFS
from agent.sources.proctree import ProcessTree
from agent.text import human

log = logging.getLogger("nodewarden.actions")

Sender = Callable[[int, int], None]  # (pidfd, signal)
MAX_STOP_ROUNDS = 20


def _pidfd_send(pidfd: int, sig: int) -> None:
    signal.pidfd_send_signal(pidfd, sig)


@dataclass(frozen=True)
class Outcome:
    outcome: str  # killed, gone, protected, failed
    detail: str = ""


class Enforcer:
    """Executes `kill` decisions: the signal sender and procfs root are injectable."""

    def __init__(self, procfs: ProcFS, tree: ProcessTree, protection: Protection,
                 send: Sender = _pidfd_send, cgroup_root: str = "/sys/fs/cgroup",
                 metrics: Metrics | None = None) -> None:
        self.procfs = procfs
        self.metrics = metrics
        self.tree = tree
        self.protection = protection
        self.send = send
        self.cgroup_root = cgroup_root
        # set when `delete_pod: true` and the API server is reachable (an actions.pods.PodDeleter)
        self.pod_deleter: Any = None

    def reconfigure(self, protection: Protection, pod_deleter: Any) -> None:
        """Spare `protection`; delete pods through `pod_deleter` (None: delete-pod kills the
        process only). At start and on every reload."""
        self.protection = protection
        self.pod_deleter = pod_deleter

    def carry_out(self, d: Decision) -> Decision:
        """The decision with its final outcome (only `kill` decisions change)."""
        if d.outcome != "kill":
            return d
        ev = d.match.event
        action = d.match.rule.action
        try:
            if action == "kill-workspace" and ev.workspace:
                res = self.kill_workspace(ev.workspace)
            elif action == "kill-container" and ev.process.container_id:
                res = self.kill_container(ev)
            else:
                res = self.kill(ev.process.pid, ev.process.starttime)
                if action == "delete-pod":
                    res = Outcome(res.outcome, "; ".join(
                        x for x in (res.detail, self._delete_pod(ev)) if x))
        except OSError as e:
            res = Outcome("failed", self._os_error(e, "nothing was signalled"))
        if res.outcome == "failed":
            log.error("%s of pid %d for rule %s failed: %s", action, ev.process.pid,
                      d.match.rule.id, human(res.detail))
        return replace(d, outcome=res.outcome, reason=res.detail or d.reason)

    def _os_error(self, e: OSError, what_happened: str) -> str:
        """The reason of a kill that failed on `e` (and the count, when out of descriptors)."""
        if exhausted(e):
            if self.metrics is not None:
                self.metrics.fd_exhausted.labels(where="kill").inc()
            return f"out of file descriptors (EMFILE/ENFILE); {what_happened}"
        return f"{type(e).__name__}: {e.strerror}; {what_happened}"

    def _delete_pod(self, ev: Event) -> str:
        """After the process: its pod, when `delete_pod` is on and the process has one."""
        if ev.pod is None:
            return "not in a known pod: process killed only"
        if self.pod_deleter is None:
            return "delete_pod is off in the config: process killed, pod left running"
        return str(self.pod_deleter.request(ev.pod))

    # -- one process ----------------------------------------------------------------------

    def _open_checked(self, pid: int, starttime: int) -> int | None:
        """A pidfd for the process `pid` that started at `starttime`, or None if that
        process no longer exists (exited, or the pid now names another process)."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        try:
            if self.procfs.stat(pid).starttime != starttime:
                os.close(fd)
                return None
        except (ProcessGone, AccessDenied):
            os.close(fd)
            return None
        return fd

    def _signal(self, fd: int, sig: int) -> bool:
        try:
            self.send(fd, sig)
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

    # -- a workspace ----------------------------------------------------------------------

    def kill_workspace(self, workspace: str) -> Outcome:
        """Stop every process of the workspace (again until no new one appears), then kill
        them all. Protected processes inside it are left alone and named."""
        stopped: dict[tuple[int, int], int] = {}
        protected: list[str] = []
        starved: OSError | None = None
        try:
            for _ in range(MAX_STOP_ROUNDS):
                try:
                    self.tree.scan()
                except OSError as e:  # out of descriptors: kill what is stopped
                    starved = e
                    break
                new = 0
                for p in list(self.tree.procs.values()):
                    key = (p.pid, p.starttime)
                    if key in stopped or self.tree.workspace_of(p.pid) != workspace:
                        continue
                    why = self.protection.reason(Event("scan", 0.0, p))
                    if why:
                        if f"{p.pid} ({why})" not in protected:
                            protected.append(f"{p.pid} ({why})")
                        continue
                    try:
                        fd = self._open_checked(p.pid, p.starttime)
                    except OSError as e:  # out of descriptors: kill what is stopped
                        starved = e
                        break
                    if fd is None:
                        continue
                    if self._signal(fd, signal.SIGSTOP):
                        stopped[key] = fd
                        new += 1
                    else:
                        os.close(fd)
                if new == 0 or starved is not None:
                    break
            killed = sum(1 for fd in stopped.values() if self._signal(fd, signal.SIGKILL))
        finally:
            for fd in stopped.values():
                os.close(fd)
        if protected:
            log.warning("kill-workspace %s: left protected processes alone: %s",
                        human(workspace), human(", ".join(protected)))
        if starved is not None:
            return Outcome("failed", self._os_error(
                starved, f"{killed} processes of workspace {workspace} killed, others not"))
        if killed == 0:
            return Outcome("gone", f"no process of workspace {workspace} left")
        return Outcome("killed", f"{killed} processes of workspace {workspace}")

    # -- a container ----------------------------------------------------------------------

    def kill_container(self, ev: Event) -> Outcome:
        """cgroup.kill of the container's own cgroup v2; otherwise its v1 processes."""
        cid = ev.process.container_id
        pid = ev.process.pid
        v2, v1 = self._cgroup_paths(pid)
        if v2 and cid in v2:
            d = self._host_dir(Path(self._v2_mount()), v2, pid)
            if d is not None and (d / "cgroup.kill").exists():
                (d / "cgroup.kill").write_text("1")
                return Outcome("killed", f"container {cid[:12]} (cgroup.kill)")
        for path in v1:
            if cid in path:
                pids = self._v1_procs(path, pid)
                if pids:
                    return self._kill_pids(pids, f"container {cid[:12]}")
        # no cgroup of its own: the process alone, never a shared cgroup
        res = self.kill(ev.process.pid, ev.process.starttime)
        return Outcome(res.outcome, "the container has no cgroup of its own; killed the process")

    def _kill_pids(self, pids: list[int], what: str) -> Outcome:
        fds = []
        starved: OSError | None = None
        try:
            for pid in pids:
                try:
                    st = self.procfs.stat(pid)
                    p = self.tree.procs.get(pid)
                    if p is not None and self.protection.reason(Event("scan", 0.0, p)):
                        continue
                    fd = self._open_checked(pid, st.starttime)
                except (ProcessGone, AccessDenied):
                    continue
                except OSError as e:  # out of descriptors: kill what is stopped
                    starved = e
                    break
                if fd is not None and self._signal(fd, signal.SIGSTOP):
                    fds.append(fd)
                elif fd is not None:
                    os.close(fd)
            killed = sum(1 for fd in fds if self._signal(fd, signal.SIGKILL))
        finally:
            for fd in fds:
                os.close(fd)
        if starved is not None:
            return Outcome("failed", self._os_error(
                starved, f"{killed} processes of {what} killed, others not"))
        return Outcome("killed", f"{killed} processes of {what}") if killed else Outcome("gone")

    def _cgroup_paths(self, pid: int) -> tuple[str, list[str]]:
        try:
            text = Path(f"{self.procfs.root}/{pid}/cgroup").read_text()
        except OSError:
            return "", []
        v2, v1 = "", []
        for line in text.splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            if parts[0] == "0" and parts[1] == "":
                v2 = parts[2]
            elif parts[1] in ("pids", "freezer", "memory", "name=systemd") or "pids" in parts[1]:
                v1.append(f"{parts[1].removeprefix('name=')}:{parts[2]}")
        return v2, v1

    def _v2_mount(self) -> str:
        unified = Path(self.cgroup_root) / "unified"
        return str(unified) if (unified / "cgroup.procs").exists() else self.cgroup_root

    def _v1_procs(self, controller_path: str, pid: int) -> list[int]:
        controller, _, path = controller_path.partition(":")
        d = self._host_dir(Path(self.cgroup_root) / controller, path, pid)
        try:
            text = (d / "cgroup.procs").read_text() if d is not None else ""
        except OSError:
            return []
        return [int(x) for x in text.split() if x.isdigit()]

    @staticmethod
    def _host_dir(mount: Path, path: str, pid: int, max_dirs: int = 20000) -> Path | None:
        """The directory of cgroup `path` (as /proc/PID/cgroup shows it to the agent) under
        the host hierarchy mounted at `mount`.

        In a pod the agent usually has a cgroup namespace of its own, so other containers'
        paths read relative to it, as `/../../kubepods-besteffort.slice/...`. How far up
        the namespace root sits is not visible, so the path below the `..`s is searched
        for (breadth first, bounded), and a candidate counts only if `pid` is in it: a
        container kill never lands on a cgroup the process is not in."""
        parts = [p for p in path.split("/") if p]
        ups = 0
        while parts and parts[0] == "..":
            parts.pop(0)
            ups += 1
        rel = Path(*parts) if parts else Path()
        if ups == 0:
            return mount / rel
        frontier, seen = [mount], 0
        while frontier and seen < max_dirs:
            nxt: list[Path] = []
            for base in frontier:
                cand = base / rel
                try:
                    if str(pid) in (cand / "cgroup.procs").read_text().split():
                        return cand
                except OSError:
                    pass
                try:
                    subdirs = [e for e in os.scandir(base) if e.is_dir(follow_symlinks=False)]
                except OSError:
                    continue
                seen += len(subdirs)
                nxt.extend(Path(e.path) for e in subdirs)
            frontier = nxt
        return None
