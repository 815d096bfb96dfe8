"""bench/gpu_smoke.py's argument and config building, on CPU: what the GPU run would be given (bf16, CUDA graphs, the
memory share, learner ranks = GPUs - 1, one GPU per process), its --dry-run through main(), and the 2B architecture
built on the meta device (no weights allocated)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bench import gpu_smoke as smoke
from rlctl.cluster import ClusterTarget
from services.learner.ds_model import ds_config
from services.learner.engine import train_spec
from services.rollout.engine import engine_args


def config(gpus: int, tmp_path: Path):
    return smoke.smoke_config(smoke.Plan(gpus), 10, tmp_path / "model", tmp_path / "run")


@pytest.mark.parametrize("gpus", [1, 2, 4])
def test_the_run_is_bf16_with_cuda_graphs_and_the_learner_on_the_other_gpus(gpus, tmp_path):
    cfg = config(gpus, tmp_path)
    assert cfg.cluster.accelerator == "gpu"
    assert (cfg.learner.dtype, cfg.rollout.engine.dtype) == ("bfloat16", "bfloat16")
    assert cfg.rollout.engine.enforce_eager is False
    assert cfg.rollout.num_actors == 1 and cfg.rollout.engine.tensor_parallel_size == 1
    assert cfg.learner.ranks == max(1, gpus - 1)
    assert cfg.learner.steps == 10 and cfg.learner.publish_every < cfg.learner.steps
    args = engine_args(Path(cfg.model.path), cfg)
    assert args["dtype"] == "bfloat16" and args["enforce_eager"] is False
    shared = gpus == 1
    assert args["gpu_memory_utilization"] == (smoke.SHARED_MEMORY if shared else smoke.DEDICATED_MEMORY)
    # Sharing a GPU, vLLM's KV cache is fixed (its profiling would count the learner's memory); else it fills its share.
    assert args.get("kv_cache_memory_bytes") == (smoke.SHARED_KV_MIB << 20 if shared else None)
    ds = ds_config(train_spec(cfg.learner, cfg.learner.groups_per_step * cfg.group_size, gpu=True))
    assert ds["bf16"]["enabled"] is True and "torch_adam" not in ds["optimizer"]["params"]
    for role in ("rollout", "learner"):
        placement = ClusterTarget().place(role, cfg)
        assert placement.options["num_gpus"] == (0.5 if shared else 1) and placement.bundles == []


def test_one_gpu_is_shared_by_colocating_two_are_not(tmp_path):
    one, two = config(1, tmp_path), config(2, tmp_path)
    assert one.cluster.colocate and not two.cluster.colocate
    # half a GPU each: Ray places the actor and the learner rank on the one GPU, and sets CUDA_VISIBLE_DEVICES to it
    assert {r: ClusterTarget().place(r, one).options["num_gpus"] for r in ("rollout", "learner")} == \
        {"rollout": 0.5, "learner": 0.5}


def test_dry_run_prints_what_it_would_start():
    result = CliRunner().invoke(smoke.main, ["--dry-run", "--gpus", "4", "--steps", "7"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["plan"] == {"gpus": 4, "rollout_actors": 1, "learner_ranks": 3, "shared_gpu": False}
    assert out["config"]["learner"]["ranks"] == 3 and out["config"]["learner"]["steps"] == 7
    assert out["vllm_engine_args"]["enforce_eager"] is False
    assert out["vllm_engine_args"]["gpu_memory_utilization"] == smoke.DEDICATED_MEMORY
    assert out["deepspeed"]["bf16"] == {"enabled": True}
    assert {r: o["options"]["num_gpus"] for r, o in out["ray_options"].items()} == {"rollout": 1, "learner": 1}


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, main() would start the real run")
def test_without_a_gpu_it_says_so_and_starts_nothing():
    result = CliRunner().invoke(smoke.main, [])
    assert result.exit_code == 1
    assert "no CUDA GPU" in result.output and "--dry-run" in result.output
    assert "Traceback" not in result.output


def test_the_2b_architecture_has_qwen2_vl_2b_parameters_on_the_meta_device():
    from transformers import AutoModelForImageTextToText

    from services.embedded.model import build_tokenizer

    tokenizer = build_tokenizer()
    d = smoke.arch(tokenizer)
    assert d["vocab_size"] == 151936 and max(tokenizer.get_vocab().values()) < d["vocab_size"]
    assert d["video_token_id"] == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(smoke.arch_config(d))
    text = model.config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_key_value_heads) == (1536, 28, 2)
    assert model.config.vision_config.depth == 32 and model.config.tie_word_embeddings
    n = sum(p.numel() for p in model.parameters())
    assert 2.19e9 < n < 2.23e9   # Qwen2-VL-2B: 2.21 B (tied embeddings)


def test_the_table_reads_a_run_summary(tmp_path, monkeypatch):
    from services.common.records import ActorStats, RunSummary, StepRecord, SwapLag, TrainStats

    stats = TrainStats(loss=0, pg_loss=0, kl_mean=0, ratio_mean=1, clip_frac=0, clip_frac_low=0, clip_frac_high=0,
                       dual_clip_frac=0, tokens=1024, adv_abs_mean=0, adv_std=0, adv_min=0, adv_max=0, reward_mean=0,
                       micro_batches=1)

    def step(i: int, train: float, publish: float | None) -> StepRecord:
        seconds = {"wait": 0.1, "train": train, **({"publish": publish} if publish else {})}
        return StepRecord(step=i, time=100.0 + 2 * i, version=i // 3, published=i // 3 if publish else None,
                          group_ids=[], group_versions=[], staleness_max=0, actor_versions={}, seconds=seconds,
                          train=stats)

    records = [step(i, 1.0 + i / 10, 5.0 if i % 3 == 0 else None) for i in range(1, 11)]
    actor = ActorStats(actor_id="rollout-0", tokens=9000, busy_seconds=3.0, swaps=3, swap_seconds=0.6)
    summary = RunSummary(records=records, actors=[actor], counters={}, reward_metrics={}, run_dir=str(tmp_path),
                         swap_lag=[SwapLag(version=1, actor="rollout-0", seconds=0.5, steps=0)], seconds=150.0)
    m = smoke.measure(summary, started=90.0)
    assert m["tokens_per_s"] == {"rollout-0": 3000.0} and m["train_s"] == pytest.approx(1.55)
    assert (m["publish_s"], m["publishes"], m["swap_pause_s"], m["swaps"]) == (5.0, 3, pytest.approx(0.2), 3)
    assert m["first_step_s"] == 12.0 and m["step_s"] == 2.0
    text = smoke.table(m, "NVIDIA H100 80GB HBM3", smoke.Plan(1))
    assert "| NVIDIA H100 80GB HBM3 | 1 (shared by actor and learner) | 1 / 1 | 3,000 | 1.55 |" in text
    monkeypatch.setattr(smoke, "OUT", tmp_path)
    cfg = config(1, tmp_path)
    smoke.write_results(text, m, cfg, "NVIDIA H100 80GB HBM3")
    assert text in (tmp_path / "gpu_smoke.md").read_text()
