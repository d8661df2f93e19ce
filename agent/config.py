"""The agent's configuration: typed, defaulted, validated with messages that say the fix.

Defaults are the safe ones: audit mode (nothing is killed until the user writes
`mode: enforce`), the bundled rules, the host's /proc, metrics on 127.0.0.1:9808.
"""

from __future__ import annotations

import difflib
import grp
import ipaddress
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any, Protocol, get_args, get_origin, get_type_hints, runtime_checkable

from agent.decide import DEFAULT_PROTECTED
from agent.engine import yamlsrc
from agent.enrich.workspace import DEFAULT_MARKERS
from agent.errors import ConfigError
from agent.model import Severity
from agent.nodelock import default_lock_file
from agent.sinks.webhookconfig import WebhookConfig
from agent.sources.registry import SENSOR_NAMES, sensors_problem


@runtime_checkable
class _Section(Protocol):
    """A nested section of the config (e.g. `webhook:`): a dataclass that checks itself."""

    def validate(self) -> None:
        """Raise ConfigError for values that cannot work."""


# (key, allowed values, how the error says them)
_CHOICES = (
    ("mode", ("audit", "enforce"), "'audit' or 'enforce'"),
    ("bpf", ("auto", "off", "required"), "auto, off or required"),
    ("bpf_transport", ("auto", "ring", "perf"), "auto, ring or perf"),
    ("kubernetes", ("auto", "off", "required"), "auto, off or required"),
)


def _default_host() -> str:
    # what socket.gethostname() says (Linux's gethostname is uname's nodename), without
    # importing socket for it
    return os.environ.get("NODE_NAME") or os.uname().nodename


@dataclass
class Config:
    """Everything `nodewarden run` can be told; each field is a key of the YAML file."""

    mode: str = "audit"
    rules: list[str] = field(default_factory=list)
    proc_root: str = "/proc"
    listen: str = "127.0.0.1:9808"
    host: str = field(default_factory=_default_host)
    workspace_markers: list[str] = field(default_factory=lambda: list(DEFAULT_MARKERS))
    protected: list[str] = field(default_factory=lambda: list(DEFAULT_PROTECTED))
    scan_interval: float = 10.0
    process_cache_size: int = 65536
    bpf: str = "auto"
    bpf_transport: str = "auto"
    # the event sensors to run (agent/sources/registry.py); each that cannot load says why
    sensors: list[str] = field(default_factory=lambda: list(SENSOR_NAMES))
    findings_file: str = ""          # also append findings as JSON lines here
    # one agent per node: `run` holds this lock (the chart mounts its directory from the host)
    lock_file: str = field(default_factory=default_lock_file)
    kernel_enforcement: bool = True  # rules of names/paths enforced in the BPF program
    # the event thread in SCHED_FIFO (agent/realtime.py; needs CAP_SYS_NICE), so a CPU hog
    # of equal priority cannot delay a kill by its time slice
    realtime: bool = False
    # Slack: the webhook URL is a secret, read from this variable or file, never from here
    slack_webhook_url_env: str = "NODEWARDEN_SLACK_WEBHOOK_URL"
    slack_webhook_url_file: str = ""
    slack_min_severity: Severity = Severity.HIGH
    slack_dedupe_seconds: float = 300.0
    slack_rate_per_second: float = 1.0
    slack_queue_size: int = 1000
    ring_buffer_pages: int = 1024
    # Kubernetes: pods of this node (list+watch), Warning Events, the delete-pod action
    kubernetes: str = "auto"         # auto (in a cluster or with a kubeconfig), off, required
    kubeconfig: str = ""             # out of cluster; in a pod the ServiceAccount is used
    node_name: str = field(default_factory=lambda: os.environ.get("NODE_NAME", ""))
    kubernetes_events: bool = True
    kubernetes_event_rate_per_second: float = 2.0
    kubernetes_event_dedupe_seconds: float = 600.0
    delete_pod: bool = False         # lets rules with `action: delete-pod` delete the pod
    # 0 would be a force delete: the pod object goes at once, before the kubelet has
    # stopped its containers (a StatefulSet could start a twin meanwhile)
    delete_pod_grace_seconds: int = 1
    delete_pod_protected_namespaces: list[str] = field(default_factory=lambda: ["kube-system"])
    # who may read /metrics on a host install (see _validate_metrics_access)
    metrics_token_file: str = ""     # /metrics wants `Authorization: Bearer <this file>`
    metrics_socket_group: str = ""   # with `listen: unix:PATH`: the socket is 0660, this group
    # sink sections: a nested mapping each; the section's type opens its sink
    # (agent/sinks/registry.py finds them), so a new sink adds one field here
    webhook: WebhookConfig = field(default_factory=WebhookConfig)

    def validate(self) -> None:
        """Raise ConfigError, naming the key and the fix, for a value the agent cannot use."""
        for key, allowed, wording in _CHOICES:
            value = getattr(self, key)
            if value not in allowed:
                raise ConfigError(f"{key} must be {wording}, not {value!r}")
        if not self.workspace_markers or not all(
                isinstance(m, str) and m and "=" not in m for m in self.workspace_markers):
            raise ConfigError("workspace_markers must be a non-empty list of variable names "
                              "(without '='), e.g. [WORKSPACE_ID]")
        _check_finite(self)
        self._validate_numbers()
        if sensors_problem(self.sensors):
            raise ConfigError(f"sensors: {sensors_problem(self.sensors)}")
        if not self.lock_file:
            raise ConfigError("lock_file must be the path of the agent's lock, e.g. "
                              "/run/nodewarden/agent.lock")
        if self.listen != "off" and not self.listen.startswith(UNIX_PREFIX):
            problem = listen_problem(self.listen)
            if problem:
                raise ConfigError(f"listen must be HOST:PORT like 127.0.0.1:9808, "
                                  f"unix:/run/nodewarden/metrics.sock (or off), "
                                  f"not {self.listen!r}: {problem}")
        self._validate_metrics_access()
        for f in fields(self):
            section = getattr(self, f.name)
            if is_dataclass(section) and isinstance(section, _Section):
                section.validate()

    def _validate_numbers(self) -> None:
        if not MIN_SCAN_INTERVAL <= self.scan_interval <= MAX_SCAN_INTERVAL:
            # a scan every nanosecond is a busy loop; one every 1e300 s is none at all
            raise ConfigError(f"scan_interval must be from {MIN_SCAN_INTERVAL} to "
                              f"{MAX_SCAN_INTERVAL:.0f} seconds, not {self.scan_interval:g}")
        if (self.slack_rate_per_second <= 0 or self.slack_queue_size < 1
                or self.slack_dedupe_seconds < 0):
            raise ConfigError("slack_rate_per_second and slack_queue_size must be positive, "
                              "slack_dedupe_seconds not negative")
        if self.kubernetes_event_rate_per_second <= 0 or self.kubernetes_event_dedupe_seconds < 0:
            raise ConfigError("kubernetes_event_rate_per_second must be positive, "
                              "kubernetes_event_dedupe_seconds not negative")
        if self.delete_pod_grace_seconds < 0:
            raise ConfigError("delete_pod_grace_seconds must not be negative")
        pages = self.ring_buffer_pages
        if pages < 1 or pages & (pages - 1):
            raise ConfigError(f"ring_buffer_pages must be a power of two, not {pages}")
        if self.process_cache_size < 1024:
            raise ConfigError("process_cache_size must be at least 1024")

    # -- who may read /metrics (issue 13): a Unix socket, a bearer token -----------------

    def _validate_metrics_access(self) -> None:
        if self.listen.startswith(UNIX_PREFIX):
            path = self.listen[len(UNIX_PREFIX):]
            if not path.startswith("/") or path.endswith("/"):
                raise ConfigError(f"listen {self.listen!r}: a Unix socket needs an absolute "
                                  "path, like unix:/run/nodewarden/metrics.sock")
            if len(os.fsencode(path)) > UNIX_PATH_MAX:
                raise ConfigError(f"listen {self.listen!r}: a Unix socket path has at most "
                                  f"{UNIX_PATH_MAX} bytes")
        if self.metrics_socket_group:
            if not self.listen.startswith(UNIX_PREFIX):
                raise ConfigError("metrics_socket_group needs listen: unix:/PATH (a TCP port "
                                  "has no group)")
            group_id(self.metrics_socket_group)
        if self.metrics_token_file:
            read_metrics_token(self.metrics_token_file)


_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.?")


def listen_problem(listen: str) -> str:
    """What is wrong with a HOST:PORT address ('' when nothing): the port must be 1..65535
    and the host an IP address ([IPv6] in brackets) or a host name."""
    host, _, port = listen.rpartition(":")
    if not host:
        return "the host is missing"
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        return f"the port must be a number from 1 to 65535, not {port!r}"
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:].removesuffix("]"))
        except ValueError:
            return f"{host!r} is not an IPv6 address in brackets"
        return "" if host.endswith("]") else f"{host!r} lacks its closing bracket"
    if ":" in host:
        return f"an IPv6 address goes in brackets, like [{host}]:{port}"
    if len(host) > 253 or not _HOSTNAME.fullmatch(host):
        return f"{host!r} is neither an IP address nor a host name"
    return ""


UNIX_PREFIX = "unix:"
MIN_SCAN_INTERVAL = 0.05
MAX_SCAN_INTERVAL = 86400.0
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL


def group_id(group: str) -> int:
    """The gid of a group name or number. Raises ConfigError for an unknown group."""
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"metrics_socket_group: no group named {group!r}") from None


def read_metrics_token(path: str) -> bytes:
    """The bearer token /metrics wants, from `path` (surrounding whitespace dropped).
    Refused when it is not a regular file, is readable by every user, or is empty."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"metrics_token_file {path}: not a regular file")
            if st.st_mode & 0o004:
                raise ConfigError(f"metrics_token_file {path}: readable by every user "
                                  f"(mode {stat.filemode(st.st_mode)}); chmod 600 it")
            token = f.read(4096).strip()
    except OSError as e:
        raise ConfigError(f"metrics_token_file {path}: cannot read it: {e.strerror}") from None
    if not token or any(b < 0x21 or b > 0x7e for b in token):
        raise ConfigError(f"metrics_token_file {path}: the token must be one word of printable "
                          "ASCII (e.g. from `openssl rand -hex 32`)")
    return token


MAX_CONFIG_CHARS = 1 << 20


def load_config(path: str | None) -> Config:
    """Defaults, overlaid with the YAML file at `path` if given. Raises ConfigError."""
    cfg = Config()
    if path is None:
        return cfg
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_CONFIG_CHARS + 1)
        if len(text) > MAX_CONFIG_CHARS:
            # parsed on the agent's loop at every reload: a huge one would stall it
            raise ConfigError(f"{path}:1: the config is longer than {MAX_CONFIG_CHARS} "
                              f"characters; it holds settings, not data")
        data, dups = yamlsrc.load(text)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: the config is not UTF-8 text (byte {e.start})") from None
    except yamlsrc.YamlSyntaxError as e:
        raise ConfigError(f"{path}:{e.line}: YAML syntax error: {e}") from None
    if dups:
        raise ConfigError(f"{path}:{dups[0][0]}: duplicate key '{dups[0][1]}'")
    if data is None:
        return cfg
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of settings")
    _apply(cfg, data, path)
    try:
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return cfg


def as_dict(cfg: Config) -> dict[str, Any]:
    """Every setting by key (sections as their dataclass)."""
    return {f.name: getattr(cfg, f.name) for f in fields(Config)}


def _check_finite(obj: Any, prefix: str = "") -> None:
    """YAML's .nan and .inf are floats: a NaN compares false to everything, so a NaN
    interval passed every check and stopped the periodic scans."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{f.name} must be a finite number, not {value}")
        if is_dataclass(value):
            _check_finite(value, f"{prefix}{f.name}.")


# Keys that moved: the old key (dotted inside a section) -> where it lives now. A config
# that still says the old key is refused with an error naming the new one.
MOVED: dict[str, str] = {}


def _apply(target: Any, data: Mapping[Any, Any], path: str, prefix: str = "") -> None:
    """Set the fields of the dataclass `target` from `data`, typed by its annotations."""
    hints = get_type_hints(type(target))
    names = [f.name for f in fields(target)]
    for key, value in data.items():
        line = data.line_of(key) if isinstance(data, yamlsrc.Node) else 0
        where = f"{path}:{line}"
        full = f"{prefix}{key}"
        if full in MOVED:
            raise ConfigError(f"{where}: '{full}' has moved: it is '{MOVED[full]}' now")
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown setting '{full}'{hint}; settings are "
                              f"{', '.join(prefix + n for n in names)}")
        setattr(target, key, _typed(hints[key], value, full, where, path))


def _typed(want: Any, value: Any, key: str, where: str, path: str) -> Any:
    """`value` as the type `want` (an annotation), or a ConfigError naming `key`."""
    if key == "listen" and value is False:
        return "off"  # YAML 1.1 reads an unquoted `off` as false
    if is_dataclass(want) and isinstance(want, type):
        if value is None:
            return want()
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: '{key}' must be a mapping of settings, not {value!r}")
        section = want()
        _apply(section, value, path, f"{key}.")
        return section
    if isinstance(want, type) and issubclass(want, Enum):
        allowed = [m.value for m in want]
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: '{key}' must be one of {', '.join(map(str, allowed))}, "
                              f"not {value!r}{hint}")
        return want(value)
    if get_origin(want) is list:
        (item,) = get_args(want)
        if isinstance(value, list) and all(_is(item, v) for v in value):
            return list(value)
        raise ConfigError(f"{where}: '{key}' has the wrong type ({value!r}): it must be a list "
                          f"of {_NAMES.get(item, item.__name__)}")
    if _is(want, value):
        return float(value) if want is float else value
    raise ConfigError(f"{where}: '{key}' has the wrong type ({value!r}): it must be "
                      f"{_NAMES.get(want, str(want))}")


_NAMES: dict[Any, str] = {str: "text", int: "a whole number", float: "a number",
                          bool: "true or false"}


def _is(want: Any, value: Any) -> bool:
    """Whether `value` (from YAML) is of the plain type `want`; a bool is no number."""
    if isinstance(value, bool):
        return want is bool
    if want is float:
        return isinstance(value, int | float)
    return isinstance(want, type) and isinstance(value, want)
