"""videorl against TRL's GRPOTrainer, end to end, on the same machine, back to back (never at the same time).

    .venv/bin/python bench/vs_trl_bench.py              # the default, the one to quote (~11-15 min on 2 cores)
    .venv/bin/python bench/vs_trl_bench.py --steps 4    # a smoke run (~3 min)
    .venv/bin/python bench/vs_trl_bench.py --report runs/vs-trl-YYYYmmdd-HHMMSS   # re-render an earlier run

Both systems train the same model (the embedded tiny Qwen2-VL with its format warm start, as `rlctl run` builds
it) on the same task and split (rlctl/configs/learn.yaml: the synthetic direction videos, 512 train rows, 64
held-out rows) with the same GRPO settings read from that config (K, prompts per step, max new tokens,
temperature, lr, KL, clip, grad clip, reward components and weights), for the same number of learner steps, so
both have trained on the same number of completions. Then each final model is scored on the held-out split by
the same code (`held_out`: greedy, graded by our `mcq` reward).

The input is the same video frames for both. TRL 1.16 samples with the frames it is given, but its log-prob pass
(`_get_per_token_logps_and_entropies`) rebuilds vision inputs from images only, so stock GRPOTrainer would score
the policy and the reference on the video placeholder tokens without their pixels. `VideoGRPOTrainer` below
closes that gap in the smallest way that keeps TRL's own generation, advantages and loss: it encodes each batch's
frames (sampled by the actors' sampler, services/common/media.py, from the same files) with the model's
processor, and adds them to every forward pass TRL makes for log-probs (policy, reference, loss) through a
forward pre-hook.

Mapping of the settings: TRL's `loss_type="dr_grpo"` is Σ masked / (B · max_len), which is our
`seq_mean_token_sum` divided by the constant max_new_tokens; AdamW is invariant to that scale except in gradient
clipping, so TRL's `max_grad_norm` is our `grad_clip / max_new_tokens`. KL is k3 with weight `kl_coef` to the
initial model in both. videorl's actors never sample vision placeholder tokens; TRL gets the same ban through
`suppress_tokens`. TRL generates with transformers' `generate` (its vLLM path passes images only, so it cannot
carry the video), with one torch thread like videorl's Ray workers (`--trl-threads`; ABOUT says why). Each system
runs in its own process; wall time counts from its start (start-up included) to the end of training, not the
evaluation. Writes bench/results/vs_trl.md and vs_trl.png; the runs go to runs/vs-trl-*.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"
CONFIG = ROOT / "rlctl" / "configs" / "learn.yaml"
STEPS = 650  # past the 325-475 steps at chance that single runs show (docs/learning.md)
VIDEO_TOKEN_TYPE = 2  # what Qwen2-VL's processor writes into mm_token_type_ids for a video token


def child_env() -> dict[str, str]:
    """The venv's bin first on PATH (DeepSpeed rebuilds its op when another ninja comes first), and no hub."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.prefix).resolve() / 'bin'}:{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_DISABLED="true",
               TOKENIZERS_PARALLELISM="false")
    return env


def load(overrides: list[str]):
    from services.common.config import load_config

    return load_config(CONFIG, overrides)


def timed(cmd: list[str], log: Path) -> float:
    """Run `cmd` from the repository root with its output in `log`; returns its wall seconds."""
    print("$", " ".join(cmd), f"> {log}", flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        done = subprocess.run(cmd, cwd=ROOT, env=child_env(), stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise click.ClickException(f"{log.stem} failed (exit {done.returncode}); see {log}")
    return time.time() - t0


# ------------------------------------------------------------------------------------------------- videorl

def run_videorl(steps: int, run_dir: Path) -> dict:
    """`rlctl run learn.yaml` for `steps` learner steps, without periodic evaluation (it would share the actors)."""
    wall = timed([sys.executable, "-m", "rlctl.cli", "run", str(CONFIG), "--set", f"run_dir={run_dir}",
                  "--set", f"learner.steps={steps}", "--set", "learner.eval_every=0", "--set", "run_id=vs-trl"],
                 run_dir.parent / "videorl.log")
    from services.common.records import RunSummary

    summary = RunSummary.model_validate_json((run_dir / "summary.json").read_text())
    recs = summary.records
    from services.common.weights import list_versions

    versions = [p for _, p in list_versions(run_dir / "weights")]
    return {"system": "videorl", "wall_s": wall, "steps": len(recs),
            "generated": summary.counters.get("completions_received", 0),
            "trained": sum(len(r.group_ids) for r in recs) * load([]).group_size,
            "step_times": [r.time for r in recs], "rewards": [r.train.reward_mean for r in recs],
            "model": str(versions[-1])}


# ----------------------------------------------------------------------------------------------------- TRL

def video_trainer_class():
    """GRPOTrainer plus the video of each row (see the module docstring); built lazily: trl is heavy to import."""
    from trl import GRPOTrainer

    class VideoGRPOTrainer(GRPOTrainer):
        def __init__(self, *args, frames, **kwargs):
            super().__init__(*args, **kwargs)
            self.frames = frames                     # video path -> sampled frames (T, H, W, 3)
            self.video_id = self.processing_class.tokenizer.convert_tokens_to_ids("<|video_pad|>")
            self.video = None                        # (pixels (N, patches, D), grid (N, 3)) of the rows in flight
            for m in (self.model, self.ref_model):
                if m is not None:
                    m.register_forward_pre_hook(self._add_video, with_kwargs=True)

        def _generate_and_score_completions(self, inputs):
            self.batch_frames = [self.frames(row["video"]) for row in inputs]
            out = super()._generate_and_score_completions(inputs)
            out["video_pixels"], out["video_grid"] = self.video  # per row: TRL shuffles and splits them with the rest
            return out

        def _tokenize_prompts(self, prompts):
            enc = self.processing_class(text=prompts, videos=self.batch_frames, padding=True, return_tensors="pt",
                                        do_resize=False, do_sample_frames=False)
            grid, pixels = enc["video_grid_thw"], enc["pixel_values_videos"]
            if not (grid == grid[0]).all():
                raise ValueError("clips of different sizes: per-row video tensors need one patch count")
            self.video = (pixels.view(len(prompts), -1, pixels.shape[-1]), grid)
            keep = enc["attention_mask"].bool()
            ids = [row[m].tolist() for row, m in zip(enc["input_ids"], keep, strict=True)]
            types = [row[m].tolist() for row, m in zip(enc["mm_token_type_ids"], keep, strict=True)]
            return ids, None, {"pixel_values_videos": pixels, "video_grid_thw": grid, "mm_token_type_ids": types}

        def _compute_loss(self, model, inputs):
            self.video = (inputs["video_pixels"], inputs["video_grid"])
            return super()._compute_loss(model, inputs)

        def _add_video(self, module, args, kwargs):
            # Only TRL's log-prob passes call the model with fused_lm_head; generate() already has the pixels.
            if not kwargs.get("fused_lm_head") or "pixel_values_videos" in kwargs:
                return None
            ids = kwargs["input_ids"]
            pixels, grid = self.video
            if len(grid) != len(ids):
                raise RuntimeError(f"{len(ids)} rows in a forward pass but {len(grid)} videos: chunking is not handled")
            kwargs.update(pixel_values_videos=pixels.flatten(0, 1), video_grid_thw=grid,
                          mm_token_type_ids=(ids == self.video_id).long() * VIDEO_TOKEN_TYPE)
            return args, kwargs

    return VideoGRPOTrainer


def reward_func(name: str):
    """One of our registered rewards as a TRL reward function (the dataset's columns arrive as keyword lists)."""
    from services.reward.catalogue import Sample, get

    fn = get(name)

    def score(completions, answer, options, task, **_):
        return [fn(c, Sample(task=t, answer=a, options=tuple(o)))
                for c, a, o, t in zip(completions, answer, options, task, strict=True)]

    score.__name__ = name
    return score


def trl_args(cfg, steps: int, out: Path, never: list[int], seed: int):
    """learn.yaml's settings as a GRPOConfig (see the module docstring for the loss and clipping mapping)."""
    from trl import GRPOConfig

    ro, lc = cfg.rollout, cfg.learner
    return GRPOConfig(
        output_dir=str(out / "trainer"), max_steps=steps, seed=seed, use_cpu=True, bf16=False,
        per_device_train_batch_size=cfg.group_size * lc.groups_per_step, gradient_accumulation_steps=1,
        steps_per_generation=1, num_generations=cfg.group_size, max_completion_length=ro.max_new_tokens,
        temperature=ro.temperature, learning_rate=lc.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=lc.grad_clip / ro.max_new_tokens, beta=lc.loss.kl_coef,
        epsilon=lc.loss.clip_eps,
        num_iterations=lc.num_iterations, loss_type="dr_grpo", scale_rewards="group",
        reward_weights=[c.weight for c in cfg.reward.components], generation_kwargs={"suppress_tokens": never},
        remove_unused_columns=False, report_to="none", save_strategy="no", logging_steps=10,
        dataloader_num_workers=0)


def trl_train(steps: int, out: Path, threads: int, seed: int = 0) -> None:
    """Train with TRL in this process; writes out/trl.json and the final model to out/model."""
    import torch
    from datasets import Dataset
    from rich.console import Console
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration, TrainerCallback

    from rlctl.assets import prepare_assets
    from services.common.media import sample_video
    from services.common.prompts import chat_text, vision_token_ids

    t0 = time.time()
    if threads:
        torch.set_num_threads(threads)
    cfg = load([])
    assets = prepare_assets(cfg, Console(stderr=True))
    processor = AutoProcessor.from_pretrained(assets.model_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(assets.model_dir, dtype=torch.float32)
    rows = [{"prompt": chat_text(processor, r.question, list(r.options)), "video": r.video, "answer": r.answer,
             "options": list(r.options), "task": r.task} for r in assets.train]
    frames = functools.lru_cache(maxsize=None)(lambda path: sample_video(path, cfg.media))  # as the FrameCache
    args = trl_args(cfg, steps, out, vision_token_ids(processor.tokenizer), seed)
    step_times: list[float] = []
    rewards: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_times.append(time.time())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                rewards.append(logs["reward"])

    trainer = video_trainer_class()(
        model=model, reward_funcs=[reward_func(c.name) for c in cfg.reward.components], args=args,
        train_dataset=Dataset.from_list(rows), processing_class=processor, callbacks=[Clock()], frames=frames)
    trainer.train()
    trained_s = time.time() - t0
    model_dir = out / "model"
    shutil.copytree(assets.model_dir, model_dir, dirs_exist_ok=True)  # processor, tokenizer, generation config
    trainer.model.save_pretrained(model_dir)
    shutil.copy(assets.model_dir / "generation_config.json", model_dir / "generation_config.json")
    (out / "trl.json").write_text(json.dumps({
        "steps": len(step_times), "generated": len(step_times) * args.per_device_train_batch_size,
        "train_s_in_process": trained_s, "step_times": step_times, "rewards_every_10": rewards,
        "model": str(model_dir)}))


def run_trl(steps: int, run_dir: Path, threads: int) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    wall = timed([sys.executable, str(Path(__file__).resolve()), "--trl-child", str(run_dir), "--steps", str(steps),
                  "--trl-threads", str(threads)], run_dir.parent / "trl.log")
    res = json.loads((run_dir / "trl.json").read_text())
    return {"system": "TRL GRPOTrainer", "wall_s": wall, "steps": res["steps"], "generated": res["generated"],
            "trained": res["generated"], "step_times": res["step_times"], "rewards": res["rewards_every_10"],
            "model": res["model"]}


# ------------------------------------------------------------------------------------------------ held out

def held_out(models: dict[str, str]) -> dict[str, float]:
    """Greedy accuracy (mean `mcq` reward) of each model on the held-out split, by one code path for all: the
    prompt and frames the actors use, transformers' greedy `generate` with the vision placeholders banned, our
    `mcq` reward. In-process and batched: the 64 clips take seconds, where `rlctl eval` would start Ray and an
    engine per model."""
    import torch
    from rich.console import Console
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from rlctl.assets import prepare_assets
    from services.common.media import sample_video
    from services.common.prompts import chat_text, vision_token_ids
    from services.reward.catalogue import Sample, get

    cfg = load([])
    rows = prepare_assets(cfg, Console()).eval_rows
    frames = [sample_video(r.video, cfg.media) for r in rows]
    mcq = get("mcq")
    accuracy = {}
    for name, path in models.items():
        processor = AutoProcessor.from_pretrained(path)
        processor.tokenizer.padding_side = "left"
        model = Qwen2VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
        enc = processor(text=[chat_text(processor, r.question, list(r.options)) for r in rows], videos=frames,
                        padding=True, return_tensors="pt", do_resize=False, do_sample_frames=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=cfg.rollout.max_new_tokens, do_sample=False,
                                 suppress_tokens=vision_token_ids(processor.tokenizer))
        texts = processor.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        scores = [mcq(t, Sample(task=r.task, answer=r.answer, options=tuple(r.options)))
                  for t, r in zip(texts, rows, strict=True)]
        accuracy[name] = sum(scores) / len(scores)
    return accuracy


# ------------------------------------------------------------------------------------------------- report

def steady_steps_per_s(times: list[float]) -> float:
    """Steps per second from the first learner step to the last (start-up and the first step left out)."""
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")


def table(results: list[dict]) -> str:
    head = ("| system | learner steps | completions trained on | completions generated | wall s (start-up incl.) "
            "| samples/s | learner steps/s | steady steps/s (first to last step) | held-out accuracy (greedy) |")
    rows = [head, "|" + "---|" * 9]
    for r in results:
        rows.append(f"| {r['system']} | {r['steps']} | {r['trained']} | {r['generated']} | {r['wall_s']:.0f} | "
                    f"{r['generated'] / r['wall_s']:.1f} | {r['steps'] / r['wall_s']:.3f} | "
                    f"{steady_steps_per_s(r['step_times']):.3f} | {r['accuracy']:.2f} |")
    ours, trl = results
    rows.append(f"| **videorl / TRL** | | | | | "
                f"**{(ours['generated'] / ours['wall_s']) / (trl['generated'] / trl['wall_s']):.2f}x** | "
                f"**{(ours['steps'] / ours['wall_s']) / (trl['steps'] / trl['wall_s']):.2f}x** | "
                f"{steady_steps_per_s(ours['step_times']) / steady_steps_per_s(trl['step_times']):.2f}x | |")
    return "\n".join(rows)


def settings_table(cfg) -> str:
    ro, lc = cfg.rollout, cfg.learner
    comps = " + ".join(f"{c.weight:g} {c.name}" for c in cfg.reward.components)
    rows = [("K (completions per prompt)", f"group_size {cfg.group_size}", f"num_generations {cfg.group_size}"),
            ("prompts per learner step", f"groups_per_step {lc.groups_per_step}",
             f"per_device_train_batch_size {cfg.group_size * lc.groups_per_step}, steps_per_generation 1"),
            ("max new tokens", f"max_new_tokens {ro.max_new_tokens}", f"max_completion_length {ro.max_new_tokens}"),
            ("sampling temperature", f"{ro.temperature:g}", f"{ro.temperature:g}"),
            ("optimizer, lr", f"AdamW {lc.lr:g}, constant, no weight decay",
             f"AdamW {lc.lr:g}, constant, no weight decay"),
            ("loss aggregation", lc.loss.agg, f"dr_grpo (= {lc.loss.agg} / {ro.max_new_tokens})"),
            ("gradient clipping", f"{lc.grad_clip:g}", f"{lc.grad_clip / ro.max_new_tokens:g} (same, rescaled)"),
            ("KL to the initial model", f"{lc.loss.kl_type}, {lc.loss.kl_coef:g}", f"k3, beta {lc.loss.kl_coef:g}"),
            ("PPO clip, updates per batch", f"{lc.loss.clip_eps:g}, {lc.num_iterations}",
             f"{lc.loss.clip_eps:g}, {lc.num_iterations}"),
            ("advantages", f"{lc.advantage} (group mean and std)", "scale_rewards group"),
            ("reward", comps, f"the same functions, reward_weights {[c.weight for c in cfg.reward.components]}"),
            ("vision placeholder tokens", "never sampled (logit bias)", "never sampled (suppress_tokens)"),
            ("generation", f"vLLM, {ro.num_actors} rollout actors, asynchronous (max_staleness {lc.max_staleness})",
             "transformers generate, in lock-step with training"),
            ("precision, devices", "fp32, CPU", "fp32, CPU")]
    return "\n".join(["| setting | videorl | TRL GRPOTrainer |", "|---|---|---|"]
                     + [f"| {a} | {b} | {c} |" for a, b, c in rows])


ABOUT = """\
Both systems start from the same weights (the embedded tiny Qwen2-VL after its format warm start), train on the same
512 synthetic direction clips for the same number of learner steps with the settings above, and are scored on the same
64 held-out clips by the same code afterwards: greedy transformers `generate` of each final model on the actors'
prompt and frames, graded by videorl's `mcq` reward (the starting model scores 0.23 there, as with `rlctl eval`).

**Input form: the same videos.** TRL 1.16's GRPOTrainer has no video column: it samples with whatever its processor
returns, but its log-prob passes (policy, reference, loss) rebuild vision inputs from images only, so stock TRL would
train on the video placeholder tokens without their pixels. The benchmark's `VideoGRPOTrainer` (about 50 lines in
bench/vs_trl_bench.py) encodes each batch's frames, sampled by the actors' own sampler from the same mp4 files, with
the model's processor, and adds them to those passes through a forward pre-hook; generation, rewards, advantages and
the loss are TRL's own. TRL's vLLM mode was not used: its vLLM path forwards images only, so it cannot carry the video
either.

**What is measured.** Wall time runs from each system's process start (Ray, reward service, vLLM engines and DeepSpeed
for videorl; model load for TRL) to the end of its last learner step and shutdown; evaluation is outside it. Samples/s
= completions generated / wall s (videorl's actors generate a few groups ahead of the learner that are never trained
on: the "generated" column); learner steps/s = steps / wall s; steady steps/s leaves out start-up. The systems run one
after the other, never together. Threads: Ray gives videorl's actors and learner OMP_NUM_THREADS=1 (its default for
actors that reserve no CPU), and the TRL process runs with one torch thread too (`--trl-threads 1`, the default): with
torch's own default of one thread per core, TRL's steps on this tiny model took 3.4-5.1 s instead of 0.41-0.54 s (12
steps each, 2-core machine under load 5-9, 2026-11-28), so two threads would mostly measure thread contention. The
ratio row is videorl's rate divided by TRL's (higher = videorl faster); both trained on the same number of
completions, so the learner steps/s ratio (TRL's wall time / videorl's) is the end-to-end speed-up.

**What differs by design.** videorl generates with vLLM in separate actors while the learner trains (off-policy by at
most `max_staleness` versions, corrected by the PPO ratio against the sampler's log-probs); TRL alternates generate
and train in one process, so its updates are exactly on-policy. TRL encodes each prompt's video once per completion (K
times), vLLM once per prompt. Held-out accuracy after the same number of samples can therefore differ by more than
seed noise; on this task a single run's accuracy sits at chance for 325-475 steps and then rises within 100 steps
(docs/learning.md), so compare it only with a step count past that plateau. With one run per system, which run has
left the plateau by the last step is partly chance: a difference in accuracy is one observation, not a rate.
"""


def plot(results: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        t0 = r["step_times"][0]
        left.plot([t - t0 for t in r["step_times"]], range(1, len(r["step_times"]) + 1), label=r["system"])
        right.plot(*reward_per_10_steps(r), marker=".", label=r["system"])
    left.set_xlabel("seconds since the first learner step")
    left.set_ylabel("learner steps done")
    right.set_xlabel("learner step")
    right.set_ylabel("training reward (mean of 10 steps)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("GRPO on the tiny Qwen2-VL: same settings, same machine, one after the other")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def reward_per_10_steps(r: dict) -> tuple[list[int], list[float]]:
    """videorl records every step's mean reward, TRL logs the mean of every 10: put both on TRL's grid."""
    if r["system"] == "videorl":
        rw = r["rewards"]
        return ([i + 10 for i in range(0, len(rw) - 9, 10)],
                [sum(rw[i:i + 10]) / 10 for i in range(0, len(rw) - 9, 10)])
    return [10 * (i + 1) for i in range(len(r["rewards"]))], r["rewards"]


def write_report(run: Path, meta: dict, results: list[dict]) -> None:
    """bench/results/vs_trl.md and .png from one benchmark run."""
    md = table(results)
    ours, trl = results
    ratio = trl["wall_s"] / ours["wall_s"]  # same steps, same completions trained on
    print(md)
    OUT.mkdir(parents=True, exist_ok=True)
    plot(results, OUT / "vs_trl.png")
    start = "" if meta["start_accuracy"] is None else f" Held-out accuracy of the starting model: " \
        f"{meta['start_accuracy']:.2f}."
    threads = f" --trl-threads {meta['trl_threads']}" if meta["trl_threads"] != 1 else ""
    (OUT / "vs_trl.md").write_text(
        f"# videorl vs TRL's GRPOTrainer, end to end\n\n`python bench/vs_trl_bench.py --steps {meta['steps']}"
        f"{threads}`, {meta['date']}, {meta['cores']} CPU cores, load average {meta['load_before']:.1f} before and "
        f"{meta['load_after']:.1f} after; whole command {meta['whole_s']:.0f} s; run dir `{run.relative_to(ROOT)}`."
        f"\n\n{md}\n\nEnd-to-end ratio videorl / TRL: **{ratio:.2f}x** (learner steps per second of wall time, "
        f"start-up included; both trained on {ours['trained']:,} completions; videorl {ours['wall_s']:.0f} s, "
        f"TRL {trl['wall_s']:.0f} s; above 1 = videorl faster). Held-out accuracy after those completions: "
        f"videorl {ours['accuracy']:.2f}, TRL {trl['accuracy']:.2f} (one run each).{start}\n\n"
        f"![learner steps against time, training reward](vs_trl.png)\n\n"
        f"## Settings\n\n{settings_table(load([]))}\n\n## How it is measured\n\n{ABOUT}")
    print(f"wrote {OUT / 'vs_trl.md'} and {OUT / 'vs_trl.png'}")


@click.command()
@click.option("--steps", default=STEPS, show_default=True, help="learner steps for each system")
@click.option("--trl-threads", default=1, show_default=True,
              help="torch threads in the TRL process (0 = torch's default: one per core); see ABOUT")
@click.option("--no-start-eval", is_flag=True, help="skip scoring the starting model")
@click.option("--report", "report_run", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="rewrite bench/results/vs_trl.* from an earlier run's directory instead of running")
@click.option("--trl-child", type=click.Path(path_type=Path), hidden=True, help="internal: train with TRL here")
@click.option("--trl-seed", default=0, hidden=True, help="with --trl-child: TRL's seed (sampling, data order)")
def main(steps: int, trl_threads: int, no_start_eval: bool, report_run: Path | None, trl_child: Path | None,
         trl_seed: int) -> None:
    if trl_child is not None:
        trl_train(steps, trl_child, trl_threads, trl_seed)
        return
    if report_run is not None:
        saved = json.loads((report_run / "results.json").read_text())
        write_report(report_run.resolve(), saved["meta"], saved["results"])
        return
    from rich.console import Console

    from rlctl.assets import prepare_assets

    t0, load_before = time.time(), os.getloadavg()[0]
    base = prepare_assets(load([]), Console()).model_dir  # built once here, so neither system's time includes it
    run = ROOT / "runs" / f"vs-trl-{time.strftime('%Y%m%d-%H%M%S')}"
    run.mkdir(parents=True)
    results = [run_videorl(steps, run / "videorl"), run_trl(steps, run / "trl", trl_threads)]
    models = {r["system"]: r["model"] for r in results} | ({} if no_start_eval else {"start": str(base)})
    accuracy = held_out(models)
    for r in results:
        r["accuracy"] = accuracy[r["system"]]
    meta = {"steps": steps, "trl_threads": trl_threads, "start_accuracy": accuracy.get("start"),
            "date": time.strftime("%Y-%m-%d %H:%M"), "cores": os.cpu_count(), "load_before": load_before,
            "load_after": os.getloadavg()[0], "whole_s": time.time() - t0}
    (run / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    write_report(run, meta, results)
    print(f"whole command: {meta['whole_s']:.0f} s")


if __name__ == "__main__":
    main()
