"""The eBPF sensors through BCC: the only module that imports `bcc`.

`BpfSensor` compiles bpf/sensors.bpf.c, attaches its tracepoints and hands every decoded
record to a callback. `check()` says, before anything is loaded, what is missing on this
machine and how to fix it, so the agent can fall back to procfs scans with one clear
message instead of a compiler traceback.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

from agent.sources.kevents import RawEvent, decode

log = logging.getLogger("nodewarden.bpf")

TRACEFS = "/sys/kernel/tracing"
DEFAULT_RING_PAGES = 1024  # 4 MiB: ~12,000 events of headroom for a stalled consumer


class BpfUnavailable(Exception):
    """eBPF cannot run here; `reason` says what is missing, `fix` how to get it."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(f"{reason} ({fix})")
        self.reason = reason
        self.fix = fix


def source_dir() -> Path:
    """bpf/ as installed with the package (agent.bpf), or the checkout's."""
    return Path(str(files("agent.bpf")))


def program_text() -> str:
    """The BPF program as BCC compiles it, header inlined: what `--print-bpf` shows."""
    d = source_dir()
    header = (d / "events.h").read_text()
    body = (d / "sensors.bpf.c").read_text()
    return body.replace('#include "events.h"', header)


def _tracefs_ready() -> bool:
    return os.path.isdir(f"{TRACEFS}/events/sched")


def _mount_tracefs() -> None:
    # the equivalent of `mount -t tracefs nodev /sys/kernel/tracing`
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"nodev", TRACEFS.encode(), b"tracefs", 0, None) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def check() -> None:
    """Raise BpfUnavailable naming the first thing eBPF lacks on this machine."""
    if os.geteuid() != 0:
        raise BpfUnavailable("not running as root", "run as root, or in the DaemonSet with "
                             "CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN")
    try:
        import bcc  # noqa: F401
    except ImportError:
        raise BpfUnavailable("the bcc Python module is missing",
                             "apt-get install python3-bpfcc, and use a venv made with "
                             "--system-site-packages (scripts/setup.sh does both)") from None
    if not _tracefs_ready():
        try:
            _mount_tracefs()
        except OSError as e:
            raise BpfUnavailable(f"tracefs is not mounted at {TRACEFS} and mounting it "
                                 f"failed: {e.strerror}",
                                 f"mount -t tracefs nodev {TRACEFS}") from None
        if not _tracefs_ready():
            raise BpfUnavailable("the kernel exposes no tracepoints",
                                 "use a kernel built with CONFIG_FTRACE and tracepoints")
        log.info("mounted tracefs at %s", TRACEFS)
    build = Path(f"/lib/modules/{platform.release()}/build")
    if not build.exists():
        raise BpfUnavailable(f"kernel headers are missing ({build})",
                             "apt-get install linux-headers-$(uname -r) or "
                             "linux-headers-cloud-amd64 and link it there (scripts/setup.sh)")


def kernel_has_ringbuf(release: str | None = None) -> bool:
    """BPF ring buffers exist from Linux 5.8 on; older kernels get the perf buffer."""
    parts = (release or platform.release()).split(".")
    try:
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (5, 8)
    except (IndexError, ValueError):
        return False


class BpfSensor:
    """Loaded sensors: call `poll()` in a loop; `lost()` counts records the kernel dropped."""

    def __init__(self, on_event: Callable[[RawEvent], None], ring_pages: int = DEFAULT_RING_PAGES,
                 perf: bool | None = None) -> None:
        from bcc import BPF

        if perf is None:
            perf = not kernel_has_ringbuf()
        if ring_pages < 1 or ring_pages & (ring_pages - 1):
            raise ValueError("ring_pages must be a power of two")
        self._on_event = on_event
        self.perf = perf
        cflags = [f"-I{source_dir()}", f"-DNW_RINGBUF_PAGES={ring_pages}", "-w"]
        if perf:
            cflags.append("-DNW_PERF")
        self._bpf = BPF(src_file=str(source_dir() / "sensors.bpf.c").encode(), cflags=cflags)
        self._lost = self._bpf["lost"]
        events = self._bpf["events"]
        if perf:
            # wakeup after a few records rather than each: the measured ceiling of a Python
            # consumer with wakeup_events=1 is ~100k/s
            events.open_perf_buffer(self._perf_cb, page_cnt=ring_pages,
                                    lost_cb=self._perf_lost)
        else:
            events.open_ring_buffer(self._ring_cb)
        self._perf_lost_count = 0

    def _ring_cb(self, _ctx: object, data: int, size: int) -> int:
        self._on_event(decode(ctypes.string_at(data, size)))
        return 0

    def _perf_cb(self, _cpu: int, data: int, size: int) -> None:
        self._on_event(decode(ctypes.string_at(data, size)))

    def _perf_lost(self, count: int) -> None:
        self._perf_lost_count += count

    def set_kernel_rules(self, specs: list[tuple[set[str], set[str], bool]]) -> None:
        """Load the in-kernel exec rules: one (names, paths, enforce) per slot, in order.
        Replaces what was there, so a reload never leaves a stale name behind."""
        names_t, paths_t, cfg = self._bpf["kexec_names"], self._bpf["kexec_paths"], self._bpf["kcfg"]
        names: dict[bytes, int] = {}
        paths: dict[bytes, int] = {}
        enforce = 0
        for slot, (ns, ps, enf) in enumerate(specs):
            for n in ns:
                names[n.encode()[:15]] = names.get(n.encode()[:15], 0) | (1 << slot)
            for p in ps:
                paths[p.encode()[:255]] = paths.get(p.encode()[:255], 0) | (1 << slot)
            if enf:
                enforce |= 1 << slot
        # enforcement off while the maps change, so no half-written set can kill
        cfg[ctypes.c_int(0)] = ctypes.c_ulonglong(0)
        names_t.clear()
        paths_t.clear()
        for raw, mask in names.items():
            k = names_t.Key()
            k.comm = raw
            names_t[k] = ctypes.c_ulonglong(mask)
        for raw, mask in paths.items():
            k = paths_t.Key()
            k.path = raw
            paths_t[k] = ctypes.c_ulonglong(mask)
        cfg[ctypes.c_int(0)] = ctypes.c_ulonglong(enforce)

    def poll(self, timeout_ms: int) -> None:
        """Deliver pending records to the callback, waiting up to `timeout_ms` for one."""
        if self.perf:
            self._bpf.perf_buffer_poll(timeout=timeout_ms)
        else:
            self._bpf.ring_buffer_poll(timeout_ms)

    def lost(self) -> int:
        """Records dropped since load (reserve failures counted in the kernel)."""
        return int(self._lost[0].value) + self._perf_lost_count

    def close(self) -> None:
        """Detach every tracepoint and free the maps."""
        self._bpf.cleanup()
