"""`realtime: true`: the event thread in SCHED_FIFO, or one warning and on at normal priority."""

from __future__ import annotations

import gc
import io
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.config import Config, load_config
from agent.errors import ConfigError
from agent.realtime import (
    PRIORITY,
    SWITCH_INTERVAL,
    Realtime,
    between_records,
    settle_heap,
    tuned,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "proc"
FIFO = os.SCHED_FIFO | os.SCHED_RESET_ON_FORK


class Setter:
    """sched_setscheduler that notes each call; refuses while `refuse` is set."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.calls: list[tuple[int, int]] = []

    def __call__(self, pid: int, policy: int, param: os.sched_param) -> None:
        if self.refuse:
            raise PermissionError(1, "Operation not permitted")
        self.calls.append((policy, param.sched_priority))


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_off_by_default_and_a_bool(tmp_path):
    assert Config().realtime is False
    cfg = tmp_path / "c.yaml"
    cfg.write_text("realtime: true\n")
    assert load_config(str(cfg)).realtime is True
    cfg.write_text("realtime: yes please\n")
    with pytest.raises(ConfigError, match="realtime"):
        load_config(str(cfg))


def test_on_asks_for_fifo_at_a_modest_priority_not_inherited_and_off_undoes_it():
    s = Setter()
    rt = Realtime(s)
    assert rt.use(True) is True
    assert rt.use(True) is True  # a reload with the same setting changes nothing
    assert rt.use(False) is False
    assert s.calls == [(FIFO, PRIORITY), (os.SCHED_OTHER, 0)]
    assert 1 <= PRIORITY < 50  # below the kernel's threaded interrupt handlers


def test_without_the_capability_it_says_so_once_and_runs_on(caplog):
    caplog.set_level(logging.INFO, logger="nodewarden")
    s = Setter(refuse=True)
    rt = Realtime(s)
    assert rt.use(True) is False
    assert rt.use(True) is False      # every reload asks again ...
    assert rt.use(False) is False
    assert rt.use(True) is False
    said = warnings(caplog)
    assert len(said) == 1              # ... and is told once
    assert "CAP_SYS_NICE" in said[0] and "normal priority" in said[0]


def test_a_capability_granted_later_takes_effect_on_the_next_reload(caplog):
    s = Setter(refuse=True)
    rt = Realtime(s)
    rt.use(True)
    s.refuse = False
    assert rt.use(True) is True
    assert s.calls == [(FIFO, PRIORITY)]


@pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_FIFO needs root (CAP_SYS_NICE)")
def test_the_calling_thread_is_fifo_and_the_threads_it_starts_are_not():
    seen: dict[str, int] = {}

    def child() -> None:
        seen["child"] = os.sched_getscheduler(0)

    def event_thread() -> None:
        rt = Realtime()
        rt.use(True)
        seen["event"] = os.sched_getscheduler(0)
        seen["priority"] = os.sched_getparam(0).sched_priority
        t = threading.Thread(target=child)
        t.start()
        t.join()
        rt.use(False)
        seen["after"] = os.sched_getscheduler(0)

    t = threading.Thread(target=event_thread)
    t.start()
    t.join(10)
    assert seen["event"] & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO
    assert seen["priority"] == PRIORITY
    assert seen["child"] == os.SCHED_OTHER
    assert seen["after"] == os.SCHED_OTHER
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the test's own thread never was


def run_once(tmp_path: Path, prefix: list[str]) -> subprocess.CompletedProcess[str]:
    """`nodewarden run --once` with realtime: true on the fixture host."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"realtime: true\nlock_file: {tmp_path}/lock\nlisten: 'off'\n"
                   "kubernetes: 'off'\n")
    return subprocess.run([*prefix, sys.executable, "-m", "agent", "run", "--config", str(cfg),
                           "--once", "--no-bpf", "--proc-root", str(FIXTURE)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("capsh"),
                    reason="needs root and capsh to drop CAP_SYS_NICE")
def test_nodewarden_run_without_cap_sys_nice_warns_once_and_runs(tmp_path):
    r = run_once(tmp_path, ["capsh", "--drop=cap_sys_nice", "--", "-c", 'exec "$@"', "sh"])
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("SCHED_FIFO refused") == 1
    assert "crypto-miner-exec" in r.stdout  # and it judged the host as ever


@pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_FIFO needs root (CAP_SYS_NICE)")
def test_nodewarden_run_with_cap_sys_nice_says_the_event_thread_is_fifo(tmp_path):
    r = run_once(tmp_path, [])
    assert r.returncode == 0, r.stderr
    assert f"event thread in SCHED_FIFO, priority {PRIORITY}" in r.stderr
    assert "refused" not in r.stderr


# -- the interpreter around the event thread: GIL switch interval, garbage collection --------

def test_tuned_hands_the_gil_over_within_half_a_millisecond_and_restores_it():
    before = sys.getswitchinterval()
    with tuned():
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
        assert SWITCH_INTERVAL <= 0.001 < before  # CPython's default is 5 ms
    assert sys.getswitchinterval() == before
    with pytest.raises(RuntimeError), tuned():
        raise RuntimeError("the agent failed")
    assert sys.getswitchinterval() == before


def test_settle_heap_freezes_what_is_alive_and_tuned_unfreezes_it_at_the_end():
    with tuned():
        assert settle_heap() > 1000 and gc.get_freeze_count() > 1000
    assert gc.get_freeze_count() == 0


def test_no_collection_runs_while_a_record_is_handled_and_one_may_after():
    seen: list[bool] = []

    def handle(record: int) -> None:
        seen.append(gc.isenabled())
        if record < 0:
            raise ValueError(record)

    held = between_records(handle)
    assert gc.isenabled()
    held(1)
    assert seen == [False] and gc.isenabled()
    with pytest.raises(ValueError):
        held(-1)
    assert gc.isenabled()  # a failing record leaves the collector on
    gc.disable()
    try:
        held(2)  # a caller that turned it off keeps it off
        assert not gc.isenabled()
    finally:
        gc.enable()


def _ruleset():
    from agent.engine import loader

    return loader.load([loader.bundled_rules_dir()])


def test_run_is_tuned_while_the_loop_runs_and_leaves_the_interpreter_as_it_was(monkeypatch):
    from agent import app

    before = sys.getswitchinterval()
    at_ready: dict[str, float] = {}
    rt = app.Runtime(Config(listen="off", bpf="off", kubernetes="off",
                            proc_root=str(FIXTURE), lock_file=""),
                     _ruleset(), app.Overrides(), None, io.StringIO(), "json")

    def ready(running: str) -> None:
        at_ready["interval"] = sys.getswitchinterval()
        at_ready["frozen"] = gc.get_freeze_count()
        rt.stop.set()

    real_ready = app._ready
    monkeypatch.setattr(app, "_ready", lambda running: (real_ready(running), ready(running)))
    assert rt.run() == 0
    assert at_ready["interval"] == pytest.approx(SWITCH_INTERVAL)
    assert at_ready["frozen"] > 1000
    assert sys.getswitchinterval() == before and gc.get_freeze_count() == 0


def test_other_commands_leave_the_switch_interval_and_the_heap_alone():
    from agent import cli

    before = sys.getswitchinterval()
    out, err = io.StringIO(), io.StringIO()
    cli.main(["scan", "--proc-root", str(FIXTURE), "--format", "json"], out, err)
    assert "crypto-miner-exec" in out.getvalue()
    assert sys.getswitchinterval() == before and gc.get_freeze_count() == 0
