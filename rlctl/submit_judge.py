"""The self-hosted judge of a submitted run (deploy/k8s/base/judge.yaml): kept only for a config with
reward.judge.serve, with the Serve application's args and the judge group's pod bounds taken from it, and the
reward service pointed at the RayService's serve Service. A config without it gets no judge objects at all."""

from __future__ import annotations

import click
import yaml

from services.common.config import RunConfig

JUDGE = "videorl-judge"        # the RayService and its NetworkPolicy, as the base names them
SERVE_PORT = 8000
GPU_RESOURCE = "nvidia.com/gpu"


def judge_url(service_name: str) -> str:
    """The judge's base URL inside the namespace: KubeRay names the RayService's Serve Service `<name>-serve-svc`."""
    return f"http://{service_name}-serve-svc:{SERVE_PORT}/v1"


def customize_judge(docs: list[dict], cfg: RunConfig, judge_name: str) -> list[dict]:
    """`docs` (already renamed: the judge's objects are `judge_name`) without the judge when the run serves none,
    else with its application args and pod bounds from reward.judge.serve."""
    serve = cfg.reward.judge.serve
    if serve is None:
        return [d for d in docs if d["metadata"]["name"] != judge_name]
    if serve.model is None:
        raise click.ClickException("reward.judge.serve.model: give the judge model's directory on the data volume "
                                   "(the embedded tiny judge is for local runs only)")
    for doc in docs:
        if doc["kind"] != "RayService" or doc["metadata"]["name"] != judge_name:
            continue
        spec = doc["spec"]
        group = spec["rayClusterConfig"]["workerGroupSpecs"][0]
        gpu = any(GPU_RESOURCE in amounts for c in group["template"]["spec"]["containers"]
                  for amounts in c.get("resources", {}).values())
        config = yaml.safe_load(spec["serveConfigV2"])
        (app,) = config["applications"]
        app["args"] = {**serve.model_dump(mode="json", exclude_none=True), "host": "0.0.0.0", "port": SERVE_PORT,
                       "name": cfg.reward.judge.model or "judge", "accelerator": "gpu" if gpu else "cpu"}
        if gpu:
            app["args"]["num_gpus"] = max(serve.num_gpus, 1.0)
        spec["serveConfigV2"] = yaml.safe_dump(config, sort_keys=False)
        group.update(replicas=serve.min_replicas, minReplicas=serve.min_replicas, maxReplicas=serve.max_replicas)
    return docs


def cluster_judge(cfg: RunConfig, judge_name: str) -> dict:
    """The reward.judge fields the pods run with: the served judge's Service instead of `serve` (the RayService
    serves it; nothing in a pod starts one)."""
    if cfg.reward.judge.serve is None:
        return {}
    return {"base_url": judge_url(judge_name), "serve": None}
