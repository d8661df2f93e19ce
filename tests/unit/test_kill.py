"""The Enforcer over the fake host in tests/fixtures/proc and a temporary cgroup root.

The real ProcFS and ProcessTree read a copy of the fixture procfs; a temporary directory laid
out like /sys/fs/cgroup holds cgroup.procs and cgroup.kill files. Only the two system calls
at the edge are injected: `open_pidfd` (a descriptor on /dev/null stands in for the pidfd of
a fixture pid) and `send`, which records (pid, signal) and signals nothing. Outcomes are the
finding's `outcome` and `reason` (README, "Finding format").
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.actions.kill import Enforcer
from agent.decide import Decision, Protection
from agent.engine import loader
from agent.engine.ruleset import Match, Rule
from agent.model import Event, Pod, Process
from agent.sources.procfs import ProcFS
from agent.sources.proctree import ProcessTree

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "proc"
DOCKER_ID = "59de2a815200d473ab0a078bdcee0b8bc80aca90c1df285f4ecfdbca5566c2cd"
K8S_ID = "d8909a4e1b423fe77fef16afc7c75b201ad1c9f557c0e571225e927b7a338a9c"
POD_DIR = "kubepods/burstable/pod8d5c2a4e-1b7f-4c3a-9e2d-6f0a1b2c3d4e"
STOP, KILL = signal.SIGSTOP, signal.SIGKILL


class Pidfds:
    """pidfd_open and pidfd_send_signal for the fixture host: every fixture pid is alive
    unless listed in `gone`; signals are recorded as (pid, signal), never sent."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.gone: set[int] = set()
        self.exit_on_signal: set[int] = set()   # exits between the check and the signal
        self.sent: list[tuple[int, int]] = []
        self.on_send: Callable[[int, int], None] = lambda pid, sig: None
        self._pid_of: dict[int, int] = {}
        self.open_fds: set[int] = set()

    def open(self, pid: int) -> int:
        if pid in self.gone or not (self.root / str(pid)).is_dir():
            raise ProcessLookupError(pid)
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._pid_of[fd] = pid
        self.open_fds.add(fd)
        return fd

    def send(self, fd: int, sig: int) -> None:
        pid = self._pid_of[fd]
        if pid in self.exit_on_signal:
            raise ProcessLookupError(pid)
        self.sent.append((pid, sig))
        self.on_send(pid, sig)

    def leaked(self) -> list[int]:
        """Stand-in pidfds the enforcer did not close."""
        out = []
        for fd in self.open_fds:
            try:
                os.fstat(fd)
            except OSError:
                continue
            if os.readlink(f"/proc/self/fd/{fd}") == os.devnull:
                out.append(fd)
        return out


class Deleter:
    """A pod deleter (the API-server edge): records the pods it is asked to delete."""

    def __init__(self) -> None:
        self.pods: list[Pod] = []

    def request(self, pod: Pod) -> str:
        self.pods.append(pod)
        return f"pod {pod.namespace}/{pod.name} deletion requested"


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "proc", symlinks=True))


@pytest.fixture
def cgroup(tmp_path: Path) -> Path:
    """An empty cgroup v2 hierarchy (the root's cgroup.procs only)."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.procs").write_text("")
    return root


@pytest.fixture
def pidfds(proc: Path) -> Pidfds:
    return Pidfds(proc)


@pytest.fixture
def make(proc: Path, cgroup: Path, pidfds: Pidfds):
    def build(protection: Protection | None = None, **kw) -> Enforcer:
        fs = ProcFS(str(proc))
        return Enforcer(fs, ProcessTree(fs), protection or Protection(), send=pidfds.send,
                        open_pidfd=pidfds.open, cgroup_root=str(cgroup), **kw)
    yield build
    assert pidfds.leaked() == [], "every pidfd opened is closed"


def event(proc: Path, pid: int, **changes) -> Event:
    """The event of a fixture process as the agent sees it (ancestry and workspace)."""
    tree = ProcessTree(ProcFS(str(proc)))
    procs = {p.pid: p for p in tree.scan()}
    ev = tree.event("exec", procs[pid], 0.0)
    return dataclasses.replace(ev, **changes) if changes else ev


def with_process(ev: Event, **changes) -> Event:
    return dataclasses.replace(ev, process=dataclasses.replace(ev.process, **changes))


_RULE: Rule | None = None


def decision(ev: Event, action: str) -> Decision:
    """A `kill` decision for `ev` by a rule with `action` (as `decide` makes in enforce)."""
    global _RULE
    if _RULE is None:
        _RULE = next(r for r in loader.load([loader.bundled_rules_dir()]).rules
                     if r.id == "crypto-miner-exec")
    rule = dataclasses.replace(_RULE, action=action)
    return Decision(Match(rule, ev, "m"), "enforce", "kill")


def cgroup_dir(root: Path, path: str, procs: list[int]) -> Path:
    d = root / path
    d.mkdir(parents=True)
    (d / "cgroup.procs").write_text("".join(f"{p}\n" for p in procs))
    (d / "cgroup.kill").write_text("0")
    return d


# -- kill: one process instance -----------------------------------------------------------

def test_kill_signals_the_process_that_started_at_the_findings_time(make, proc, pidfds):
    ev = event(proc, 1400)
    assert ev.process.starttime == 60200
    done = make().carry_out(decision(ev, "kill"))
    assert (done.outcome, done.reason) == ("killed", "")
    assert pidfds.sent == [(1400, KILL)]


def test_a_recycled_pid_is_never_signalled(make, proc, pidfds):
    ev = event(proc, 1400)
    # the finding is about the process that had pid 1400 before; the pid now names another
    done = make().carry_out(decision(with_process(ev, starttime=ev.process.starttime - 1), "kill"))
    assert (done.outcome, done.reason) == ("gone", "exited before the kill")
    assert pidfds.sent == []


def test_a_pid_that_is_no_more_is_gone(make, proc, pidfds):
    pidfds.gone.add(1400)
    done = make().carry_out(decision(event(proc, 1400), "kill"))
    assert (done.outcome, done.reason) == ("gone", "exited before the kill")


def test_a_process_that_exits_between_the_check_and_the_signal_is_gone(make, proc, pidfds):
    pidfds.exit_on_signal.add(1400)
    assert make().kill(1400, 60200).outcome == "gone"


def test_a_pid_whose_stat_vanished_after_pidfd_open_is_gone(make, proc, pidfds):
    (proc / "1400" / "stat").unlink()
    assert make().kill(1400, 60200).outcome == "gone"
    assert pidfds.sent == []


@pytest.mark.parametrize("comm", ["a) (b", "x ) 1 2 3", ")"])
def test_the_start_time_is_found_behind_a_comm_made_to_look_like_fields(make, proc, pidfds,
                                                                        comm):
    # the identity check reads field 22 after the *last* ')': a comm cannot shift it
    stat = proc / "1400" / "stat"
    stat.write_text(stat.read_text().replace("(xmrig)", f"({comm})"))
    assert make().kill(1400, 60200).outcome == "killed"
    assert make().kill(1400, 60201).outcome == "gone"
    assert pidfds.sent == [(1400, KILL)]


def test_a_garbled_stat_is_gone_not_killed(make, proc, pidfds):
    (proc / "1400" / "stat").write_text("1400 (xmrig) S 1")
    assert make().kill(1400, 60200).outcome == "gone"
    assert pidfds.sent == []


def test_out_of_descriptors_for_the_identity_check_fails_and_closes_the_pidfd(
        make, proc, pidfds, monkeypatch):
    import errno

    from agent.actions import kill as kill_mod

    real_open = os.open

    def no_fds(path, *a, **kw):
        if str(path).endswith("/1400/stat"):
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(kill_mod.os, "open", no_fds)
    done = make().carry_out(decision(event(proc, 1400), "kill"))
    assert done.outcome == "failed" and "out of file descriptors" in done.reason
    assert pidfds.sent == [] and pidfds.leaked() == []  # the pidfd opened first is closed


# -- never a protected process ------------------------------------------------------------

@pytest.mark.parametrize(("pid", "why"), [
    (1, "pid 1"),
    (2, "kernel thread"),
    (57, "kernel thread"),
    (410, "protected name sshd"),
])
@pytest.mark.parametrize("action", ["kill", "kill-workspace", "kill-container", "delete-pod"])
def test_a_protected_process_is_never_signalled_whatever_the_action(make, proc, pidfds, pid,
                                                                    why, action):
    # `decide` refuses these before an enforcer sees them; the enforcer refuses them too
    done = make(Protection()).carry_out(decision(event(proc, pid), action))
    assert (done.outcome, done.reason) == ("protected", why)
    assert pidfds.sent == []


def test_the_agent_itself_is_never_signalled(make, proc, pidfds):
    agent = ProcFS(str(proc)).read(1201)
    done = make(Protection.of([agent])).carry_out(decision(event(proc, 1201), "kill"))
    assert (done.outcome, done.reason) == ("protected", "the agent or its ancestor")
    assert pidfds.sent == []


def test_a_reload_changes_what_is_protected(make, proc, pidfds):
    e = make(Protection(names=frozenset()))
    e.reconfigure(Protection(names=frozenset({"bash"})), None)
    done = e.carry_out(decision(event(proc, 1201), "kill"))
    assert (done.outcome, done.reason) == ("protected", "protected name bash")
    e.reconfigure(Protection(names=frozenset()), None)
    assert e.carry_out(decision(event(proc, 1201), "kill")).outcome == "killed"
    assert pidfds.sent == [(1201, KILL)]


def test_nothing_is_patched_on_after_construction(make):
    e = make()
    with pytest.raises(AttributeError):
        e.pod_deleter = Deleter()  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        e.protection = Protection()  # type: ignore[misc]


def test_decisions_other_than_kill_pass_through_untouched(make, proc, pidfds):
    d = dataclasses.replace(decision(event(proc, 1400), "kill"), outcome="would_kill")
    assert make().carry_out(d) is d
    assert pidfds.sent == []


# -- kill-workspace -----------------------------------------------------------------------

def test_kill_workspace_stops_every_process_then_kills_them(make, proc, pidfds):
    done = make().carry_out(decision(event(proc, 1400), "kill-workspace"))
    assert (done.outcome, done.reason) == ("killed", "3 processes of workspace ws-fixture")
    members = [1302, 1400, 1401]
    assert sorted(pidfds.sent[:3]) == [(pid, STOP) for pid in members]
    assert sorted(pidfds.sent[3:]) == [(pid, KILL) for pid in members]


def test_kill_workspace_catches_a_child_forked_while_it_stops(make, proc, pidfds):
    def fork_once(pid: int, sig: int) -> None:
        child = proc / "1500"
        if sig == STOP and pid == 1400 and not child.exists():
            shutil.copytree(proc / "1401", child, symlinks=True)
            stat = (child / "stat").read_text()
            (child / "stat").write_text(stat.replace("1401 (sh) S 1400", "1500 (sh) S 1401"))
    pidfds.on_send = fork_once
    res = make().kill_workspace("ws-fixture")
    assert (res.outcome, res.detail) == ("killed", "4 processes of workspace ws-fixture")
    assert (1500, STOP) in pidfds.sent and pidfds.sent[-4:].count((1500, KILL)) == 1
    assert all(sig == KILL for _, sig in pidfds.sent[-4:])


def test_kill_workspace_leaves_protected_processes_of_it_alone(make, proc, pidfds, caplog):
    e = make(Protection(names=frozenset({"sh"})))
    res = e.kill_workspace("ws-fixture")
    assert (res.outcome, res.detail) == ("killed", "2 processes of workspace ws-fixture")
    assert {pid for pid, _ in pidfds.sent} == {1302, 1400}
    assert "left protected processes alone: 1401 (protected name dash)" in caplog.text


def test_kill_workspace_of_a_workspace_with_no_process_left_is_gone(make, pidfds):
    res = make().kill_workspace("ws-none")
    assert (res.outcome, res.detail) == ("gone", "no process of workspace ws-none left")
    assert pidfds.sent == []


def test_kill_workspace_without_a_workspace_kills_the_process(make, proc, pidfds):
    done = make().carry_out(decision(event(proc, 1201), "kill-workspace"))
    assert done.outcome == "killed" and pidfds.sent == [(1201, KILL)]


# -- kill-container -----------------------------------------------------------------------

@pytest.mark.parametrize("mount", ["", "unified"])
def test_kill_container_v2_writes_cgroup_kill_and_signals_nothing(make, proc, cgroup, pidfds,
                                                                 mount):
    if mount:  # a hybrid host: the unified hierarchy beside the v1 ones
        (cgroup / mount).mkdir()
        (cgroup / mount / "cgroup.procs").write_text("")
    d = cgroup_dir(cgroup / mount, f"system.slice/docker-{DOCKER_ID}.scope", [2001])
    done = make().carry_out(decision(event(proc, 2001), "kill-container"))
    assert (done.outcome, done.reason) == ("killed", "container 59de2a815200 (cgroup.kill)")
    assert (d / "cgroup.kill").read_text() == "1"
    assert pidfds.sent == []


def test_kill_container_v1_stops_and_kills_each_process_of_its_cgroup(make, proc, cgroup,
                                                                     pidfds):
    # pid 1 listed too (never in a container's cgroup, but if it were: protected, skipped);
    # 9999 has exited since the list was read
    cgroup_dir(cgroup / "pids", f"{POD_DIR}/{K8S_ID}", [1, 2101, 9999])
    done = make().carry_out(decision(event(proc, 2101), "kill-container"))
    assert (done.outcome, done.reason) == ("killed", "1 processes of container d8909a4e1b42")
    assert pidfds.sent == [(2101, STOP), (2101, KILL)]


def test_kill_container_v1_of_an_emptied_cgroup_kills_the_process(make, proc, cgroup, pidfds):
    cgroup_dir(cgroup / "pids", f"{POD_DIR}/{K8S_ID}", [])
    done = make().carry_out(decision(event(proc, 2101), "kill-container"))
    assert done.outcome == "killed"
    assert done.reason == "the container has no cgroup of its own; killed the process"
    assert pidfds.sent == [(2101, KILL)]


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_a_shared_cgroup_is_never_killed(make, proc, cgroup, pidfds, version):
    # a process said to be in a container whose cgroup is not the container's own: the
    # login session it shares with the workspace processes
    shared = "user.slice/user-1000.slice/session-3.scope"
    if version == "v1":
        (proc / "1201" / "cgroup").write_text(f"12:pids:/{shared}\n0::/\n")
        d = cgroup_dir(cgroup / "pids", shared, [1201, 1302, 1400, 1401])
    else:
        d = cgroup_dir(cgroup, shared, [1201, 1302, 1400, 1401])
    ev = with_process(event(proc, 1201), container_id=DOCKER_ID)
    done = make().carry_out(decision(ev, "kill-container"))
    assert done.outcome == "killed"
    assert done.reason == "the container has no cgroup of its own; killed the process"
    assert (d / "cgroup.kill").read_text() == "0"
    assert pidfds.sent == [(1201, KILL)]


def test_kill_container_of_a_process_in_no_container_never_kills_its_cgroup(make, proc, cgroup,
                                                                          pidfds):
    d = cgroup_dir(cgroup, "user.slice/user-1000.slice/session-3.scope", [1201, 1302])
    out = make().kill_container(event(proc, 1201))
    assert out.outcome == "killed" and "no cgroup of its own" in out.detail
    assert (d / "cgroup.kill").read_text() == "0"
    assert pidfds.sent == [(1201, KILL)]


def test_kill_container_finds_the_host_cgroup_from_inside_a_cgroup_namespace(make, proc,
                                                                              cgroup):
    """In a pod the agent has its own cgroup namespace: /proc/PID/cgroup of another
    container reads `/../../kubepods-besteffort.slice/...`. The container's cgroup is found
    in the host hierarchy (and must hold the pid) before cgroup.kill is written."""
    rel = (f"kubepods-besteffort.slice/kubepods-besteffort-podx.slice/"
           f"cri-containerd-{DOCKER_ID}.scope")
    (proc / "2001" / "cgroup").write_text(f"0::/../../{rel}\n")
    host = cgroup_dir(cgroup, f"kubepods.slice/{rel}", [2001])
    decoy = cgroup_dir(cgroup, f"other.slice/{rel}", [1])  # the same suffix, not our pid
    out = make().kill_container(event(proc, 2001))
    assert out.outcome == "killed" and "cgroup.kill" in out.detail
    assert (host / "cgroup.kill").read_text() == "1"
    assert (decoy / "cgroup.kill").read_text() == "0"


def test_kill_container_from_a_namespace_never_takes_a_cgroup_without_the_pid(make, proc,
                                                                             cgroup, pidfds):
    rel = f"kubepods-podx.slice/cri-containerd-{DOCKER_ID}.scope"
    (proc / "2001" / "cgroup").write_text(f"0::/../{rel}\n")
    decoy = cgroup_dir(cgroup, f"kubepods.slice/{rel}", [1, 7])
    out = make().kill_container(event(proc, 2001))
    assert out.outcome == "killed" and "no cgroup of its own" in out.detail
    assert (decoy / "cgroup.kill").read_text() == "0"
    assert pidfds.sent == [(2001, KILL)]


def test_a_cgroup_kill_that_cannot_be_written_fails_and_says_why(make, proc, cgroup, pidfds):
    d = cgroup_dir(cgroup, f"system.slice/docker-{DOCKER_ID}.scope", [2001])
    (d / "cgroup.kill").unlink()
    (d / "cgroup.kill").mkdir()  # EISDIR on write
    done = make().carry_out(decision(event(proc, 2001), "kill-container"))
    assert done.outcome == "failed"
    assert done.reason == "IsADirectoryError: Is a directory; nothing was signalled"


# -- delete-pod ---------------------------------------------------------------------------

POD = Pod("team-a", "ws-1", "uid-1")


def test_delete_pod_kills_the_process_then_asks_for_its_pod(make, proc, pidfds):
    deleter = Deleter()
    done = make(pod_deleter=deleter).carry_out(decision(event(proc, 2201, pod=POD),
                                                        "delete-pod"))
    assert (done.outcome, done.reason) == ("killed", "pod team-a/ws-1 deletion requested")
    assert deleter.pods == [POD] and pidfds.sent == [(2201, KILL)]


def test_delete_pod_follows_the_config_through_reconfigure(make, proc):
    deleter = Deleter()
    e = make()
    d = decision(event(proc, 2201, pod=POD), "delete-pod")
    off = "delete_pod is off in the config: process killed, pod left running"
    assert (e.carry_out(d).outcome, e.carry_out(d).reason) == ("killed", off)
    e.reconfigure(Protection(), deleter)
    assert e.carry_out(d).reason == "pod team-a/ws-1 deletion requested"
    e.reconfigure(Protection(), None)
    assert e.carry_out(d).reason == off
    assert deleter.pods == [POD]


def test_delete_pod_of_a_process_in_no_known_pod_kills_the_process_only(make, proc):
    deleter = Deleter()
    done = make(pod_deleter=deleter).carry_out(decision(event(proc, 2201), "delete-pod"))
    assert (done.outcome, done.reason) == ("killed", "not in a known pod: process killed only")
    assert deleter.pods == []


def test_delete_pod_of_a_process_gone_still_asks_for_the_pod(make, proc, pidfds):
    deleter = Deleter()
    pidfds.gone.add(2201)
    done = make(pod_deleter=deleter).carry_out(decision(event(proc, 2201, pod=POD),
                                                        "delete-pod"))
    assert done.outcome == "gone"
    assert done.reason == "exited before the kill; pod team-a/ws-1 deletion requested"


def test_process_fields_the_tests_rely_on(proc):
    """Guards the fixture: the processes above are what the tests take them for."""
    fs = ProcFS(str(proc))
    p: dict[int, Process] = {pid: fs.read(pid) for pid in (1201, 1400, 2001, 2101, 2201)}
    assert p[2001].container_id == DOCKER_ID and p[2101].container_id == K8S_ID
    assert p[1201].container_id == "" and p[1400].starttime == 60200
