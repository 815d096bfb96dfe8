"""Prometheus export for every service. Names follow `videorl_<service>_<what>_<unit>`.

Each process serves its own registry over HTTP on a free loopback port (or a fixed one in a pod) and
records the address in Redis, so a local Prometheus or `rlctl status` can find every exporter.

Metrics carry no `run` or `namespace` label: those are target labels, attached where the exporter is
scraped (`file_sd_targets` below for a local Prometheus; the scrape config under deploy/k8s in a cluster).
Dashboards filter every query on both, so one Prometheus can hold many runs.

The control plane's own state (stream lengths and lag, live actors) is read from Redis at scrape time by
`ControlPlaneCollector`, so it is never staler than the scrape and costs nothing between scrapes.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from services.common.control import EVALS, GROUPS, LEARNER_GROUP, PROMPTS, ROLLOUT_GROUP, ControlPlane

log = logging.getLogger("videorl.metrics")
_NAME = re.compile(r"^videorl_(rollout|reward|learner|control)_[a-z0-9_]+_(total|seconds|bytes|ratio|count|tokens|"
                   r"version|versions|steps|per_second|value|info)$")


def check_name(name: str) -> str:
    """Fail fast on a metric name outside the naming scheme (dashboards query only scheme names)."""
    if not _NAME.match(name):
        raise ValueError(f"metric name {name!r} does not follow videorl_<service>_<what>_<unit>")
    return name


HOST_ENV, PORT_ENV, POD_IP_ENV = "VIDEORL_METRICS_HOST", "VIDEORL_METRICS_PORT", "POD_IP"
_WILDCARDS = ("0.0.0.0", "::")


def serve(registry: CollectorRegistry, host: str | None = None, port: int | None = None) -> int:
    """Start an exporter thread for `registry`; returns the bound port.

    Host and port default to VIDEORL_METRICS_HOST / VIDEORL_METRICS_PORT when set (a pod: 0.0.0.0:9400, the port
    Prometheus scrapes, see deploy/k8s), else a free loopback port (a local run: nothing listens off the machine)."""
    host = host or os.environ.get(HOST_ENV) or "127.0.0.1"
    if port is None:
        raw = os.environ.get(PORT_ENV) or "0"
        if not raw.isdigit() or int(raw) > 65535:
            raise ValueError(f"{PORT_ENV}={raw!r}: expected a port number")
        port = int(raw)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server.server_address[1]


def exporter_address(port: int, host: str | None = None) -> str:
    """`host:port` where other machines reach an exporter that `serve(registry, host)` bound, for Redis: the bind
    host itself, or for a wildcard bind the pod's IP (POD_IP, from the downward API) or else this host name's
    address (a pod's hostname resolves to its IP)."""
    host = host or os.environ.get(HOST_ENV) or "127.0.0.1"
    if host in _WILDCARDS:
        host = os.environ.get(POD_IP_ENV) or socket.gethostbyname(socket.gethostname())
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def file_sd_targets(exporters: dict[str, str], run_id: str, namespace: str = "local") -> list[dict]:
    """Prometheus file_sd entries for a run's exporters (ControlPlane.exporters(): name -> host:port), with the
    `run` and `namespace` target labels the dashboards filter on and `service` from the exporter's name."""
    return [{"targets": [address], "labels": {"run": run_id, "namespace": namespace, "service": name.split(":")[0],
                                              "exporter": name}}
            for name, address in sorted(exporters.items())]


# (role, the Redis counter the supervisor increments for it)
_RESTART_COUNTERS = (("actor", "actors_restarted"), ("reward", "reward_restarted"), ("learner", "learner_restarted"),
                     ("redis", "redis_restarted"))


class ControlPlaneCollector:
    """Stream lengths, consumer-group lag and pending entries, live and desired actors, the current version, each
    live actor's reported version, and the supervisor's restarts per role and prompts handed over from dead actors,
    read from Redis on each scrape.

    The learner's driver registers it: of the run's processes it is the one that exists exactly once in every
    kind of run (it owns the prompt feeder), so the series are neither missing nor duplicated. A Redis
    failure skips these series for that scrape instead of failing the learner's whole scrape."""

    _STREAMS = (("prompts", PROMPTS, ROLLOUT_GROUP), ("groups", GROUPS, LEARNER_GROUP), ("evals", EVALS, LEARNER_GROUP))

    def __init__(self, control: ControlPlane, live_timeout_s: float):
        self.control, self.live_timeout_s = control, live_timeout_s

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        entries, lag, pending, live, desired, current, actor_version, restarts, handed = self._families()
        try:
            for name, key, group in self._STREAMS:
                entries.add_metric([name], self.control.stream_len(key))
                undelivered, unacked = self.control.group_backlog(key, group)
                lag.add_metric([name, group], undelivered)
                pending.add_metric([name, group], unacked)
            now = time.time()
            actors = [a for a in self.control.actors() if a.state != "stopped" and a.alive(self.live_timeout_s, now)]
            live.add_metric([], len(actors))
            for a in actors:
                actor_version.add_metric([a.actor_id], a.loaded_version)
            if (n := self.control.desired_actors()) is not None:
                desired.add_metric([], n)
            if (v := self.control.current_version()) is not None:
                current.add_metric([], v)
            counters = self.control.counters()
            for role, counter in _RESTART_COUNTERS:
                restarts.add_metric([role], counters.get(counter, 0))
            handed.add_metric([], counters.get("prompts_handed_over", 0))
        except redis.RedisError as e:  # tolerated on purpose: the learner's own metrics still get scraped
            log.warning("control-plane metrics skipped this scrape: %s", e)
            return iter(())
        return iter((entries, lag, pending, live, desired, current, actor_version, restarts, handed))

    @staticmethod
    def _families() -> tuple[Any, ...]:
        return (
            GaugeMetricFamily(check_name("videorl_control_stream_entries_count"), "entries in each Redis stream",
                              labels=["stream"]),
            GaugeMetricFamily(check_name("videorl_control_stream_lag_count"),
                              "entries not yet delivered to the stream's consumer group", labels=["stream", "group"]),
            GaugeMetricFamily(check_name("videorl_control_stream_pending_count"),
                              "entries delivered to the consumer group but not acked", labels=["stream", "group"]),
            GaugeMetricFamily(check_name("videorl_control_actors_live_count"),
                              "rollout actors with a recent heartbeat that have not stopped"),
            GaugeMetricFamily(check_name("videorl_control_actors_desired_count"),
                              "rollout actors an operator asked for (rlctl scale); absent until set"),
            GaugeMetricFamily(check_name("videorl_control_policy_version"), "current policy version"),
            GaugeMetricFamily(check_name("videorl_control_actor_loaded_version"),
                              "policy version each live actor reports it serves", labels=["actor"]),
            CounterMetricFamily(check_name("videorl_control_restarts_total"),
                                "processes of the run replaced after they died (rlctl/supervisor.py)", labels=["role"]),
            CounterMetricFamily(check_name("videorl_control_prompts_handed_over_total"),
                                "prompts a dead actor held, given back to the live actors at once"),
        )
