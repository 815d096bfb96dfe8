"""`rlctl scale rollout N --namespace NS --run-id RUN`: scale a run that `rlctl submit` started on Kubernetes.

Two things change together: the pods of the RayCluster's `rollout` worker group (capacity: each pod offers one
`videorl_rollout` Ray resource) and the run's desired actor count in its Redis (the driver, `rlctl run` on the Ray
head, starts and retires actors to match it: rlctl.local.LocalRun.scale). The order keeps every prompt safe:
- up: raise the worker group's replicas first, then the desired count; the driver's new actors wait for pods;
- down: lower the desired count first and wait until only N actors serve; the retired actors have finished and
  sent what they held. Then lower the replicas naming the pods to delete (`scaleStrategy.workersToDelete`): pods
  that host no serving actor, so KubeRay never removes a pod whose actor still holds prompts.
The desired count is set, and the actors watched, through the run's control API (POST /v1/scale, GET /v1/status;
rlctl/k8s_api.py: the API server's service proxy to the run's API Service). The run's Redis stays reachable only
from the run's pods; nothing here reads its password.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from rlctl.api_client import ApiClient, serving, wait_serving
from rlctl.submit import run_name, run_slug

GROUP = "rollout"


class ScaleError(click.ClickException):
    pass


@dataclass
class K8sRun:
    """One submitted run's objects. `custom`/`core` are kubernetes CustomObjectsApi/CoreV1Api (or fakes in tests);
    `api` is the run's control API (rlctl.k8s_api.ServiceProxyClient)."""

    namespace: str
    run_id: str
    custom: Any       # kubernetes.client.CustomObjectsApi (or a fake of it in tests)
    core: Any         # kubernetes.client.CoreV1Api
    api: ApiClient

    def cluster(self) -> dict:
        job_name = run_name("videorl-run", run_slug(self.run_id))
        try:
            job = self.custom.get_namespaced_custom_object("ray.io", "v1", self.namespace, "rayjobs", job_name)
        except Exception as e:  # noqa: BLE001 - the API client's errors carry the HTTP status; report them as is
            raise ScaleError(f"no RayJob {job_name} in namespace {self.namespace}: {_status(e)}") from None
        name = (job.get("status") or {}).get("rayClusterName")
        if not name:
            raise ScaleError(f"RayJob {job_name} has no Ray cluster yet (status: "
                             f"{(job.get('status') or {}).get('jobDeploymentStatus', 'unknown')}); try again shortly")
        return self.custom.get_namespaced_custom_object("ray.io", "v1", self.namespace, "rayclusters", name)

    def rollout_pods(self, cluster_name: str) -> list[str]:
        pods = self.core.list_namespaced_pod(self.namespace,
                                             label_selector=f"ray.io/cluster={cluster_name},ray.io/group={GROUP}")
        return sorted(p.metadata.name for p in pods.items)

    def patch_replicas(self, cluster: dict, n: int, delete: list[str]) -> None:
        groups = cluster["spec"]["workerGroupSpecs"]
        i = next((i for i, g in enumerate(groups) if g["groupName"] == GROUP), None)
        if i is None:
            raise ScaleError(f"Ray cluster {cluster['metadata']['name']} has no worker group {GROUP!r}")
        ops = [{"op": "replace", "path": f"/spec/workerGroupSpecs/{i}/replicas", "value": n}]
        if n > groups[i].get("maxReplicas", n):
            ops.append({"op": "replace", "path": f"/spec/workerGroupSpecs/{i}/maxReplicas", "value": n})
        if delete:
            ops.append({"op": "add", "path": f"/spec/workerGroupSpecs/{i}/scaleStrategy",
                        "value": {"workersToDelete": delete}})
        self.custom.patch_namespaced_custom_object("ray.io", "v1", self.namespace, "rayclusters",
                                                   cluster["metadata"]["name"], ops)

    def scale(self, n: int, timeout_s: float, echo: Callable[[str], None]) -> None:
        cluster = self.cluster()
        name = cluster["metadata"]["name"]
        group = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == GROUP)
        before = int(group.get("replicas", 0))
        if n >= before:
            self.patch_replicas(cluster, n, [])
            echo(f"{name}: rollout pods {before} -> {n}")
        echo(f"run {self.run_id}: {self.api.post('/v1/scale', {'rollout': n})['detail']}")
        st = wait_serving(self.api, n, timeout_s)   # down: until the retired actors have sent what they held
        if n >= before:
            echo(f"{n} rollout actors serve v{st['policy_version']}")
            return
        busy = {a["host"] for a in st["actors"] if a["state"] != "stopped"}
        idle = [p for p in self.rollout_pods(name) if p not in busy][: before - n]
        self.patch_replicas(cluster, n, idle)
        echo(f"{name}: rollout pods {before} -> {n}, removing {', '.join(idle) or 'none'}; "
             f"serving: {', '.join(sorted(serving(st)))}")


def _status(e: Exception) -> str:
    status, reason = getattr(e, "status", None), getattr(e, "reason", None)
    return f"{status} {reason}" if status else str(e)


def connect_k8s(namespace: str, run_id: str) -> K8sRun:
    """A K8sRun on the current kubeconfig context (or the pod's service account)."""
    from kubernetes import client

    from rlctl.k8s_api import connect_api

    api = connect_api(namespace, run_id)   # loads the configuration first
    return K8sRun(namespace, run_id, client.CustomObjectsApi(), api.core, api)
