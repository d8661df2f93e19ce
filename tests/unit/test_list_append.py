"""`NAME: {append: [...]}` under `lists:`: a user's file adds entries to a shipped trust
list (a namespace, an installer, a package manager) without copying it, and every rule
that uses the list sees them; mistakes are `file:line` problems."""

from __future__ import annotations

from pathlib import Path

from agent.codec import event_from_json
from agent.engine import loader
from agent.engine.definitions import MAX_LIST_VALUES

RULE = """\
lists:
  trusted_ns: [kube-system]
rules:
  - id: mount-in-tenant-pod
    match:
      proc.name: mount
      not: {pod.namespace: {in: $trusted_ns}}
"""


def _mount_in(namespace: str) -> object:
    return event_from_json({"process": {"exe": "/usr/bin/mount", "cmdline": ["mount", "/dev/sdb"]},
                            "container": {"id": "ab" * 32},
                            "pod": {"namespace": namespace, "name": "p"}})


def _write(tmp_path: Path, **files: str) -> list[str]:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return [str(tmp_path / name) for name in files]


def _fires(rs: object, namespace: str) -> bool:
    return bool(rs.evaluate(_mount_in(namespace)))  # type: ignore[attr-defined]


def test_an_appended_entry_is_trusted_by_the_rule_that_uses_the_list(tmp_path: Path) -> None:
    paths = _write(tmp_path, **{"a.yaml": RULE,
                                "b.yaml": "lists:\n  trusted_ns: {append: [storage-ops]}\n"})
    rs = loader.load(paths)
    assert not _fires(rs, "storage-ops") and not _fires(rs, "kube-system")
    assert _fires(rs, "team-a")


def test_the_user_file_may_come_before_the_shipped_one(tmp_path: Path) -> None:
    paths = _write(tmp_path, **{"0-user.yaml": "lists:\n  trusted_ns: {append: [ops]}\n",
                                "1-shipped.yaml": RULE})
    assert not _fires(loader.load(paths), "ops")


def test_appends_from_several_files_add_up_and_may_name_other_lists(tmp_path: Path) -> None:
    paths = _write(tmp_path, **{"a.yaml": RULE,
                                "b.yaml": "lists:\n  mine: [x-ops]\n"
                                          "  trusted_ns: {append: [$mine]}\n",
                                "c.yaml": "lists:\n  trusted_ns: {append: [y-ops, kube-system]}\n"})
    rs = loader.load(paths)
    assert [_fires(rs, ns) for ns in ("x-ops", "y-ops", "kube-system", "z")] == [
        False, False, False, True]


def test_append_to_a_shipped_list_works_with_the_bundled_rules(tmp_path: Path) -> None:
    """The documented way to trust a maintenance namespace of one's own."""
    paths = _write(tmp_path, **{"site.yaml": "lists:\n  trusted_system_namespaces: "
                                             "{append: [storage-ops]}\n"})
    event = event_from_json({"process": {"exe": "/usr/bin/mount", "uid": 0,
                                         "cmdline": ["mount", "/dev/sdb", "/data"]},
                             "container": {"id": "ab" * 32},
                             "pod": {"namespace": "storage-ops", "name": "disk-prep"}})
    shipped = [m.rule.id for m in loader.load([loader.BUNDLED]).evaluate(event)]
    extended = [m.rule.id for m in loader.load([loader.BUNDLED, *paths]).evaluate(event)]
    assert "mount-host-device-in-container" in shipped
    assert "mount-host-device-in-container" not in extended


def test_append_to_an_unknown_list_is_a_problem_at_its_line(tmp_path: Path) -> None:
    paths = _write(tmp_path, **{"a.yaml": RULE,
                                "b.yaml": "lists:\n  trusted_nss: {append: [ops]}\n"})
    _, problems = loader.check(paths)
    assert [str(p).replace(str(tmp_path) + "/", "") for p in problems] == [
        "b.yaml:2: append to unknown list 'trusted_nss' (did you mean 'trusted_ns'?); a list "
        "is extended only where some file defines it"]


def test_a_malformed_append_says_what_is_expected(tmp_path: Path) -> None:
    for bad in ("{append: ops}", "{add: [ops]}", "{append: [ops], extra: 1}"):
        paths = _write(tmp_path, **{"a.yaml": RULE, "b.yaml": f"lists:\n  trusted_ns: {bad}\n"})
        _, problems = loader.check(paths)
        assert len(problems) == 1 and "b.yaml:2: list 'trusted_ns' must be a YAML list, or " \
            "{append: [...]}" in str(problems[0]), (bad, problems)


def test_redefining_a_list_points_to_append(tmp_path: Path) -> None:
    paths = _write(tmp_path, **{"a.yaml": RULE, "b.yaml": "lists:\n  trusted_ns: [ops]\n"})
    _, problems = loader.check(paths)
    assert len(problems) == 1
    assert str(problems[0]).endswith("rename one; to add entries to it write "
                                     "`trusted_ns: {append: [...]}`")


def test_appends_are_held_to_the_list_size_limit(tmp_path: Path) -> None:
    many = ", ".join(f"ns{i}" for i in range(MAX_LIST_VALUES))
    paths = _write(tmp_path, **{"a.yaml": RULE,
                                "b.yaml": f"lists:\n  trusted_ns: {{append: [{many}]}}\n"})
    _, problems = loader.check(paths)
    assert len(problems) == 1 and "b.yaml:2: list 'trusted_ns' has 10001 entries with those " \
        "appended; the limit is 10000" in str(problems[0])
