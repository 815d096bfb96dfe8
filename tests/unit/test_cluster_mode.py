"""Cluster mode of `rlctl run` (rlctl.cluster.ClusterTarget) and the exporters' address, without starting Ray."""

import json
import socket
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter

from rlctl import local, placement_watch
from rlctl.cluster import LOCAL_RAY_ENV, ClusterTarget
from rlctl.local import LocalRun
from services.common import metrics
from services.common.config import RunConfig
from services.common.processes import free_port

RAYJOB = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base" / "rayjob.yaml"
CLUSTER_ENV = {"RAY_ADDRESS": "10.0.0.5:6379", "VIDEORL_REWARD_ADDRESS": "videorl-reward:50051"}


def test_without_cluster_variables_the_run_is_local_as_before():
    t = ClusterTarget.from_env({"HOME": "/tmp"})
    assert t == ClusterTarget(None, None)
    kw = t.ray_init_kwargs()
    assert kw["address"] == "local" and kw["_node_ip_address"] == "127.0.0.1" and kw["log_to_driver"] is False
    assert kw["include_dashboard"] is False and kw["_temp_dir"] == "/tmp/videorl-ray"
    assert t.placement("rollout") == {} and t.placement("learner") == {}
    assert t.process_env() == LOCAL_RAY_ENV


def test_in_a_rayjob_the_run_joins_the_cluster_and_places_actors_by_worker_group():
    t = ClusterTarget.from_env(CLUSTER_ENV)
    assert t.ray_address == "10.0.0.5:6379" and t.reward_address == "videorl-reward:50051"
    kw = t.ray_init_kwargs()
    assert kw["address"] == "auto"
    assert not {"num_cpus", "_node_ip_address", "_temp_dir"} & set(kw)   # the cluster's nodes decide those
    assert t.placement("rollout") == {"resources": {"videorl_rollout": 1}}
    assert t.placement("learner") == {"resources": {"videorl_learner": 1}}
    # a loopback-only driver could not attach to the head's raylet, and the cluster's auth mode rules
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in t.process_env() and "RAY_AUTH_MODE" not in t.process_env()


def test_the_placement_resources_are_the_ones_the_rayjob_worker_groups_offer():
    docs = [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d and d["kind"] == "RayJob"]
    groups = {g["groupName"]: g for g in docs[0]["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    t = ClusterTarget.from_env(CLUSTER_ENV)
    for role in ("rollout", "learner"):
        offered = json.loads(json.loads(groups[role]["rayStartParams"]["resources"]))   # a JSON string, quoted
        assert offered == t.placement(role)["resources"], role   # one actor per pod of each group


class _FakeRay:
    """Records ray.init and the options actors are created with."""

    def __init__(self):
        self.init_kwargs, self.created = None, []

    def init(self, **kw):
        self.init_kwargs = kw

    def remote(self, **decorator_kw):
        def wrap(cls):
            fake = self

            class Remote:
                @staticmethod
                def options(**opts):
                    return SimpleNamespace(remote=lambda *a, **k: fake._handle(cls, decorator_kw, opts))
            return Remote
        return wrap

    def _handle(self, cls, decorator_kw, opts):
        self.created.append((cls.__name__, {**decorator_kw, **opts}))
        return SimpleNamespace(run=SimpleNamespace(remote=lambda: "run-ref"))


@pytest.mark.parametrize("env", [{}, CLUSTER_ENV], ids=["local", "cluster"])
def test_local_run_uses_its_target_for_ray_reward_and_actor_placement(monkeypatch, env):
    import ray

    fake = _FakeRay()
    monkeypatch.setattr(ray, "init", fake.init)
    monkeypatch.setattr(ray, "remote", fake.remote)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(local, "_pid", lambda handle: 1)
    monkeypatch.setattr(placement_watch, "wait_placed", lambda *a, **k: None)   # the fakes are placed at once
    run = LocalRun(RunConfig(run_id="c"), target=ClusterTarget.from_env(env))
    run.url, run.assets = "redis://x", SimpleNamespace(model_dir=Path("/m"), train=[], eval_rows=[])
    local._ray_init(run.target)
    run._resolve_accelerator()
    assert run.cfg.cluster.accelerator == "cpu" and run.cfg.learner.dtype == "float32"
    assert fake.init_kwargs == run.target.ray_init_kwargs()
    if env:
        run.start_reward()   # must not touch Ray: the reward Deployment serves
        assert run.reward is None and run.reward_addr == "videorl-reward:50051"
    else:
        run.reward_addr = "127.0.0.1:1"
    run.add_actor("rollout-0")
    run.start_learner()
    (_, rollout), (_, learner) = fake.created
    assert rollout["name"] == "c-rollout-0" and learner["name"] == "c-learner"
    assert rollout["num_cpus"] == learner["num_cpus"] == 0
    assert rollout.get("resources") == ({"videorl_rollout": 1} if env else None)
    assert learner.get("resources") == ({"videorl_learner": 1} if env else None)


def test_local_run_reads_its_target_from_the_environment(monkeypatch):
    for k, v in CLUSTER_ENV.items():
        monkeypatch.setenv(k, v)
    assert LocalRun(RunConfig()).target == ClusterTarget.from_env(CLUSTER_ENV)
    for k in CLUSTER_ENV:
        monkeypatch.delenv(k)
    assert LocalRun(RunConfig()).target == ClusterTarget()


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter(metrics.check_name("videorl_reward_probe_total"), "test", registry=registry).inc()
    return registry


def _scrape(host: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_exporter_binds_a_free_loopback_port_unless_the_environment_fixes_one(monkeypatch):
    monkeypatch.delenv(metrics.HOST_ENV, raising=False)
    monkeypatch.delenv(metrics.PORT_ENV, raising=False)
    port = metrics.serve(_registry())
    assert "videorl_reward_probe_total 1.0" in _scrape("127.0.0.1", port)
    assert metrics.exporter_address(port) == f"127.0.0.1:{port}"
    fixed = free_port()
    monkeypatch.setenv(metrics.HOST_ENV, "127.0.0.1")
    monkeypatch.setenv(metrics.PORT_ENV, str(fixed))
    assert metrics.serve(_registry()) == fixed
    assert "videorl_reward_probe_total" in _scrape("127.0.0.1", fixed)
    monkeypatch.setenv(metrics.PORT_ENV, "94OO")
    with pytest.raises(ValueError, match="VIDEORL_METRICS_PORT"):
        metrics.serve(_registry())


def test_an_exporter_on_every_interface_is_recorded_at_the_pod_ip(monkeypatch):
    monkeypatch.setenv(metrics.HOST_ENV, "0.0.0.0")
    monkeypatch.setenv(metrics.POD_IP_ENV, "10.1.2.3")
    assert metrics.exporter_address(9400) == "10.1.2.3:9400"
    monkeypatch.delenv(metrics.POD_IP_ENV)
    monkeypatch.setattr(socket, "gethostname", lambda: "videorl-reward-abc")
    monkeypatch.setattr(socket, "gethostbyname", lambda name: {"videorl-reward-abc": "10.9.8.7"}[name])
    assert metrics.exporter_address(9400) == "10.9.8.7:9400"     # a pod's hostname resolves to its IP
    assert metrics.exporter_address(9400, host="127.0.0.1") == "127.0.0.1:9400"   # bound to loopback: only there
    monkeypatch.setenv(metrics.POD_IP_ENV, "fd00::5")
    assert metrics.exporter_address(9400, host="::") == "[fd00::5]:9400"
