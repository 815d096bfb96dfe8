"""Prometheus export for every service. Names follow `videorl_<service>_<what>_<unit>`.

Each process serves its own registry over HTTP on a free loopback port (or a fixed one in a pod) and
records the address in Redis, so a local Prometheus or `rlctl status` can find every exporter.
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, start_http_server

_NAME = re.compile(r"^videorl_(rollout|reward|learner|control)_[a-z0-9_]+_(total|seconds|bytes|ratio|count|tokens|"
                   r"version|steps|per_second|value|info)$")


def check_name(name: str) -> str:
    """Fail fast on a metric name outside the naming scheme (dashboards query only scheme names)."""
    if not _NAME.match(name):
        raise ValueError(f"metric name {name!r} does not follow videorl_<service>_<what>_<unit>")
    return name


def serve(registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> int:
    """Start an exporter thread for `registry`; returns the bound port."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server.server_address[1]
