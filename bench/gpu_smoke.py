"""GPU smoke: the real loop (vLLM, DeepSpeed, Redis, the reward service; `rlctl run`'s run_local) on a random-init
Qwen2-VL of the 2B shape, 10 learner steps, and what it measured: generation tokens/s per actor, the learner's train
phase, publishing, the actor's pause per weight swap and the time to the first step.

    python bench/gpu_smoke.py --dry-run         # the config, vLLM engine args, DeepSpeed config and Ray options; no GPU
    python bench/gpu_smoke.py --write           # run it; writes bench/results/gpu_smoke.md next to the printed table
    python bench/gpu_smoke.py --gpus 4 --steps 20

The architecture is Qwen/Qwen2-VL-2B-Instruct's published config.json (Hugging Face Hub, transformers 4.41.2 format),
copied field for field into bench/qwen2_vl_2b_instruct_config.json: 2.21 B parameters, tied embeddings, vocab 151,936.
Only the special-token ids change, to the project's offline tokenizer's (services/embedded/model.py, 731 tokens): every
id it produces is below the published vocab_size, which is kept. A random-init model mostly samples ids above the
tokenizer's 731 (they decode to nothing): completions run to max_new_tokens, every reward is 0 and every advantage 0,
but each step still generates, trains (forward and backward over every token) and publishes at full size.

GPUs: one rollout actor (one GPU, CUDA graphs) and the learner on the others (learner.ranks = GPUs - 1, ZeRO-2).
On a one-GPU machine both share the GPU: Ray is told the node has 2 GPUs and leaves CUDA_VISIBLE_DEVICES alone, vLLM
takes a smaller share (gpu_memory_utilization 0.3) and a fixed KV cache, since its profiling would count the learner's
allocations as its own. The model is built once into $VIDEORL_CACHE/qwen2vl-2b-shape-s0 (4.4 GB of bf16 safetensors).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "results"
ARCH_FILE = ROOT / "bench" / "qwen2_vl_2b_instruct_config.json"
# The published config's special-token ids and the Qwen tokens they stand for, re-pointed at our tokenizer's ids.
QWEN_TOKENS = {"bos_token_id": "<|endoftext|>", "eos_token_id": "<|im_end|>",
               "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>",
               "vision_token_id": "<|vision_pad|>", "image_token_id": "<|image_pad|>",
               "video_token_id": "<|video_pad|>"}
DEDICATED_MEMORY, SHARED_MEMORY = 0.85, 0.3   # rollout.engine.gpu_memory_utilization: own GPU / shared with learner
SHARED_KV_MIB = 4096                          # 150 k tokens of KV cache at 28 KiB per token (28 layers, 2 KV heads)


class SmokeError(click.ClickException):
    """A condition the smoke cannot run under, said in one line (no traceback)."""


# ------------------------------------------------------------------------------------------------ the model


def arch(tokenizer=None) -> dict:
    """The published config; with `tokenizer`, its special-token ids in place of Qwen's (checked < vocab_size)."""
    d = json.loads(ARCH_FILE.read_text())
    if tokenizer is None:
        return d
    ids = {key: tokenizer.convert_tokens_to_ids(token) for key, token in QWEN_TOKENS.items()}
    if not all(isinstance(i, int) for i in ids.values()):
        raise ValueError(f"a Qwen special token is missing from the tokenizer: {ids}")
    top = max(tokenizer.get_vocab().values())
    if top >= d["vocab_size"]:
        raise ValueError(f"tokenizer id {top} is not below vocab_size {d['vocab_size']}")
    return {**d, **ids, "pad_token_id": ids["bos_token_id"]}


def arch_config(d: dict):
    """A transformers config of `d` (Qwen2VLConfig; the published flat format is read as transformers reads it)."""
    from transformers import AutoConfig

    return AutoConfig.for_model(**d)


def build_model(out_dir: Path, d: dict | None = None, seed: int = 0) -> Path:
    """A complete model directory (bf16 safetensors, the offline tokenizer and processor, generation config) of a
    random-init model of architecture `d` (default: the 2B shape with our tokenizer's ids), built once."""
    import torch

    from services.embedded.model import build_processor, build_tokenizer
    from services.embedded.synth import build_once

    def build(tmp: Path) -> None:
        from transformers import AutoModelForImageTextToText, GenerationConfig

        tokenizer = build_tokenizer()
        cfg = arch_config(d or arch(tokenizer))
        torch.manual_seed(seed)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):   # init on the GPU: seconds, not minutes
            model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.bfloat16)
        model.save_pretrained(tmp)
        build_processor(tokenizer).save_pretrained(tmp)
        stop = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        GenerationConfig(eos_token_id=stop, pad_token_id=stop[1], do_sample=True, temperature=1.0).save_pretrained(tmp)

    build_once(out_dir, {"arch": d or json.loads(ARCH_FILE.read_text()), "seed": seed, "dtype": "bfloat16"}, build)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()   # the learner and vLLM need that memory; this process only waits from here on
    return out_dir


# --------------------------------------------------------------------------------------------- the run plan


@dataclass(frozen=True)
class Plan:
    """How the GPUs are used: one rollout actor on one GPU, the learner's ranks on the rest (at least one)."""

    gpus: int

    @property
    def ranks(self) -> int:
        return max(1, self.gpus - 1)

    @property
    def shared(self) -> bool:
        """The rollout actor and the learner share one GPU."""
        return self.gpus < 2


def overrides(plan: Plan, steps: int, model_dir: Path, run_dir: Path) -> list[str]:
    """`rlctl run --set` overrides of the default config for the smoke (K=8, 8 groups a step, 128 new tokens)."""
    engine = {"dtype": "bfloat16", "enforce_eager": "false", "tensor_parallel_size": 1, "max_model_len": 1024,
              "gpu_memory_utilization": SHARED_MEMORY if plan.shared else DEDICATED_MEMORY,
              "kv_cache_mib": SHARED_KV_MIB if plan.shared else "null"}
    learner = {"steps": steps, "ranks": plan.ranks, "dtype": "bfloat16", "gradient_checkpointing": "true",
               "zero_stage": 2, "groups_per_step": 8, "publish_every": 3, "lr": "1.0e-6", "eval_every": 0,
               "micro_batch_tokens": 4096, "prefetch_prompts": 16}
    rollout = {"num_actors": 1, "prompts_per_batch": 8, "max_new_tokens": 128}
    top = {"run_id": "gpu-smoke", "run_dir": str(run_dir), "model.path": str(model_dir), "group_size": 8,
           "cluster.accelerator": "gpu", "cluster.colocate": str(plan.shared).lower()}
    return ([f"{k}={v}" for k, v in top.items()] + [f"rollout.{k}={v}" for k, v in rollout.items()]
            + [f"rollout.engine.{k}={v}" for k, v in engine.items()] + [f"learner.{k}={v}" for k, v in learner.items()])


def smoke_config(plan: Plan, steps: int, model_dir: Path, run_dir: Path):
    """The run config: rlctl/configs/default.yaml with `overrides`, made concrete for GPU (what the services get)."""
    from rlctl.cli import DEFAULT_CONFIG
    from services.common.config import load_config

    return load_config(DEFAULT_CONFIG, overrides(plan, steps, model_dir, run_dir)).on("gpu")


def dry_run_report(plan: Plan, cfg) -> dict:
    """What the run would use, started nowhere: config, vLLM engine args, DeepSpeed config, Ray options."""
    from rlctl.cluster import ClusterTarget
    from services.learner.ds_model import ds_config
    from services.learner.engine import train_spec
    from services.rollout.engine import engine_args

    batch = cfg.learner.groups_per_step * cfg.group_size   # the driver's nominal batch (services/learner/driver.py)
    target = ClusterTarget()
    return {"plan": {"gpus": plan.gpus, "rollout_actors": 1, "learner_ranks": plan.ranks, "shared_gpu": plan.shared},
            "config": cfg.model_dump(mode="json"),
            "vllm_engine_args": engine_args(Path(cfg.model.path), cfg),
            "deepspeed": ds_config(train_spec(cfg.learner, batch, gpu=True)),
            "ray_options": {role: {"options": p.options, "bundles": p.bundles}
                            for role in ("rollout", "learner") if (p := target.place(role, cfg))}}


# --------------------------------------------------------------------------------------------- the run


def run(cfg):
    """(RunSummary, unix time the run was asked to start) of the real loop, as `rlctl run` runs it, in a fresh run dir
    (an earlier smoke's versions would otherwise stay on disk, 4.4 GB each)."""
    from rich.console import Console

    from rlctl.local import run_local

    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    started = time.time()
    return run_local(cfg, Console(stderr=True)), started


def measure(summary, started: float) -> dict:
    """The smoke's figures from a RunSummary (medians over the learner's steps, means over the actor's swaps)."""
    recs = summary.records
    publish = [r.seconds["publish"] for r in recs if "publish" in r.seconds]
    swaps = sum(a.swaps for a in summary.actors)
    lags = [s.seconds for s in summary.swap_lag if s.seconds is not None]
    gaps = [b.time - a.time for a, b in zip(recs, recs[1:], strict=False)]
    med = statistics.median
    return {"steps": len(recs),
            "tokens_per_s": {a.actor_id: a.tokens_per_s for a in summary.actors},
            "train_s": med([r.seconds["train"] for r in recs]),
            "step_s": med(gaps) if gaps else None,
            "publish_s": med(publish) if publish else None, "publishes": len(publish),
            "swap_pause_s": sum(a.swap_seconds for a in summary.actors) / swaps if swaps else None, "swaps": swaps,
            "swap_lag_s": med(lags) if lags else None,
            "first_step_s": recs[0].time - started if recs else None,
            "run_s": summary.seconds}


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table(m: dict, device: str, plan: Plan) -> str:
    head = ("| GPU | GPUs | actors / learner ranks | generation tokens/s per actor | learner train phase s (median) | "
            "learner step s (median) | publish s (median) | swap: actor paused s (mean) | publish -> served s "
            "(median) | time to first step s | run s |")
    tok = " / ".join(f"{v:,.0f}" for v in m["tokens_per_s"].values()) or "-"
    gpus = f"{plan.gpus}" + (" (shared by actor and learner)" if plan.shared else "")
    row = (f"| {device} | {gpus} | 1 / {plan.ranks} | {tok} | {_f(m['train_s'])} | {_f(m['step_s'])} | "
           f"{_f(m['publish_s'])} ({m['publishes']}) | {_f(m['swap_pause_s'], 3)} ({m['swaps']}) | "
           f"{_f(m['swap_lag_s'])} | {_f(m['first_step_s'], 1)} | {_f(m['run_s'], 1)} |")
    return "\n".join([head, "|" + "---|" * 11, row])


def write_results(text: str, m: dict, cfg, device: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    settings = (f"K={cfg.group_size}, {cfg.learner.groups_per_step} groups a step, {cfg.rollout.max_new_tokens} new "
                f"tokens, publishing every {cfg.learner.publish_every} steps, ZeRO-{cfg.learner.zero_stage}, bf16, "
                f"gradient checkpointing, vLLM gpu_memory_utilization {cfg.rollout.engine.gpu_memory_utilization}")
    (OUT / "gpu_smoke.md").write_text(
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {device} (`python bench/gpu_smoke.py --write`): the real loop "
        f"on a random-init Qwen2-VL of the 2B shape, {m['steps']} learner steps; {settings}. In parentheses: how many "
        f"publishes and swaps the figure is over.\n\n{text}\n\n```json\n{json.dumps(m, indent=2)}\n```\n")


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


@click.command()
@click.option("--gpus", type=int, default=None, help="GPUs to use (default: every visible one).")
@click.option("--steps", type=int, default=10, show_default=True, help="Learner steps.")
@click.option("--dry-run", is_flag=True, help="Print the config, vLLM engine args, DeepSpeed config and Ray options.")
@click.option("--write", is_flag=True, help="Write bench/results/gpu_smoke.md.")
def main(gpus: int | None, steps: int, dry_run: bool, write: bool) -> None:
    import torch

    from rlctl.assets import CACHE

    visible = torch.cuda.device_count()
    if gpus is not None and gpus < 1:
        raise click.BadParameter("at least 1", param_hint="--gpus")
    plan = Plan(gpus or max(1, visible))
    model_dir, run_dir = CACHE / "qwen2vl-2b-shape-s0", CACHE / "gpu-smoke-run"
    cfg = smoke_config(plan, steps, model_dir, run_dir)
    if dry_run:
        if not visible:
            click.echo(f"no GPU here: the plan for {plan.gpus} GPU(s)", err=True)
        click.echo(json.dumps(dry_run_report(plan, cfg), indent=2))
        return
    if not visible:
        raise SmokeError("no CUDA GPU visible (torch.cuda.is_available() is False): this benchmark runs the loop on "
                         "GPUs; --dry-run prints what it would run")
    if plan.gpus > visible:
        raise SmokeError(f"--gpus {plan.gpus}, but {visible} GPU(s) are visible")
    click.echo(f"building the 2B-shape model once into {model_dir} ...", err=True)
    build_model(model_dir)
    summary, started = run(cfg)
    m, device = measure(summary, started), gpu_name()
    text = table(m, device, plan)
    click.echo(text)
    if write:
        write_results(text, m, cfg, device)


if __name__ == "__main__":
    main()
