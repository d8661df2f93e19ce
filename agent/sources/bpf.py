"""The BPF sensors' loader through BCC: the only module that imports `bcc`.

Every BPF sensor is a `.bpf.c` file under bpf/ that includes `sensor.h` (the shared ring
buffer, loss counter and record). `BpfProgram` compiles the files of the enabled sensors
into ONE BCC module, so there is one compile, one ring buffer to poll and one loss count,
and a sensor that is off has no program in the kernel. BCC attaches every
`TRACEPOINT_PROBE` of what it compiles; a sensor with other programs (the cgroup connect
guard) attaches them in its `start()`.

`check()` says, before anything is loaded, what is missing on this machine and how to fix
it, so the agent can fall back with one clear message instead of a compiler traceback.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import platform
import re
import struct
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, ClassVar

from agent.model import EventKind
from agent.sources.kevents import KcfgSlot, decode
from agent.sources.ringbuf import RingReader
from agent.sources.sensor import OnRecord, SensorUnavailable

log = logging.getLogger("nodewarden.bpf")

TRACEFS = "/sys/kernel/tracing"
DEFAULT_RING_PAGES = 1024  # 4 MiB: ~12,000 events of headroom for a stalled consumer
MAX_BATCH = 4096  # records per poll, so the agent's loop turns at least every few ms
# While records flow the kernel wakes us at most once per millisecond for TCP, fork and
# exit records (NW_WAKE_GAP_NS in bpf/sensor.h; exec records and verdicts wake us at once);
# one sent in between is picked up by a poll that waits at most this long after the last
# records came
LINGER_MS = 2

# the compatibility name of what check() raises
BpfUnavailable = SensorUnavailable


def source_dir() -> Path:
    """bpf/ as installed with the package (agent.bpf), or the checkout's."""
    return Path(str(files("agent.bpf")))


_LOCAL_INCLUDE = re.compile(r'^#include "([\w.]+)"[ \t]*$', re.MULTILINE)


def program_text(sources: Sequence[str], directory: Path | None = None) -> str:
    """The BPF program of these sensor sources as BCC compiles it: each file in order, its
    `#include "..."` of bpf/ files inlined once (what `--print-bpf` shows)."""
    d = directory or source_dir()
    seen: set[str] = set()

    def inline(name: str) -> str:
        if name in seen:
            return ""
        seen.add(name)
        body = (d / name).read_text()
        return _LOCAL_INCLUDE.sub(lambda m: inline(m.group(1)).rstrip("\n"), body)

    parts = [f"/* nodewarden BPF program: {', '.join(sources)} (bpf/, composed by "
             f"agent/sources/bpf.py) */\n"]
    parts.extend(f"/* ---- {name} ---- */\n{inline(name)}" for name in sources)
    return "\n".join(parts)


_TRACEPOINT = re.compile(r"^TRACEPOINT_PROBE\((\w+),\s*(\w+)\)", re.MULTILINE)


def tracepoints_of(source: str, directory: Path | None = None) -> list[str]:
    """The tracepoints (category:name) a sensor source attaches, in its order."""
    text = ((directory or source_dir()) / source).read_text()
    return [f"{cat}:{name}" for cat, name in _TRACEPOINT.findall(text)]


def missing_tracepoints(names: Sequence[str], tracefs: str = TRACEFS) -> list[str]:
    """Those of the tracepoints (category:name) this kernel does not have (a syscall it
    was built without, one newer than it). BCC cannot compile a program that names one."""
    return [n for n in names if not os.path.isdir(f"{tracefs}/events/{n.replace(':', '/')}")]


def without(tracepoint: str) -> str:
    """The cflag that leaves an optional tracepoint's probe out of its source, which
    wraps it in `#ifndef NW_NO_<name>`."""
    return f"-DNW_NO_{tracepoint.partition(':')[2]}"


def _tracefs_ready() -> bool:
    return os.path.isdir(f"{TRACEFS}/events/sched")


def _mount_tracefs() -> None:
    # the equivalent of `mount -t tracefs nodev /sys/kernel/tracing`
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"nodev", TRACEFS.encode(), b"tracefs", 0, None) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def check() -> None:
    """Raise SensorUnavailable naming the first thing eBPF lacks on this machine."""
    if os.geteuid() != 0:
        raise SensorUnavailable("not running as root", "run as root, or in the DaemonSet with "
                                "CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN")
    try:
        import bcc  # noqa: F401
    except ImportError:
        raise SensorUnavailable("the bcc Python module is missing",
                                "apt-get install python3-bpfcc, and use a venv made with "
                                "--system-site-packages (scripts/setup.sh does both)") from None
    if not _tracefs_ready():
        try:
            _mount_tracefs()
        except OSError as e:
            raise SensorUnavailable(f"tracefs is not mounted at {TRACEFS} and mounting it "
                                    f"failed: {e.strerror}",
                                    f"mount -t tracefs nodev {TRACEFS}") from None
        if not _tracefs_ready():
            raise SensorUnavailable("the kernel exposes no tracepoints",
                                    "use a kernel built with CONFIG_FTRACE and tracepoints")
        log.info("mounted tracefs at %s", TRACEFS)
    build = Path(f"/lib/modules/{platform.release()}/build")
    if not build.exists():
        raise SensorUnavailable(f"kernel headers are missing ({build})",
                                "apt-get install linux-headers-$(uname -r) or "
                                "linux-headers-cloud-amd64 and link it there (scripts/setup.sh)")


def kernel_has_ringbuf(release: str | None = None) -> bool:
    """BPF ring buffers exist from Linux 5.8 on; older kernels get the perf buffer."""
    parts = (release or platform.release()).split(".")
    try:
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (5, 8)
    except (IndexError, ValueError):
        return False


def set_kcfg(kcfg: Any, slot: KcfgSlot, value: int) -> None:
    """Write one entry of the kernel config array (`kcfg`, slots named in events.h)."""
    kcfg[ctypes.c_int(int(slot))] = ctypes.c_ulonglong(value)


# the libraries BCC compiles with; their pages are touched only while compiling
_COMPILER_LIBS = re.compile(r"/lib(LLVM|clang|clang-cpp|bcc)[-.][^/]*$")
_MADV_PAGEOUT = 21  # Linux 5.4


def release_compiler_memory(maps: str = "/proc/self/maps") -> int:
    """Give back what compiling the BPF program left resident: the heap LLVM freed
    (malloc_trim) and the pages of the compiler's libraries (madvise MADV_PAGEOUT, which
    drops them from this process; they are read again from the file if ever touched).
    Measured here: 167 MB resident after loading, 55 MB after this. Returns the bytes of
    resident memory released; 0 where the calls are unavailable (no glibc, Linux < 5.4)."""
    before = _resident()
    libc = ctypes.CDLL(None, use_errno=True)
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    try:
        with open(maps, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and _COMPILER_LIBS.search(parts[5].strip()):
            start, end = (int(x, 16) for x in parts[0].split("-"))
            madvise(start, end - start, _MADV_PAGEOUT)  # EINVAL on old kernels: ignored
    released = max(0, before - _resident())
    log.info("released %.0f MB the BPF compiler held", released / 1e6)
    return released


def _resident() -> int:
    """This process's resident set in bytes (0 when unknown)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


_U64 = struct.Struct("<Q")


def _map_page(map_fd: int) -> mmap.mmap | None:
    """The first page of an mmapable (BPF_F_MMAPABLE) array map, read-only: its values from
    offset 0; None where the kernel refuses (then the map is read through a lookup)."""
    try:
        return mmap.mmap(map_fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ)
    except OSError as e:
        log.debug("the loss counter is read through lookups (mmap: %s)", e)
        return None


class BpfProgram:
    """The enabled BPF sensors' sources compiled into one BCC module, with the one buffer
    they all write to. Polling it delivers every decoded record to `on_record`."""

    def __init__(self, sources: Sequence[str], on_record: OnRecord,
                 ring_pages: int = DEFAULT_RING_PAGES, perf: bool | None = None,
                 cflags: Sequence[str] = ()) -> None:
        from bcc import BPF

        if perf is None:
            perf = not kernel_has_ringbuf()
        if ring_pages < 1 or ring_pages & (ring_pages - 1):
            raise ValueError("ring_pages must be a power of two")
        self.sources = tuple(sources)
        self.perf = perf
        self._on_record = on_record
        # NW_AGENT_TGID: the kernel sensor never reports this process's own BPF loads,
        # which happen while its tracepoint attaches (before any map could be filled)
        # O_DIRECTORY differs between architectures: this machine's (the agent runs there)
        flags = [f"-DNW_RINGBUF_PAGES={ring_pages}", f"-DNW_AGENT_TGID={os.getpid()}",
                 f"-DNW_O_DIRECTORY={os.O_DIRECTORY}", "-w", *cflags]
        if perf:
            flags.append("-DNW_PERF")
        if "exec.bpf.c" in self.sources:
            # where the running kernel keeps the task facts an exec record carries
            from agent.sources.btf import task_cflags
            flags += task_cflags()
        self.bpf = BPF(text=program_text(self.sources).encode(), cflags=flags)
        self._lost = self.bpf["lost"]
        self._lost_page = _map_page(self._lost.map_fd)
        events = self.bpf["events"]
        self._perf_lost_count = 0
        self.errors = 0
        self._ring: RingReader | None = None
        self._last_records = 0.0   # monotonic time records last came
        # work a sensor owes the kernel now and then (`every`): [due, interval, call]
        self._periodic: list[list[Any]] = []
        self._next_due = float("inf")
        if perf:
            # wakeup after a few records rather than each: the measured ceiling of a Python
            # consumer with wakeup_events=1 is ~100k/s
            events.open_perf_buffer(self._perf_cb, page_cnt=ring_pages,
                                    lost_cb=self._perf_lost)
        else:
            # read from the map's pages in batches, not through BCC's callback per record
            self._ring = RingReader.open(events.map_fd, int(events.max_entries),
                                         self._deliver)

    def __getitem__(self, name: str) -> Any:
        """A map of the program, by its name in the C source."""
        return self.bpf[name]

    def tracepoints(self) -> list[str]:
        """The tracepoints attached, as category:name."""
        return sorted(tp.decode() if isinstance(tp, bytes) else str(tp)
                      for tp in self.bpf.tracepoint_fds)

    def _deliver(self, data: bytes | memoryview) -> None:
        try:
            self._on_record(decode(data))
        except Exception:
            # one bad record (or a bug in what handles it) must not stop the others
            self.errors += 1
            log.exception("error handling a kernel record (%d so far)", self.errors)

    def _perf_cb(self, _cpu: int, data: int, size: int) -> None:
        # ctypes would print and swallow an exception raised in a callback: _deliver logs
        self._deliver(ctypes.string_at(data, size))

    def _perf_lost(self, count: int) -> None:
        self._perf_lost_count += count

    def attach_tracepoint(self, tracepoint: str, fn_name: str) -> None:
        """Attach the program's function `fn_name` to `tracepoint` (category:name): for a
        sensor whose tracepoint another sensor's TRACEPOINT_PROBE already names."""
        self.bpf.attach_tracepoint(tp=tracepoint, fn_name=fn_name)

    def every(self, seconds: float, call: Callable[[], object]) -> None:
        """Have `poll` run `call` about once per `seconds` (the agent's loop polls at least
        every 100 ms): work a sensor owes its kernel side, such as asking for the counts
        no record carried yet."""
        due = time.monotonic() + seconds
        self._periodic.append([due, seconds, call])
        self._next_due = min(self._next_due, due)

    def _run_due(self, now: float) -> None:
        for entry in self._periodic:
            if now >= entry[0]:
                entry[0] = now + entry[1]
                try:
                    entry[2]()
                except OSError as e:
                    log.warning("periodic sensor work failed: %s", e)
        self._next_due = min(entry[0] for entry in self._periodic)

    def poll(self, timeout_ms: int) -> None:
        """Deliver pending records (at most MAX_BATCH) to the callback, waiting up to
        `timeout_ms` for one when none is pending."""
        now = time.monotonic()
        if now >= self._next_due:
            self._run_due(now)
        ring = self._ring
        if ring is None:
            self.bpf.perf_buffer_poll(timeout=timeout_ms)
            return
        if ring.read(MAX_BATCH):
            # timed after the read: no later than any record it read was sent (the
            # kernel's wake-up rules count on it)
            self._last_records = time.monotonic()
            return
        if not timeout_ms:
            return
        if now - self._last_records < LINGER_MS / 1000:
            # records flow: some may have been sent without a wake-up
            timeout_ms = LINGER_MS if timeout_ms < 0 else min(timeout_ms, LINGER_MS)
        ring.wait(timeout_ms)
        if ring.read(MAX_BATCH):
            self._last_records = time.monotonic()

    def fileno(self) -> int | None:
        """The ring buffer map's descriptor, readable while records wait (None with the
        perf buffer)."""
        return self._ring.fd if self._ring is not None else None

    def lost(self) -> int:
        """Records dropped since load (reserve failures counted in the kernel)."""
        if self._lost_page is not None:
            return int(_U64.unpack_from(self._lost_page, 0)[0]) + self._perf_lost_count
        return int(self._lost[0].value) + self._perf_lost_count

    def close(self) -> None:
        """Detach every tracepoint and free the maps."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._lost_page is not None:
            self._lost_page.close()
            self._lost_page = None
        self.bpf.cleanup()


@dataclass(frozen=True)
class KindSwitch:
    """How a BPF sensor's kernel side is told which of its record kinds to send: a u64 at
    `slot` of the array `map`, bit (1 << record kind) per event kind of `records`. The set
    bits are the kinds to leave out, or with `sends` the kinds to send (so the zero the
    map starts with sends all, or with `sends` none). A kind in `needs` is sent whenever
    the kind it maps from is wanted. The maps of `resume_clears` are emptied when the
    sensor sends again after sending nothing (the kernel stopped tracking while it sent
    nothing). `label` names its records in the log (default: the sensor's name)."""

    map: str
    records: Mapping[EventKind, int]
    slot: int = 0
    sends: bool = False
    needs: Mapping[EventKind, EventKind] = field(default_factory=dict)
    resume_clears: tuple[str, ...] = ()
    label: str = ""

    def mask(self, wanted: Collection[EventKind]) -> tuple[int, frozenset[EventKind]]:
        """(the map's bitmask, the kinds left out) when `wanted` are the event kinds the
        loaded rules (or a recording) use (pure)."""
        need = set(wanted)
        need.update(self.needs[k] for k in wanted if k in self.needs)
        left = frozenset(k for k in self.records if k not in need)
        bits = 0
        for kind, record in self.records.items():
            if (kind in left) != self.sends:
                bits |= 1 << record
        return bits, left


class BpfSensor:
    """A sensor whose programs are a bpf/ source compiled into the shared `BpfProgram`.

    Subclasses name their `source`; BCC attached its tracepoints when it compiled them.
    `poll`, `fileno` and `lost` are the shared program's: one ring buffer serves them all.
    One whose kernel side leaves out the record kinds no rule wants declares where it
    reads them (`kind_switch`); SensorSet.send_only sets them through `send_kinds`."""

    name: ClassVar[str]
    title: ClassVar[str] = "eBPF sensor"
    kinds: ClassVar[frozenset[EventKind]]
    source: ClassVar[str]
    fallback_for: ClassVar[str | None] = None
    # tracepoints it runs without when this kernel lacks them (its source wraps each in
    # `#ifndef NW_NO_<name>`); a missing tracepoint not listed here keeps the sensor off
    optional_tracepoints: ClassVar[tuple[str, ...]] = ()
    kind_switch: ClassVar[KindSwitch | None] = None

    def __init__(self, program: BpfProgram) -> None:
        self.program = program
        self._up = False
        switch = self.kind_switch
        # whether the kernel sends any of its kinds (until send_kinds: all, or with a
        # `sends` switch none)
        self._sending = switch is None or not switch.sends

    def send_kinds(self, wanted: Collection[EventKind]) -> frozenset[EventKind]:
        """Send only the record kinds the `wanted` event kinds need (those some loaded
        rule is on, or all with a recording), where `kind_switch` says. Returns its kinds
        left out (none without a switch)."""
        switch = self.kind_switch
        if switch is None:
            return frozenset()
        bits, left = switch.mask(wanted)
        sending = len(left) < len(switch.records)
        if sending and not self._sending:
            for name in switch.resume_clears:
                self.program[name].clear()
        self.program[switch.map][ctypes.c_int(switch.slot)] = ctypes.c_ulonglong(bits)
        self._sending = sending
        return left

    @property
    def up(self) -> bool:
        """Whether its programs are attached."""
        return self._up

    def start(self) -> None:
        """Its tracepoints are attached with the compile; subclasses attach the rest."""
        self._up = True

    def poll(self, timeout_ms: int) -> None:
        """Poll the shared buffer."""
        self.program.poll(timeout_ms)

    def fileno(self) -> int | None:
        """The shared buffer's descriptor."""
        return self.program.fileno()

    def lost(self) -> int:
        """The shared buffer's losses."""
        return self.program.lost()

    def close(self) -> None:
        """Marks it down; the program's owner detaches the tracepoints with the program."""
        self._up = False
