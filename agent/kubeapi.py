"""The connection to the Kubernetes API server: in-cluster, from a kubeconfig, or none.

One `ApiClient` serves the pod watcher, the Event writer and the pod deleter. Every call
they make passes `TIMEOUTS` (or a longer read timeout for watches): the client's default
is to wait forever, and an agent stuck on a dead API server would stop reporting.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from agent.errors import ConfigError

log = logging.getLogger("nodewarden.kubernetes")

# (connect, read) seconds for ordinary requests
TIMEOUTS = (5.0, 10.0)


@dataclass
class Kube:
    """A configured client and the node this agent runs on."""

    api: Any          # kubernetes.client.CoreV1Api
    node: str
    where: str        # "in-cluster" or the kubeconfig path, for the log


def connect(mode: str, kubeconfig: str, node: str,
            env: dict[str, str] | None = None) -> Kube | None:
    """The API connection `mode` (auto, off, required) asks for, or None.

    auto: in a cluster (KUBERNETES_SERVICE_HOST set) or with a kubeconfig given, connect;
    otherwise run without pod enrichment and say so once. required: failing to connect is
    a ConfigError (the agent exits 2) instead of a warning.
    """
    env = dict(os.environ) if env is None else env
    if mode == "off":
        log.info("Kubernetes enrichment off (kubernetes: off)")
        return None
    in_cluster = bool(env.get("KUBERNETES_SERVICE_HOST"))
    if not in_cluster and not kubeconfig:
        why = "not in a Kubernetes cluster (no KUBERNETES_SERVICE_HOST, no kubeconfig)"
        _without(mode, why, logging.INFO)   # a plain host: nothing is wrong
        return None
    if not node:
        why = ("the node name is unknown: set NODE_NAME from the downward API "
               "(fieldRef spec.nodeName) or node_name in the config")
        _without(mode, why)
        return None
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
            where = kubeconfig
        else:
            config.load_incluster_config(client_configuration=cfg)
            where = "in-cluster"
    except (config.ConfigException, OSError, ValueError, KeyError) as e:
        _without(mode, f"cannot load the Kubernetes client configuration: {e}")
        return None
    # one retry, for a pooled connection the server (or a proxy) closed while idle; the
    # callers retry everything else on their own schedule, with backoff
    cfg.retries = 1
    api = client.CoreV1Api(client.ApiClient(cfg))
    return Kube(api=api, node=node, where=where)


def _without(mode: str, why: str, level: int = logging.WARNING) -> None:
    if mode == "required":
        raise ConfigError(f"kubernetes: required, but {why}")
    log.log(level, "running without Kubernetes pod enrichment: %s", why)


def status_of(exc: BaseException) -> int:
    """The HTTP status of a client error, 0 for network errors and timeouts."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else 0
