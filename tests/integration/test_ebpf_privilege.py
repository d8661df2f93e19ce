"""The privilege and kernel sensors with real eBPF: a real `nodewarden run` with rules on
ptrace, setuid, memfd, mount, setns, unshare, module and bpf sees each when another
process does it, with what the call was about, and never its own BPF loads; a kind no rule
is on is not sent at all.

One agent serves the module (a compile takes ~10 s); each test waits for its own finding.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agentproc import RunningAgent

pytestmark = [pytest.mark.ebpf, pytest.mark.integration]

RULES = """rules:
  - id: saw-ptrace
    on: [ptrace]
    match: {ptrace.request: {exists: true}}
  - id: saw-setuid
    on: [setuid]
    match: {priv.call: {exists: true}}
  - id: saw-memfd
    on: [memfd]
    match: {memfd.name: {prefix: nw-test-}}
  - id: saw-mount
    on: [mount]
    match: {mount.fstype: tmpfs, mount.source: {prefix: nw-test-}}
  - id: saw-ns
    on: [setns, unshare]
    match: {ns.call: {exists: true}}
  - id: saw-module
    on: [module]
    match: {module.call: {exists: true}}
  - id: saw-bpf
    on: [bpf]
    match: {bpf.cmd: {exists: true}}
"""
MODULE_TRACEPOINT = "/sys/kernel/tracing/events/syscalls/sys_enter_finit_module"


@pytest.fixture(scope="module")
def agent(ebpf, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    tmp = tmp_path_factory.mktemp("priv")
    rules = tmp / "priv.yaml"
    rules.write_text(RULES)
    # a lock file of its own: the per-test one (conftest.py) is set after this fixture
    a = RunningAgent(tmp, "", ["--interval", "3600", "--rules", str(rules)],
                     env={"NODEWARDEN_LOCK_FILE": str(tmp / "agent.lock")})
    a.expect_sensors("privilege, kernel")
    yield a
    assert a.stop() == 0, "".join(a.stderr)
    assert "Traceback" not in "".join(a.stderr)


def _python(code: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True,
                          text=True, timeout=30, **kw)


def _by(pid: int, rule: str):
    return lambda f: f["rule"] == rule and f["process"]["pid"] == pid


def test_a_ptrace_attach_names_its_target(agent):
    target = subprocess.Popen(["sleep", "30"])
    try:
        tracer = subprocess.Popen([sys.executable, "-c", f"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
assert libc.ptrace(16, {target.pid}, None, None) == 0, ctypes.get_errno()   # ATTACH
os.waitpid({target.pid}, 0)
libc.ptrace(17, {target.pid}, None, None)   # DETACH
sys.stdin.read()
"""], stdin=subprocess.PIPE)
        f = agent.finding(_by(tracer.pid, "saw-ptrace"))
        assert f["ptrace"] == {"request": "attach", "target_pid": target.pid,
                               "target_exe": os.path.realpath(shutil.which("sleep") or ""),
                               "target_uid": 0}
        tracer.communicate(b"", timeout=10)
    finally:
        target.kill()
        target.wait()


def test_a_non_root_process_asking_for_root_is_seen_though_refused(agent):
    nobody = pwd.getpwnam("nobody").pw_uid
    res = subprocess.Popen([sys.executable, "-c", """
import os, sys
try:
    os.setuid(0)
except PermissionError:
    print("refused")
sys.stdin.read()
"""], user=nobody, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    f = agent.finding(_by(res.pid, "saw-setuid"))
    assert f["priv"] == {"call": "setuid", "id": 0}
    assert f["process"]["uid"] == nobody
    out, _ = res.communicate("", timeout=10)
    assert out.strip() == "refused"
    # root asking for root, and a non-root process asking for its own uid: nothing
    _python("import os; os.setuid(0); os.setresgid(0, 0, 0)")
    mine = subprocess.run([sys.executable, "-c", f"import os; os.setuid({nobody})"],
                          user=nobody, check=True, timeout=30)
    assert mine.returncode == 0
    time.sleep(0.5)
    assert not [f for f in agent.all_findings if f["rule"] == "saw-setuid"
                and f["process"]["pid"] != res.pid]


def test_memfd_create_with_its_name(agent):
    proc = subprocess.Popen([sys.executable, "-c", """
import os, sys
os.memfd_create("nw-test-x", os.MFD_CLOEXEC)
sys.stdin.read()
"""], stdin=subprocess.PIPE)
    f = agent.finding(_by(proc.pid, "saw-memfd"))
    assert f["memfd"] == {"name": "nw-test-x", "flags": 1}
    proc.communicate(b"", timeout=10)


def _run(argv: list[str]) -> int:
    """Run `argv` to its end; its pid."""
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return proc.pid


def test_a_tmpfs_mounted_in_a_new_mount_namespace(agent):
    if shutil.which("unshare") is None:
        pytest.fail("util-linux (unshare) is missing")
    src = f"nw-test-{os.getpid()}"
    pid = _run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                f"mount -t tmpfs -o ro,nosuid {src} /mnt && exec sleep 1"])
    f = agent.finding(lambda f: f["rule"] == "saw-mount" and f["mount"]["source"] == src)
    assert f["mount"]["target"] == "/mnt"
    assert f["mount"]["fstype"] == "tmpfs"
    assert {"rdonly", "nosuid"} <= set(f["mount"]["options"])
    assert f["process"]["comm"] == "mount"
    u = next(f for f in agent.all_findings if _by(pid, "saw-ns")(f))
    assert u["ns"] == {"call": "unshare", "types": ["mnt"], "host": False, "target_pid": 0}


NEW_API_MOUNT = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
sc = libc.syscall
fs = sc(430, b"tmpfs", 0)                                         # fsopen
assert fs >= 0, ctypes.get_errno()
assert sc(431, fs, 1, b"source", sys.argv[1].encode(), 0) == 0    # fsconfig SET_STRING
assert sc(431, fs, 6, None, None, 0) == 0                         # fsconfig CMD_CREATE
mnt = sc(432, fs, 0, 1)                                           # fsmount, MOUNT_ATTR_RDONLY
assert mnt >= 0, ctypes.get_errno()
assert sc(429, mnt, b"", -100, b"/mnt", 4) == 0, ctypes.get_errno()   # move_mount F_EMPTY_PATH
"""


def test_a_mount_through_the_new_mount_api(agent):
    """fsopen, fsconfig, fsmount, move_mount (what util-linux 2.39+ mount(8) does)."""
    src = f"nw-test-new-{os.getpid()}"
    pid = _run(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                NEW_API_MOUNT, src])
    f = agent.finding(_by(pid, "saw-mount"))
    assert f["mount"] == {"source": src, "target": "/mnt", "fstype": "tmpfs", "flags": 1,
                          "options": ["rdonly"]}


def _ns_inode(path: str) -> int:
    return int(os.readlink(path).split("[")[1].rstrip("]"))


def _host_mnt() -> int:
    try:
        return _ns_inode("/proc/1/ns/mnt")
    except OSError:
        return 0xEFFFFFF8   # the initial mount namespace (pid 1 not dumpable here)


def test_setns_into_pid_1s_mount_namespace_is_host_and_into_another_is_not(agent):
    if shutil.which("nsenter") is None:
        pytest.fail("util-linux (nsenter) is missing")
    # `nsenter -t 1 -m` needs /proc/1/ns readable: where it is not (a pid 1 that is not
    # dumpable), enter pid 1's namespace through this process's, when it is in it. nsenter
    # closes the descriptor at once, so the namespace it is in stands for the one it entered:
    # `sleep 1`, not `true`, which may be gone before the agent reads it (SECURITY.md)
    own = _ns_inode("/proc/self/ns/mnt")
    ns_file = "/proc/1/ns/mnt" if os.access("/proc/1/ns/mnt", os.R_OK) else \
        f"/proc/{os.getpid()}/ns/mnt"
    pid = _run(["nsenter", f"--mount={ns_file}", "sleep", "1"])
    f = agent.finding(_by(pid, "saw-ns"))
    assert f["ns"] == {"call": "setns", "types": ["mnt"], "host": own == _host_mnt(),
                       "target_pid": 0}
    other = subprocess.Popen(["unshare", "-m", "sleep", "30"])
    try:
        time.sleep(0.3)
        pid = _run(["nsenter", "-t", str(other.pid), "-m", "sleep", "1"])
        f = agent.finding(_by(pid, "saw-ns"))
        assert f["ns"] == {"call": "setns", "types": ["mnt"], "host": False, "target_pid": 0}
        # through a pidfd held open: the target named, its namespace not the host's
        caller = subprocess.Popen([sys.executable, "-c", f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.pidfd_open({other.pid})
assert libc.setns(fd, 0x00020000) == 0, ctypes.get_errno()   # CLONE_NEWNS
sys.stdin.read()
"""], stdin=subprocess.PIPE)
        f = agent.finding(_by(caller.pid, "saw-ns"))
        assert f["ns"] == {"call": "setns", "types": ["mnt"], "host": False,
                           "target_pid": other.pid}
        caller.communicate(b"", timeout=10)
        assert caller.returncode == 0
    finally:
        other.kill()
        other.wait()


def test_a_module_load_is_seen_or_the_kernel_says_it_has_none(agent, tmp_path: Path):
    if not os.path.isdir(MODULE_TRACEPOINT):
        # a kernel without module support: the kernel sensor runs without those
        # tracepoints, said once, and the other sensors run
        said = [line for line in agent.stderr
                if "sensor kernel runs without syscalls:sys_enter_init_module" in line]
        assert len(said) == 1, agent.stderr
        assert agent.metric('nodewarden_sensor_up{sensor="kernel"}') == 1
        return
    junk = tmp_path / "nw_test_junk.ko"
    junk.write_bytes(b"not an ELF module")
    proc = subprocess.Popen([sys.executable, "-c", f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open({str(junk)!r}, os.O_RDONLY)
assert libc.syscall(313, fd, b"", 0) != 0   # finit_module: refused, nothing loaded
sys.stdin.read()
"""], stdin=subprocess.PIPE)
    f = agent.finding(_by(proc.pid, "saw-module"))
    assert f["module"] == {"call": "finit_module", "path": str(junk), "name": "nw_test_junk"}
    proc.communicate(b"", timeout=10)


BPF_LOAD = """
import ctypes, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
insns = (ctypes.c_uint64 * 2)(0xb7, 0x95)   # r0 = 0; exit
license = ctypes.create_string_buffer(b"GPL")
attr = bytearray(128)
struct.pack_into("<IIQQ", attr, 0, 1, 2, ctypes.addressof(insns), ctypes.addressof(license))
attr[48:48 + 10] = b"nwtestprog"
buf = (ctypes.c_char * len(attr)).from_buffer(attr)
fd = libc.syscall(321, 5, buf, len(attr))   # bpf(BPF_PROG_LOAD)
print(fd, ctypes.get_errno())
sys.stdin.read()
"""


def test_a_bpf_program_load_by_another_process_and_none_of_the_agents(agent):
    proc = subprocess.Popen([sys.executable, "-c", BPF_LOAD], stdin=subprocess.PIPE)
    f = agent.finding(_by(proc.pid, "saw-bpf"))
    assert f["bpf"] == {"cmd": "prog_load", "prog_type": "socket_filter",
                        "prog_name": "nwtestprog"}
    proc.communicate(b"", timeout=10)
    # the agent loaded a dozen programs while the kernel sensor attached: none reported
    assert not [f for f in agent.all_findings
                if f["rule"] == "saw-bpf" and f["process"]["pid"] == agent.proc.pid]


def test_a_kind_no_rule_is_on_is_not_sent(ebpf, tmp_path: Path):
    rules = tmp_path / "memfd.yaml"
    rules.write_text("""rules:
  - id: saw-memfd
    on: [memfd]
    match: {memfd.name: {prefix: nw-test-}}
""")
    a = RunningAgent(tmp_path, "", ["--interval", "3600", "--rules", str(rules)])
    try:
        a.wait_log("privilege records not sent (no loaded rule uses them): ptrace, setuid")
        a.wait_log("kernel records not sent (no loaded rule uses them): bpf, module, mount, "
                   "setns, unshare")
        target = subprocess.Popen(["sleep", "30"])
        libc = ctypes.CDLL(None, use_errno=True)
        code = f"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace(0x4206, {target.pid}, None, None)
os.memfd_create("nw-test-skip")
"""
        assert libc is not None
        proc = subprocess.Popen([sys.executable, "-c", code])
        a.finding(_by(proc.pid, "saw-memfd"))
        proc.wait(timeout=10)
        target.kill()
        target.wait()
        assert a.metric('nodewarden_events_total{source="ptrace"}') == 0
        assert a.metric('nodewarden_events_total{source="memfd"}') >= 1
    finally:
        assert a.stop() == 0, "".join(a.stderr)
