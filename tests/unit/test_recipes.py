"""The GPU recipes (rlctl/configs/recipes): each loads, names only registered rewards, fits 80 GiB GPUs by `rlctl plan`
with its model's architecture config, renders for the gpu overlay with one pod per actor (tensor_parallel_size GPUs
each) and per learner rank (one GPU each), and becomes the vLLM engine arguments vLLM accepts (its own
AsyncEngineArgs and model config, built from the architecture config without weights), a bf16 DeepSpeed config of
its ZeRO stage and the Ray placement of each process. No GPU is needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from test_k8s_manifests import GPU, validation_errors, worker_groups

from rlctl.cli import DEFAULT_CONFIG, main
from rlctl.cluster import ClusterTarget
from rlctl.model_arch import model_shape
from rlctl.plan import GiB, kv_bytes_per_token, plan_run
from services.common.config import RunConfig, load_config

RECIPES = sorted((DEFAULT_CONFIG.parent / "recipes").glob("*.yaml"))
ARCH = Path(__file__).resolve().parents[1] / "data" / "arch"
H100 = 80 * GiB


def arch_config(cfg: RunConfig) -> Path:
    """The architecture config of a recipe's model: tests/data/arch/<name of model.path>/config.json."""
    assert cfg.model.path is not None and Path(cfg.model.path).is_relative_to("/data")   # the cluster's volume
    return ARCH / Path(cfg.model.path).name / "config.json"


def test_there_are_recipes_for_one_and_two_nodes():
    assert [r.name for r in RECIPES] == ["qwen2.5-vl-3b-1node-8gpu.yaml", "qwen2.5-vl-7b-2node-8gpu.yaml"]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_a_recipe_loads_names_registered_rewards_and_fits_80gib_gpus(recipe):
    from services.reward.scoring import Scorer

    cfg = load_config(recipe)
    Scorer(cfg.reward)   # every component name is registered (an unknown one raises, naming the field)
    assert {"temporal_iou", "judge"} <= {c.name for comps in cfg.reward.tasks.values() for c in comps}
    assert cfg.cluster.accelerator == "gpu" and arch_config(cfg).is_file()
    assert cfg.data.train is not None and Path(cfg.data.train).is_relative_to("/data")
    r = CliRunner().invoke(main, ["plan", str(recipe), "--model-config", str(arch_config(cfg)), "--gpu-mem", "80GiB"])
    assert r.exit_code == 0, r.output
    assert "learner rank: fits" in r.output and "): fits" in r.output.split("rollout actor")[-1]
    plan = plan_run(cfg, json.loads(arch_config(cfg).read_text()), H100)
    for c in plan.components:   # room to spare, not a near miss: these are estimates
        assert c.fits and c.margin > 10 * GiB, (c.name, c.margin / GiB)
    gpus = cfg.rollout.num_actors * cfg.rollout.engine.tensor_parallel_size + cfg.learner.ranks
    assert gpus == (8 if "1node" in recipe.name else 16)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_a_recipe_renders_one_pod_per_actor_and_per_learner_rank(recipe):
    r = CliRunner().invoke(main, ["submit", str(recipe), "--dry-run", "--overlay", "gpu", "-n", "ml"])
    assert r.exit_code == 0, r.output
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    assert validation_errors(docs) == []
    cfg = load_config(recipe)
    groups = worker_groups(docs)
    for name, pods, gpus in (("rollout", cfg.rollout.num_actors, cfg.rollout.engine.tensor_parallel_size),
                             ("learner", cfg.learner.ranks, 1)):
        g = groups[name]
        assert g["replicas"] == pods and g["minReplicas"] <= pods <= g["maxReplicas"], name
        assert json.loads(json.loads(g["rayStartParams"]["resources"])) == {f"videorl_{name}": 1}   # a quoted JSON
        resources = g["template"]["spec"]["containers"][0]["resources"]
        assert resources["limits"][GPU] == resources["requests"][GPU] == gpus, name
        cpus = int(resources["requests"]["cpu"])
        assert cpus >= gpus   # a placement group bundle takes a CPU with each GPU
    embedded = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap" and d["data"].get("config.yaml"))
                              ["data"]["config.yaml"])
    assert embedded["model"]["path"] == str(cfg.model.path)


@pytest.fixture(scope="module")
def vllm_model_configs():
    """vLLM's own model config of each recipe's engine arguments, built from the architecture config (no weights)."""
    import vllm

    from services.rollout.engine import engine_args

    out = {}
    for recipe in RECIPES:
        cfg = load_config(recipe).on("gpu")
        args = engine_args(arch_config(cfg).parent, cfg)
        out[recipe.name] = (args, vllm.AsyncEngineArgs(**args).create_model_config())
    return out


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_a_recipe_becomes_engine_args_vllm_accepts_and_a_bf16_deepspeed_config(recipe, vllm_model_configs):
    from vllm.config import ParallelConfig

    from services.learner.ds_model import ds_config
    from services.learner.engine import train_spec

    cfg = load_config(recipe).on("gpu")
    e = cfg.rollout.engine
    args, model_config = vllm_model_configs[recipe.name]
    assert args["dtype"] == "bfloat16" and args["enforce_eager"] is False            # CUDA graphs
    assert args["tensor_parallel_size"] == e.tensor_parallel_size
    assert args["distributed_executor_backend"] == ("uni" if e.tensor_parallel_size == 1 else "ray")
    assert args["gpu_memory_utilization"] == e.gpu_memory_utilization and "kv_cache_memory_bytes" not in args
    assert args["max_num_batched_tokens"] == e.max_num_batched_tokens
    assert model_config.max_model_len == e.max_model_len and str(model_config.dtype) == "torch.bfloat16"
    assert model_config.is_multimodal_model
    # the plan's KV bytes per token agree with vLLM's own view of the model sharded over TP
    parallel = ParallelConfig(tensor_parallel_size=e.tensor_parallel_size)
    vllm_kv = (2 * model_config.get_num_layers(parallel) * model_config.get_num_kv_heads(parallel)
               * model_config.get_head_size() * 2)
    shape = model_shape(json.loads(arch_config(cfg).read_text()))
    assert kv_bytes_per_token(shape, e.tensor_parallel_size, 2) == vllm_kv
    spec = train_spec(cfg.learner, batch_size=cfg.learner.groups_per_step * cfg.group_size, gpu=True)
    ds = ds_config(spec)
    assert spec.dtype == "bfloat16" and spec.gradient_checkpointing is True and spec.gpu is True
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert ds["zero_optimization"]["stage"] == cfg.learner.zero_stage
    assert "torch_adam" not in ds["optimizer"]["params"]        # DeepSpeed's fused Adam on GPU
    assert "offload_optimizer" not in ds["zero_optimization"]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_a_recipe_asks_ray_for_one_gpu_per_learner_rank_and_tp_gpus_per_actor(recipe):
    cfg = load_config(recipe).on("gpu")
    target = ClusterTarget("ray://x:10001", None)
    learner = target.place("learner", cfg)
    assert learner.options == {"num_cpus": 0, "resources": {"videorl_learner": 1}, "num_gpus": 1}
    assert learner.bundles == []
    rollout, tp = target.place("rollout", cfg), cfg.rollout.engine.tensor_parallel_size
    if tp == 1:
        assert rollout.options == {"num_cpus": 0, "resources": {"videorl_rollout": 1}, "num_gpus": 1}
        assert rollout.bundles == []
    else:   # a placement group of TP bundles, a GPU each; the actor in the first, with its worker group's resource
        assert rollout.options == {"num_cpus": 0, "num_gpus": 0}
        assert rollout.bundles == [{"GPU": 1, "CPU": 1, "videorl_rollout": 1}] + [{"GPU": 1, "CPU": 1}] * (tp - 1)
