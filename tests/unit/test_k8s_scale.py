"""rlctl scale on Kubernetes against fake API objects: the order of pod and actor changes, which pods go, errors."""

import json
from types import SimpleNamespace

import pytest

from rlctl.k8s_scale import K8sRun, ScaleError


def _pod(name, phase="Running"):
    return SimpleNamespace(metadata=SimpleNamespace(name=name), status=SimpleNamespace(phase=phase))


class Cluster:
    """A RayJob with its RayCluster (rollout replicas `replicas`), pods, and a head that answers rlctl commands."""

    def __init__(self, replicas, actors, cluster_ready=True):
        self.replicas, self.actors, self.cluster_ready = replicas, actors, cluster_ready
        self.calls = []

    # CustomObjectsApi
    def get_namespaced_custom_object(self, group, version, ns, plural, name):
        if plural == "rayjobs":
            if name != "videorl-r1-run":
                raise RuntimeError("Not Found")
            return {"status": {"rayClusterName": "r1-raycluster-x"} if self.cluster_ready
                    else {"jobDeploymentStatus": "Initializing"}}
        return {"metadata": {"name": name}, "spec": {"workerGroupSpecs": [
            {"groupName": "learner", "replicas": 1},
            {"groupName": "rollout", "replicas": self.replicas, "maxReplicas": 3}]}}

    def patch_namespaced_custom_object(self, group, version, ns, plural, name, ops):
        self.calls.append(("patch", name, ops))

    # CoreV1Api
    def list_namespaced_pod(self, ns, label_selector):
        if "node-type=head" in label_selector:
            return SimpleNamespace(items=[_pod("head-0")])
        return SimpleNamespace(items=[_pod(f"rollout-{i}") for i in range(self.replicas)])

    def exec_in(self, pod, container, command):
        self.calls.append(("exec", pod, container, command))
        if command[1] == "status":
            return json.dumps({"actors": self.actors})
        return "ok\n"


def _run(cluster):
    return K8sRun("ml", "r1", cluster, cluster, cluster.exec_in)


def test_scaling_up_adds_pods_before_actors():
    c = Cluster(1, [])
    _run(c).scale(3, 60, lambda _: None)
    (patch, name, ops), (exec_, pod, container, cmd) = c.calls
    assert patch == "patch" and name == "r1-raycluster-x"
    assert {"op": "replace", "path": "/spec/workerGroupSpecs/1/replicas", "value": 3} in ops
    assert exec_ == "exec" and pod == "head-0" and container == "ray-head"
    assert cmd == ["rlctl", "scale", "rollout", "3", "--run", "/data/runs/r1", "--timeout", "60"]


def test_scaling_down_retires_actors_first_and_removes_only_their_pods():
    actors = [{"actor_id": "rollout-0", "state": "running", "host": "rollout-1"},
              {"actor_id": "rollout-1", "state": "stopped", "host": "rollout-0"},
              {"actor_id": "rollout-2", "state": "stopped", "host": "rollout-2"}]
    c = Cluster(3, actors)
    _run(c).scale(1, 60, lambda _: None)
    kinds = [call[0] for call in c.calls]
    assert kinds == ["exec", "exec", "patch"]                  # desired count (waits), status, then the pods
    assert c.calls[0][3][:4] == ["rlctl", "scale", "rollout", "1"]
    ops = c.calls[2][2]
    assert {"op": "replace", "path": "/spec/workerGroupSpecs/1/replicas", "value": 1} in ops
    delete = next(op["value"]["workersToDelete"] for op in ops if op["path"].endswith("scaleStrategy"))
    assert delete == ["rollout-0", "rollout-2"]                # never rollout-1: its actor still serves


def test_errors_name_what_is_missing():
    with pytest.raises(ScaleError, match="no RayJob videorl-r2-run in namespace ml"):
        K8sRun("ml", "r2", Cluster(1, []), Cluster(1, []), lambda *a: "").scale(2, 60, print)
    with pytest.raises(ScaleError, match="has no Ray cluster yet .*Initializing"):
        _run(Cluster(1, [], cluster_ready=False)).scale(2, 60, print)
