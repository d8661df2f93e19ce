"""The file sensor's userspace side without BCC: which rules' watches fill the kernel's
maps (enabled ones only), and which running processes get a cwd mark when rules load."""

from __future__ import annotations

from pathlib import Path

from agent.engine import loader
from agent.engine.filewatch import OP_BIT, Watch, kernel_entries
from agent.sources.file_sensor import cwd_marks, watches_of


def test_only_enabled_rules_are_watched(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("rules:\n"
                 "  - id: watched\n    match: {file.path: /etc/shadow, file.op: read}\n"
                 "  - id: disabled\n    enabled: false\n    match: {file.path: /etc/gshadow}\n"
                 "  - id: proc\n    match: {proc.name: xmrig}\n")
    rules = loader.load([str(f)]).rules
    assert watches_of(rules) == [Watch("path", "/etc/shadow", OP_BIT["read"])]


def test_processes_already_in_a_watched_directory_are_marked(tmp_path: Path):
    for pid, cwd in ((10, "/etc/cron.d"), (11, "/etc"), (12, "/etc/cron.d/sub")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cwd").symlink_to(cwd)
    (tmp_path / "13").mkdir()            # gone meanwhile: no cwd link
    (tmp_path / "self").symlink_to("10")
    write = OP_BIT["write"]
    kw = kernel_entries([Watch("prefix", "/etc/cron.d/", write)])
    assert cwd_marks(kw, str(tmp_path)) == {10: write, 12: write}
    # exact paths mark nobody: a directory is watched only through a prefix
    assert cwd_marks(kernel_entries([Watch("path", "/etc/shadow", write)]), str(tmp_path)) == {}
