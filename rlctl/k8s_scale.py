"""`rlctl scale rollout N --namespace NS --run-id RUN`: scale a run that `rlctl submit` started on Kubernetes.

Two things change together: the pods of the RayCluster's `rollout` worker group (capacity: each pod offers one
`videorl_rollout` Ray resource) and the run's desired actor count in its Redis (the driver, `rlctl run` on the Ray
head, starts and retires actors to match it: rlctl.local.LocalRun.scale). The order keeps every prompt safe:
- up: raise the worker group's replicas first, then the desired count; the driver's new actors wait for pods;
- down: lower the desired count first and wait, on the head, until only N actors serve; the retired actors have
  finished and sent what they held. Then lower the replicas naming the pods to delete (`scaleStrategy.
  workersToDelete`): pods that host no serving actor, so KubeRay never removes a pod whose actor still holds prompts.
The desired count is set from inside the head pod (`rlctl scale rollout N --run /data/runs/<run_id>` through the pod
exec API), because the run's Redis is reachable only from the run's pods (NetworkPolicy) and its password lives in a
Secret; nothing here reads or prints the password.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from rlctl.submit import DATA_MOUNT, run_name, run_slug

GROUP = "rollout"
HEAD_CONTAINER = "ray-head"


class ScaleError(click.ClickException):
    pass


@dataclass
class K8sRun:
    """One submitted run's objects. `custom`/`core` are kubernetes CustomObjectsApi/CoreV1Api (or fakes in tests);
    `exec_in` runs a command in a pod's container and returns its stdout (raising on failure)."""

    namespace: str
    run_id: str
    custom: Any       # kubernetes.client.CustomObjectsApi (or a fake of it in tests)
    core: Any         # kubernetes.client.CoreV1Api
    exec_in: Callable[[str, str, list[str]], str]

    @property
    def run_dir(self) -> Path:
        return DATA_MOUNT / "runs" / self.run_id    # rlctl submit sets run_dir there

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

    def head_pod(self, cluster_name: str) -> str:
        pods = self.core.list_namespaced_pod(self.namespace,
                                             label_selector=f"ray.io/cluster={cluster_name},ray.io/node-type=head")
        running = [p.metadata.name for p in pods.items if p.status.phase == "Running"]
        if not running:
            raise ScaleError(f"the Ray head of {cluster_name} is not running")
        return running[0]

    def rollout_pods(self, cluster_name: str) -> list[str]:
        pods = self.core.list_namespaced_pod(self.namespace,
                                             label_selector=f"ray.io/cluster={cluster_name},ray.io/group={GROUP}")
        return sorted(p.metadata.name for p in pods.items)

    def on_head(self, head: str, *args: str) -> str:
        return self.exec_in(head, HEAD_CONTAINER, ["rlctl", *args])

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
        head = self.head_pod(name)
        run = ["--run", str(self.run_dir)]
        if n >= before:
            self.patch_replicas(cluster, n, [])
            echo(f"{name}: rollout pods {before} -> {n}")
            self.on_head(head, "scale", "rollout", str(n), *run, "--timeout", str(timeout_s))
            echo(f"{n} rollout actors serve the current policy")
            return
        self.on_head(head, "scale", "rollout", str(n), *run, "--timeout", str(timeout_s))   # waits for retirement
        state = json.loads(self.on_head(head, "status", str(self.run_dir), "--json"))
        busy = {a["host"] for a in state["actors"] if a["state"] != "stopped"}
        idle = [p for p in self.rollout_pods(name) if p not in busy][: before - n]
        self.patch_replicas(cluster, n, idle)
        echo(f"{name}: rollout pods {before} -> {n}, removing {', '.join(idle) or 'none'}")


def _status(e: Exception) -> str:
    status, reason = getattr(e, "status", None), getattr(e, "reason", None)
    return f"{status} {reason}" if status else str(e)


def connect_k8s(namespace: str, run_id: str) -> K8sRun:
    """A K8sRun on the current kubeconfig context (or the pod's service account)."""
    from kubernetes import client
    from kubernetes.stream import stream

    from rlctl.submit import connect

    connect()   # loads the configuration, with submit's clear errors when there is none
    core = client.CoreV1Api()

    def exec_in(pod: str, container: str, command: list[str]) -> str:
        resp = stream(core.connect_get_namespaced_pod_exec, pod, namespace, container=container, command=command,
                      stderr=True, stdout=True, stdin=False, tty=False, _preload_content=False)
        resp.run_forever()
        out, err = resp.read_stdout(), resp.read_stderr()
        if resp.returncode:
            raise ScaleError(f"`{' '.join(command)}` in {pod} failed ({resp.returncode}): {err.strip() or out.strip()}")
        return out

    return K8sRun(namespace, run_id, client.CustomObjectsApi(), core, exec_in)
