"""The Grafana dashboards under deploy/k8s/base/dashboards: each parses, has the datasource / namespace / run
variables, every panel queries Prometheus through the datasource variable, every metric selector is filtered on
namespace and run, and every metric name a panel uses is one the code exports (read from the metric classes' own
registries)."""

import json
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.common.metrics import ControlPlaneCollector

DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base" / "dashboards"
NAMES = ("overview", "rollout", "reward", "learner")
METRIC = re.compile(r"\b(videorl_[a-z0-9_]+)(\{[^}]*\})?")
FILTERS = ('namespace=~"$namespace"', 'run=~"$run"')


def _load(name: str) -> dict:
    return json.loads((DASHBOARDS / f"{name}.json").read_text())


def _exported() -> set[str]:
    """Every sample name the services can export: family names with the suffixes their types add."""
    from services.learner.driver import LearnerMetrics
    from services.learner.publish import BroadcastMetrics
    from services.reward.judge import JudgeMetrics
    from services.reward.scoring import ScoringMetrics
    from services.reward.service_metrics import RewardMetrics
    from services.rollout.actor import RolloutMetrics

    registry = CollectorRegistry()
    for make in (RewardMetrics, ScoringMetrics, JudgeMetrics, LearnerMetrics, BroadcastMetrics):
        make(registry)
    RolloutMetrics(registry, "a0")
    families = [*registry.collect(), *ControlPlaneCollector(None, 5.0).describe()]  # describe reads no Redis
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {f.name + s for f in families for s in suffixes[f.type]}


def _exprs(board: dict) -> list[str]:
    return [t["expr"] for p in board["panels"] for t in p["targets"]]


def test_every_dashboard_exists_and_ids_are_unique():
    uids = [_load(n)["uid"] for n in NAMES]
    assert len(set(uids)) == len(uids)
    assert sorted(p.stem for p in DASHBOARDS.glob("*.json")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_dashboard_has_the_datasource_namespace_and_run_variables(name):
    board = _load(name)
    assert board["schemaVersion"] == 39 and board["title"] and board["panels"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for var in ("namespace", "run"):
        v = variables[var]
        assert v["type"] == "query" and v["datasource"]["uid"] == "${datasource}"
        assert v["query"]["query"] == v["definition"] and re.fullmatch(rf"label_values\(.+, {var}\)", v["definition"])
    assert 'namespace=~"$namespace"' in variables["run"]["definition"]   # runs of the chosen namespaces only


@pytest.mark.parametrize("name", NAMES)
def test_every_panel_queries_prometheus_through_the_datasource_variable(name):
    board = _load(name)
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids)
    for p in board["panels"]:
        assert p["type"] in ("timeseries", "stat"), p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and {"h", "w", "x", "y"} <= set(p["gridPos"]), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["expr"].strip() and t["refId"], p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), p["title"]


@pytest.mark.parametrize("name", NAMES)
def test_every_metric_selector_is_filtered_on_namespace_and_run(name):
    for expr in _exprs(_load(name)):
        for metric, matchers in METRIC.findall(expr):
            assert matchers and all(f in matchers for f in FILTERS), f"{metric} unfiltered in {expr}"


@pytest.mark.parametrize("name", NAMES)
def test_every_metric_a_dashboard_uses_is_exported(name):
    exported = _exported()
    board = _load(name)
    used = {m for e in _exprs(board) + [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
            for m, _ in METRIC.findall(e)}
    assert used, "a dashboard without metrics"
    assert not used - exported, f"not exported by any service: {sorted(used - exported)}"


def test_the_exported_names_cover_what_the_dashboards_are_for():
    """The metrics the operations issue asks for exist (a guard against the name check passing vacuously)."""
    exported = _exported()
    for name in ("videorl_rollout_generated_tokens_total", "videorl_rollout_generate_seconds_bucket",
                 "videorl_rollout_loaded_policy_version", "videorl_rollout_swap_seconds_count",
                 "videorl_rollout_requests_inflight_count", "videorl_reward_component_seconds_bucket",
                 "videorl_reward_component_unscorable_total", "videorl_reward_component_mean_value",
                 "videorl_reward_component_std_value", "videorl_learner_phase_seconds_bucket",
                 "videorl_learner_loss_value", "videorl_learner_kl_value", "videorl_learner_clip_fraction_ratio",
                 "videorl_learner_advantage_value", "videorl_learner_group_staleness_versions_bucket",
                 "videorl_learner_groups_dropped_total", "videorl_control_stream_entries_count",
                 "videorl_control_stream_lag_count", "videorl_control_actors_live_count"):
        assert name in exported, name
