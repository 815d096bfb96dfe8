"""The reward service's own metrics (the scorer and the judge export theirs beside them)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import check_name
from services.common.pb.videorl.v1 import rollout_pb2 as pb

LIMITS = ("service", "stream")  # what paused a stream: reward.max_held_completions, or MAX_INFLIGHT_GROUPS


class RewardMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.completions = Counter(check_name("videorl_reward_completions_total"), "completions received",
                                   registry=registry)
        self.groups = Counter(check_name("videorl_reward_groups_total"), "groups handled", ["status"],
                              registry=registry)
        self.score_seconds = Histogram(check_name("videorl_reward_score_seconds"), "time to score and write a group",
                                       registry=registry)
        self.inflight = Gauge(check_name("videorl_reward_groups_inflight_count"), "groups being scored",
                              registry=registry)
        self.streams = Gauge(check_name("videorl_reward_streams_open_count"), "completion streams open now",
                             registry=registry)
        self.open_groups = Gauge(check_name("videorl_reward_open_groups_count"),
                                 "groups with some but not all of their K completions, over all streams",
                                 registry=registry)
        self.held = Gauge(check_name("videorl_reward_held_completions_count"), "completion slots held over all "
                          "streams (K per group, from its first completion to its ack)", registry=registry)
        self.held_peak = Gauge(check_name("videorl_reward_held_completions_peak_count"),
                               "most completion slots held at once since the service started", registry=registry)
        self.held_limit = Gauge(check_name("videorl_reward_held_completions_limit_count"),
                                "reward.max_held_completions: streams are not read while no slot is free",
                                registry=registry)
        self.paused = Gauge(check_name("videorl_reward_streams_paused_count"),
                            "streams not read now because a bound is reached", ["limit"], registry=registry)
        self.pauses = Counter(check_name("videorl_reward_backpressure_pauses_total"),
                              "times a stream stopped being read because a bound was reached", ["limit"],
                              registry=registry)
        self.pause_seconds = Counter(check_name("videorl_reward_backpressure_seconds_total"),
                                     "seconds streams were not read because a bound was reached (summed over "
                                     "streams; counted as each pause ends)", ["limit"], registry=registry)
        for status in (pb.GroupAck.SCORED, pb.GroupAck.DUPLICATE, pb.GroupAck.REJECTED):
            self.groups.labels(pb.GroupAck.Status.Name(status).lower())  # 0 from the start, not "no data"
        for limit in LIMITS:
            self.paused.labels(limit)
            self.pauses.labels(limit)
            self.pause_seconds.labels(limit)
