"""Exporters: the control plane's gauges read from Redis at scrape time, the series that exist at 0 from the start
(so a clean run's dashboards show 0, not "no data"), and the file_sd targets a local Prometheus reads."""

import time

from prometheus_client import CollectorRegistry
from step_records import step_record

from services.common.control import ControlPlane
from services.common.metrics import ControlPlaneCollector, file_sd_targets
from services.common.weights import Manifest


def _value(registry, name, **labels):
    return registry.get_sample_value(name, labels)


def test_control_plane_gauges_follow_redis(control):
    registry = CollectorRegistry()
    registry.register(ControlPlaneCollector(control, live_timeout_s=5.0))
    for i in range(3):
        control.add_prompt(f"p{i}".encode())
    control.take_prompts("a0", 1, block_ms=10, reclaim_idle_ms=60_000)
    control.write_group("p0", b"g", 4, held_out=False)
    control.heartbeat("a0", 2, "running")
    control.heartbeat("a1", 1, "stopped")
    control.publish_version(Manifest(version=2, uri="/w/v2", bytes=1, sha256={}, step=4, created_at=time.time()))

    assert _value(registry, "videorl_control_stream_entries_count", stream="prompts") == 3
    assert _value(registry, "videorl_control_stream_lag_count", stream="prompts", group="rollout") == 2
    assert _value(registry, "videorl_control_stream_pending_count", stream="prompts", group="rollout") == 1
    assert _value(registry, "videorl_control_stream_lag_count", stream="groups", group="learner") == 1
    assert _value(registry, "videorl_control_stream_entries_count", stream="evals") == 0
    assert _value(registry, "videorl_control_actors_live_count") == 1              # a1 stopped
    assert _value(registry, "videorl_control_actor_loaded_version", actor="a0") == 2
    assert _value(registry, "videorl_control_actor_loaded_version", actor="a1") is None
    assert _value(registry, "videorl_control_policy_version") == 2
    assert _value(registry, "videorl_control_actors_desired_count") is None       # absent until an operator sets it
    control.set_desired_actors(3)
    assert _value(registry, "videorl_control_actors_desired_count") == 3
    assert _value(registry, "videorl_control_restarts_total", role="actor") == 0     # present at 0 from the start
    control.incr("actors_restarted")
    control.incr("prompts_handed_over", 2)
    assert _value(registry, "videorl_control_restarts_total", role="actor") == 1
    assert _value(registry, "videorl_control_restarts_total", role="redis") == 0
    assert _value(registry, "videorl_control_prompts_handed_over_total") == 2


def test_an_unreachable_redis_skips_the_control_series_not_the_scrape():
    registry = CollectorRegistry()
    down = ControlPlane("redis://127.0.0.1:1/0", "gone", reconnect_s=1)   # fail fast: the default retries 60 s
    registry.register(ControlPlaneCollector(down, live_timeout_s=5.0))
    assert list(registry.collect()) == []


def test_drop_reasons_unscorable_and_quarantine_series_exist_at_zero():
    from services.learner.driver import DROP_REASONS, LearnerMetrics
    from services.reward.scoring import Scorer
    from services.rollout.actor import RolloutMetrics

    registry = CollectorRegistry()
    LearnerMetrics(registry)
    RolloutMetrics(registry, "rollout-0")
    Scorer([{"name": "mcq"}, {"name": "format", "label": "fmt"}], registry)
    for reason in DROP_REASONS:
        assert _value(registry, "videorl_learner_groups_dropped_total", reason=reason) == 0
    for component in ("mcq", "fmt"):
        assert _value(registry, "videorl_reward_component_unscorable_total", component=component) == 0
    assert _value(registry, "videorl_rollout_prompts_quarantined_total", actor="rollout-0", reason="corrupt") == 0


def test_file_sd_targets_carry_the_run_and_namespace_labels():
    got = file_sd_targets({"reward": "127.0.0.1:9001", "rollout:rollout-0": "127.0.0.1:9002"}, "r1")
    assert got == [
        {"targets": ["127.0.0.1:9001"],
         "labels": {"run": "r1", "namespace": "local", "service": "reward", "exporter": "reward"}},
        {"targets": ["127.0.0.1:9002"],
         "labels": {"run": "r1", "namespace": "local", "service": "rollout", "exporter": "rollout:rollout-0"}}]


def test_learner_step_statistics_become_gauges():
    from services.learner.driver import LearnerMetrics

    registry = CollectorRegistry()
    stats = step_record(1, reward_mean=0.25).train.model_copy(
        update={"loss": 0.5, "kl_mean": 0.01, "clip_frac": 0.125, "adv_abs_mean": 0.8, "adv_std": 0.9,
                "adv_min": -1.5, "adv_max": 1.5})
    LearnerMetrics(registry).step(stats)
    assert _value(registry, "videorl_learner_steps_total") == 1
    assert _value(registry, "videorl_learner_kl_value") == 0.01
    assert _value(registry, "videorl_learner_clip_fraction_ratio") == 0.125
    assert _value(registry, "videorl_learner_advantage_value", stat="min") == -1.5
    assert _value(registry, "videorl_learner_advantage_value", stat="std") == 0.9
