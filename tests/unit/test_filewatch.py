"""What the kernel watches for the file rules (agent/engine/filewatch.py), through the real
rule loader: the watches each rule gets, the rules it refuses (file:line and the fix), the
watch list too long for the kernel's maps, and the maps' contents."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.engine import filewatch, loader
from agent.engine.filewatch import OP_BIT, Watch, kernel_entries, relative_forms, under_watch

R, W, C, T, U, N, M = (OP_BIT[o] for o in ("read", "write", "create", "truncate", "unlink",
                                           "rename", "chmod"))
ALL = filewatch.ALL_OPS


def _load(tmp_path: Path, text: str):
    f = tmp_path / "rules.yaml"
    f.write_text(text)
    return loader.check([str(f)])


def _watches(tmp_path: Path, match: str, extra: str = "") -> tuple[Watch, ...]:
    rs, problems = _load(tmp_path, f"{extra}rules:\n  - id: r\n    match:\n{match}")
    assert rs is not None, problems
    return rs.rules[0].file_watches


@pytest.mark.parametrize("match,expected", [
    ("      file.path: /etc/shadow\n", {Watch("path", "/etc/shadow", ALL)}),
    ("      file.path: {in: [/etc/shadow, /etc/gshadow]}\n      file.op: read\n",
     {Watch("path", "/etc/shadow", R), Watch("path", "/etc/gshadow", R)}),
    ("      file.path: {prefix: /etc/cron.d/}\n      file.op: {in: [write, create]}\n",
     {Watch("prefix", "/etc/cron.d/", W | C)}),
    ("      file.name: authorized_keys\n      proc.name: {in: [sshd]}\n",
     {Watch("name", "authorized_keys", ALL)}),
    # every branch of an any restricts: the union, each with its branch's ops
    ("      any:\n        - {file.path: {prefix: /etc/cron.d/}, file.op: create}\n"
     "        - {file.dest: {prefix: /etc/cron.d/}}\n",
     {Watch("prefix", "/etc/cron.d/", C | N)}),
    # of two restricting terms the narrower: an exact path before a short prefix
    ("      file.path: {prefix: /home/}\n      file.name: .bash_history\n"
     "      file.op: truncate\n",
     {Watch("name", ".bash_history", T)}),
    # through a macro and an all
    ("      all:\n        - macro: cron_dirs\n        - file.op: unlink\n",
     {Watch("prefix", "/etc/cron.d/", U), Watch("prefix", "/var/spool/cron/", U)}),
    ("      file.made_executable: true\n      file.path: {prefix: /tmp/}\n",
     {Watch("prefix", "/tmp/", M)}),
])
def test_each_file_rule_gets_the_watches_its_match_requires(tmp_path, match, expected):
    macros = ("macros:\n  cron_dirs: {file.path: {prefix: [$crons]}}\n"
              "lists:\n  crons: [/etc/cron.d/, /var/spool/cron/]\n")
    assert set(_watches(tmp_path, match, macros)) == expected


def test_rules_on_other_kinds_watch_nothing(tmp_path):
    assert _watches(tmp_path, "      proc.name: xmrig\n") == ()


@pytest.mark.parametrize("match,expected", [
    ("      file.path: {contains: shadow}\n",
     "rules.yaml:3: rule 'r': a rule on file events must test, in its match, file.path with "
     "equals, in or prefix, or file.name with equals or in"),
    ("      file.op: read\n", "add e.g. `file.path: {prefix: /etc/cron.d/}`"),
    # one branch of the any watches everything
    ("      any:\n        - file.path: /etc/shadow\n        - file.path: {regex: 'x'}\n",
     "must test, in its match"),
    ("      not: {file.path: /etc/shadow}\n", "must test, in its match"),
    ("      file.path: etc/shadow\n", "file.path 'etc/shadow' is not absolute"),
    ("      file.name: .ssh/authorized_keys\n", "has a '/': a name is a path's last component"),
    ("      file.name: " + "n" * 40 + "\n", "longer than the 31 bytes the kernel compares"),
    ("      file.path: /" + "p" * 300 + "\n", "longer than the 255 bytes"),
])
def test_file_rules_the_kernel_cannot_filter_for_are_refused(tmp_path, match, expected):
    rs, problems = _load(tmp_path, f"rules:\n  - id: r\n    match:\n{match}")
    assert rs is None
    assert len(problems) == 1
    assert expected in str(problems[0])


def test_a_watch_list_longer_than_the_kernel_holds_is_refused_at_the_rule(tmp_path):
    paths = ", ".join(f"/srv/f{i}" for i in range(filewatch.MAX_WATCHES - 1))
    text = (f"rules:\n  - id: many\n    match: {{file.path: {{in: [{paths}]}}}}\n"
            f"  - id: fits\n    match: {{file.path: /srv/f0}}\n"
            f"  - id: over\n    match: {{file.path: {{in: [/srv/x, /srv/y]}}}}\n")
    rs, problems = _load(tmp_path, text)
    assert rs is None
    assert [str(p) for p in problems] == [
        f"{tmp_path}/rules.yaml:6: rule 'over': with this rule the file rules watch 1025 paths "
        f"and names (the kernel holds 1024): watch a directory with file.path prefix instead "
        f"of its files one by one"]


def test_names_of_every_length_up_to_the_kernel_limit_load(tmp_path):
    # the kernel finds a path's last component once and tests its length against a mask:
    # any number of different name lengths fits
    names = ", ".join("n" * k for k in range(1, filewatch.NAME_LEN + 1))
    rs, problems = _load(tmp_path, f"rules:\n  - id: r\n    match: {{file.name: [{names}]}}\n")
    assert problems == [] and rs is not None
    kw = kernel_entries(w for r in rs.rules for w in r.file_watches)
    assert kw.name_lens == tuple(range(1, filewatch.NAME_LEN + 1))


def test_the_kernel_maps_hold_exact_paths_with_a_nul_prefixes_without_and_relative_forms():
    kw = kernel_entries([Watch("path", "/etc/shadow", R), Watch("prefix", "/etc/cron.d/", W),
                         Watch("name", "authorized_keys", W | C), Watch("path", "/etc/shadow", U)])
    assert kw.prefixes == {
        b"/etc/shadow\0": R | U, b"shadow\0": R | U, b"etc/shadow\0": R | U,
        b"/etc/cron.d/": W, b"cron.d/": W, b"etc/cron.d/": W}
    # an exact path's name too, in the high bits: the kernel sends `/etc//shadow` (not
    # canonical, misses the trie) but not `/home/x/shadow`
    assert kw.names == {b"authorized_keys": W | C, b"shadow": (R | U) << 16}
    assert kw.ops == R | U | W | C
    assert kw.name_lens == (6, 15)


def test_a_longer_entry_carries_the_ops_of_the_shorter_ones_it_starts_with():
    """The LPM trie answers with the longest match only: /etc/shadow must keep /etc/'s."""
    kw = kernel_entries([Watch("prefix", "/etc/", W), Watch("path", "/etc/shadow", R)])
    assert kw.prefixes[b"/etc/shadow\0"] == R | W
    assert kw.prefixes[b"/etc/"] == W


def test_relative_forms_are_the_last_components():
    assert relative_forms("/etc/cron.d/") == ["cron.d/", "etc/cron.d/"]
    assert relative_forms("/a/b/c/d") == ["d", "c/d", "b/c/d"]
    assert relative_forms("/") == []


def test_a_cwd_under_a_watched_directory_gets_its_ops():
    kw = kernel_entries([Watch("prefix", "/etc/cron.d/", W), Watch("path", "/etc/shadow", R)])
    assert under_watch("/etc/cron.d", kw.prefixes) == W
    assert under_watch("/etc/cron.d/sub", kw.prefixes) == W
    assert under_watch("/etc", kw.prefixes) == 0
    assert under_watch("/etc/cron.daily", kw.prefixes) == 0


def test_the_kernels_filters_pass_every_watched_path_and_stop_unrelated_ones():
    """The bit filters the kernel tries before the trie and the names map (mirrored by
    KernelWatch.may_be_watched) never say no to a path a watch covers, and say no to the
    paths of a build or a package walk."""
    rs = loader.load([str(Path(__file__).resolve().parents[2] / "rules")])
    kw = kernel_entries(w for r in rs.rules for w in r.file_watches)
    covered = []
    for key in kw.prefixes:
        path = key.rstrip(b"\0")
        covered.append(path if key.endswith(b"\0") else path + b"child")
    covered += [b"/home/dev/" + name for name in kw.names]
    covered += [name for name in kw.names]   # relative to the caller's cwd
    assert covered and all(kw.may_be_watched(p) for p in covered)
    unrelated = [f"/usr/lib/python3/dist-packages/mod{i}/__init__.py".encode() for i in range(200)]
    unrelated += [f"/tmp/build/obj/file-{i}.o".encode() for i in range(200)]
    unrelated += [f"src/pkg{i}/main.c".encode() for i in range(200)]
    passed = [p for p in unrelated if kw.may_be_watched(p)]
    assert len(passed) <= len(unrelated) // 50, passed[:10]
