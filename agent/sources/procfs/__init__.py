"""Procfs: the one owner of reading /proc and of parsing what is read there.

- parse.py   pure parsers over bytes: stat, cmdline, namespace links, status
- cgroup.py  pure parser of /proc/PID/cgroup: v2 path, v1 paths, container id, pod uid;
             CGROUPS, the bounded cache of parsed files every reader shares
- reader.py  ProcFS(root): opens /proc/PID once and reads its files relative to it

Everything else (the process tree, the enforcer, the sensors) reads processes through
`ProcFS` and cgroup text through `parse_cgroup`, never by opening /proc itself.
"""

from agent.sources.procfs.cgroup import (
    CGROUPS,
    Cgroup,
    CgroupCache,
    container_id_from_cgroup,
    parse_cgroup,
    pod_uid_from_cgroup,
)
from agent.sources.procfs.parse import (
    PF_KTHREAD,
    Stat,
    parse_cmdline,
    parse_netns,
    parse_stat,
    parse_stat_program,
    parse_status_uid,
)
from agent.sources.procfs.reader import CGROUP_LIMIT, ENVIRON_LIMIT, Known, ProcFS

__all__ = [
    "CGROUPS",
    "CGROUP_LIMIT",
    "ENVIRON_LIMIT",
    "PF_KTHREAD",
    "Cgroup",
    "CgroupCache",
    "Known",
    "ProcFS",
    "Stat",
    "container_id_from_cgroup",
    "parse_cgroup",
    "parse_cmdline",
    "parse_netns",
    "parse_stat",
    "parse_stat_program",
    "parse_status_uid",
    "pod_uid_from_cgroup",
]
