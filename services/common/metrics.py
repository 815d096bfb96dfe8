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
import re
import time
from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from services.common.control import EVALS, GROUPS, LEARNER_GROUP, PROMPTS, ROLLOUT_GROUP, ControlPlane

log = logging.getLogger("videorl.metrics")
_NAME = re.compile(r"^videorl_(rollout|reward|learner|control)_[a-z0-9_]+_(total|seconds|bytes|ratio|count|tokens|"
                   r"version|versions|steps|per_second|value|info)$")


def check_name(name: str) -> str:
    """Fail fast on a metric name outside the naming scheme (dashboards query only scheme names)."""
    if not _NAME.match(name):
        raise ValueError(f"metric name {name!r} does not follow videorl_<service>_<what>_<unit>")
    return name


def serve(registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> int:
    """Start an exporter thread for `registry`; returns the bound port."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server.server_address[1]


def file_sd_targets(exporters: dict[str, str], run_id: str, namespace: str = "local") -> list[dict]:
    """Prometheus file_sd entries for a run's exporters (ControlPlane.exporters(): name -> host:port), with the
    `run` and `namespace` target labels the dashboards filter on and `service` from the exporter's name."""
    return [{"targets": [address], "labels": {"run": run_id, "namespace": namespace, "service": name.split(":")[0],
                                              "exporter": name}}
            for name, address in sorted(exporters.items())]


class ControlPlaneCollector:
    """Stream lengths, consumer-group lag and pending entries, live and desired actors, the current version and
    each live actor's reported version, read from Redis on each scrape.

    The learner's driver registers it: of the run's processes it is the one that exists exactly once in every
    kind of run (it owns the prompt feeder), so the series are neither missing nor duplicated. A Redis
    failure skips these series for that scrape instead of failing the learner's whole scrape."""

    _STREAMS = (("prompts", PROMPTS, ROLLOUT_GROUP), ("groups", GROUPS, LEARNER_GROUP), ("evals", EVALS, LEARNER_GROUP))

    def __init__(self, control: ControlPlane, live_timeout_s: float):
        self.control, self.live_timeout_s = control, live_timeout_s

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        entries, lag, pending, live, desired, current, actor_version = self._families()
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
        except redis.RedisError as e:  # tolerated on purpose: the learner's own metrics still get scraped
            log.warning("control-plane metrics skipped this scrape: %s", e)
            return iter(())
        return iter((entries, lag, pending, live, desired, current, actor_version))

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
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
        )
