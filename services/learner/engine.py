"""The learner's model under DeepSpeed: GRPO updates on batches, checkpoints, and full weights for publishing.

One `train_step` = `num_iterations` optimizer updates on one batch of whole groups. Each update runs the
batch as micro-batches packed up to `micro_batch_tokens` padded tokens and accumulates their gradients;
each micro-batch's loss is scaled by its share of the batch (its tokens, sequences or rows, as `loss.agg`
counts them), so the accumulated gradient is the whole batch's and does not depend on the packing.
The old log-probs (sampler's or the learner's first pass), the reference log-probs and the truncated
importance weights are fixed on the first update and reused by the later ones.

With `freeze_vision` only the language model trains, but a published version is still a complete model
directory (vision tower included, unchanged): vLLM loads whole directories.
The KL reference (loaded only when learner.loss.kl_coef > 0) is the starting model: a frozen copy on every rank,
or under ZeRO-3 a DeepSpeed engine partitioned like the policy.

With several ranks (services/learner/ranks.py) each trains its share of the batch's groups under a `StepPlan`,
so that their gradients add up to the whole batch's. On CPU it trains in fp32 over gloo (bf16 is 10-30x slower on
CPUs without AMX) with torch's AdamW (DeepSpeedCPUAdam would compile a C++ op for minutes on first use).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from services.common.config import LearnerConfig
from services.common.records import TrainStats
from services.learner.batch import Batch, completion_logp, pack_micro_batches
from services.learner.ds_model import (
    GroupSpec,
    TrainSpec,
    build_engine,
    build_reference,
    full_state_dict,
    save_model_dir,
)
from services.learner.grpo import AdvantageMode, compute_advantages, policy_loss, truncated_is_weights

# policy_loss metrics that are means over tokens (the rest, loss and pg_loss, follow the batch's aggregation)
_TOKEN_MEANS = ("kl_mean", "ratio_mean", "clip_frac", "clip_frac_low", "clip_frac_high", "dual_clip_frac")


@dataclass
class _Fixed:
    """A micro-batch's terms computed on the first update and held fixed for the later ones; all (n, T)."""

    old: torch.Tensor               # log-probs the PPO ratio is taken against
    ref: torch.Tensor | None        # the frozen reference's log-probs (None without a KL term)
    tis: torch.Tensor | None        # truncated importance weights (None without tis_cap)


@dataclass(frozen=True)
class StepPlan:
    """What every rank of one step agrees on, so that the ranks' gradients add up to the whole batch's.

    DeepSpeed averages gradients over the ranks, so each rank scales its loss by `world_size`; each micro-batch's
    share is taken of the whole batch's `totals`. Every rank runs `micro_batches` micro-batches, padding with copies
    weighted 0 (ZeRO reduces gradients, and ZeRO-3 gathers parameters, on every one: the collectives must match);
    a rank that got no group this step runs copies of one only, with `weight` 0.
    """

    totals: tuple[float, float, float]  # the whole batch's loss tokens, sequences, sequences with a loss token
    micro_batches: int
    world_size: int = 1
    weight: float = 1.0


def batch_totals(batch: Batch) -> tuple[float, float, float]:
    tokens = batch.loss_mask.sum(dim=1)  # (N,)
    return float(tokens.sum()), float(tokens.numel()), float((tokens > 0).sum())


def train_stats(batch: Batch, group_size: int, advantage: AdvantageMode, sums: dict[str, float],
                micro_batches: int) -> TrainStats:
    """A step's TrainStats: the advantages and rewards of the whole batch, and the ranks' summed loss metrics."""
    adv = compute_advantages(batch.rewards, group_size, mode=advantage)  # (N,)
    finite = batch.rewards[torch.isfinite(batch.rewards)]
    return TrainStats(adv_abs_mean=float(adv.abs().mean()), adv_std=float(adv.std(correction=0)),
                      adv_min=float(adv.min()), adv_max=float(adv.max()),
                      reward_mean=float(finite.mean()) if finite.numel() else float("nan"),
                      micro_batches=float(micro_batches), **sums)


def train_spec(cfg: LearnerConfig, batch_size: int, gpu: bool) -> TrainSpec:
    """The DeepSpeed engine's spec from the learner's config (dtype auto: bf16 on GPU, fp32 on CPU)."""
    return TrainSpec(micro_batch_size=batch_size, lr=cfg.lr, weight_decay=0.0, grad_clip=cfg.grad_clip,
                     zero_stage=cfg.zero_stage, freeze_vision=cfg.freeze_vision,
                     dtype=cfg.dtype if cfg.dtype != "auto" else "bfloat16" if gpu else "float32",
                     gradient_checkpointing=cfg.gradient_checkpointing, offload_optimizer=cfg.offload_optimizer,
                     gpu=gpu)


class LearnerEngine:
    def __init__(self, model_dir: Path, cfg: LearnerConfig, batch_size: int, max_len: int | None = None,
                 group: GroupSpec | None = None):
        """`batch_size` is the nominal number of sequences per step (DeepSpeed's bookkeeping); `max_len` is the
        generation length bound, needed by loss.agg=seq_mean_token_sum_norm; `group` places this engine in a
        learner group of Ray actors (None: a one-rank group, or a launcher's)."""
        from transformers.utils import logging as hf_logging

        if cfg.loss.agg == "seq_mean_token_sum_norm" and max_len is None:
            raise ValueError("learner.loss.agg=seq_mean_token_sum_norm needs max_len (the rollout's max_new_tokens)")
        hf_logging.disable_progress_bar()  # the run's own progress view reports publishing
        self.cfg, self.model_dir, self.max_len = cfg, Path(model_dir), max_len
        self.spec = train_spec(cfg, batch_size, gpu=torch.cuda.is_available())
        self.engine, _ = build_engine(self.model_dir, self.spec, group)
        self.device = self.engine.device
        self.rank, self.world_size = self.engine.global_rank, self.engine.world_size
        self.ref = None  # the frozen reference for the KL term: not even loaded when kl_coef = 0
        if cfg.loss.kl_coef > 0:
            self.ref = build_reference(self.model_dir, self.spec, self.device)

    def _logp(self, model, mb: Batch) -> torch.Tensor:
        dev = self.device
        out = model(input_ids=mb.input_ids.to(dev), attention_mask=mb.attention_mask.to(dev),
                    mm_token_type_ids=mb.mm_token_type_ids.to(dev),
                    pixel_values_videos=mb.pixel_values_videos.to(dev), video_grid_thw=mb.video_grid_thw.to(dev))
        return completion_logp(out.logits, mb)  # (n, T)

    def _shares(self, batch: Batch, micro: list[list[int]], totals: tuple[float, float, float]) -> list[float]:
        """Each micro-batch's weight in the whole batch's loss, so that Σ share·loss(micro) = loss(batch)."""
        tokens = batch.loss_mask.sum(dim=1)  # (N,)
        which = {"token_mean": 0, "seq_mean_token_sum_norm": 1}.get(self.cfg.loss.agg, 2)
        if which == 0:
            counts = [float(tokens[rows].sum()) for rows in micro]
        elif which == 1:
            counts = [float(len(rows)) for rows in micro]
        else:
            counts = [float((tokens[rows] > 0).sum()) for rows in micro]
        total = max(totals[which], 1.0)
        return [c / total for c in counts]

    def micro_batches(self, batch: Batch) -> list[list[int]]:
        return pack_micro_batches(batch.seq_lens(), self.cfg.micro_batch_tokens)

    def train_step(self, batch: Batch, group_size: int) -> TrainStats:
        """`num_iterations` GRPO updates on a batch of whole groups, alone in its group; returns their metrics."""
        micro = len(self.micro_batches(batch))
        sums = self.train_shard(batch, group_size, StepPlan(batch_totals(batch), micro))
        return train_stats(batch, group_size, self.cfg.advantage, sums, micro)

    def train_shard(self, batch: Batch, group_size: int, plan: StepPlan) -> dict[str, float]:
        """`num_iterations` GRPO updates, this rank's share of them being on `batch` (whole groups); returns this
        rank's part of the loss metrics (the ranks' parts add up to the step's)."""
        cfg, dev = self.cfg, self.device
        self.engine.train()
        adv = compute_advantages(batch.rewards, group_size, mode=cfg.advantage)  # (N,)
        micro = self.micro_batches(batch)
        real = len(micro)
        shares = [s * plan.weight for s in self._shares(batch, micro, plan.totals)]
        micro += [micro[-1]] * (plan.micro_batches - real)   # padding: the same calls, weighted 0
        shares += [0.0] * (len(micro) - real)
        all_tokens = max(plan.totals[0], 1.0)
        fixed: list[_Fixed] = []  # per micro-batch, from the first update
        sums: dict[str, float] = defaultdict(float)
        for it in range(cfg.num_iterations):
            for j, rows in enumerate(micro):
                mb = batch.select(rows)
                mask, sampler = mb.loss_mask.to(dev), mb.old_logp.to(dev)  # (n, T)
                w = plan.weight if j < real else 0.0   # this micro-batch's weight in the step's metrics
                self.engine.set_gradient_accumulation_boundary(j == len(micro) - 1)
                logp = self._logp(self.engine, mb)  # (n, T)
                if it == 0:
                    fixed.append(self._fixed_terms(mb, logp.detach(), sampler))
                    diff = float(((logp.detach() - sampler).abs() * mask).sum()) / all_tokens
                    sums["logp_diff_vs_behaviour"] += w * diff  # the learner's vs the sampler's log-probs
                    if (tis := fixed[j].tis) is not None:
                        sums["tis_weight_mean"] += w * float((tis * mask).sum()) / all_tokens
                        sums["tis_capped_frac"] += w * float(((tis >= (cfg.tis_cap or 1.0)) * mask).sum()) / all_tokens
                f = fixed[j]
                loss, m = policy_loss(logp, f.old, adv[rows].to(dev), mask, cfg.loss, ref_logp=f.ref,
                                      max_len=self.max_len, is_weights=f.tis)
                self.engine.backward(loss * (shares[j] * plan.world_size), scale_wrt_gas=False)
                token_share = w * float(mask.sum()) / all_tokens
                for k, v in m.items():
                    mw = shares[j] if k in ("loss", "pg_loss") else token_share if k in _TOKEN_MEANS else w
                    sums[k] += mw * v / cfg.num_iterations
            self.engine.step()
        return dict(sums)

    def _fixed_terms(self, mb: Batch, logp: torch.Tensor, sampler: torch.Tensor) -> _Fixed:
        """Old log-probs, reference log-probs and TIS weights of a micro-batch, from the first update's pass."""
        cfg = self.cfg
        ref = None
        if self.ref is not None:
            with torch.no_grad():
                ref = self._logp(self.ref, mb)
        tis = None
        if cfg.tis_cap is not None:
            tis = truncated_is_weights(logp, sampler, cfg.tis_cap)  # (n, T)
        return _Fixed(old=logp if cfg.old_logp == "learner" else sampler, ref=ref, tis=tis)

    # -- checkpoints -----------------------------------------------------------------------------------
    def save_checkpoint(self, directory: Path, client_state: dict) -> None:
        """Model, optimizer and `client_state` into directory (every rank calls this: ZeRO shards its state)."""
        self.engine.save_checkpoint(str(directory), tag="ds", client_state=client_state, save_latest=False)

    def load_checkpoint(self, directory: Path) -> dict:
        """Restore model and optimizer from save_checkpoint's directory; returns its client_state."""
        path, client_state = self.engine.load_checkpoint(str(directory), tag="ds")
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {directory}")
        return client_state or {}

    # -- publishing ------------------------------------------------------------------------------------
    def full_state_dict(self, keep: bool = True) -> dict[str, torch.Tensor]:
        """Every weight, gathered across ranks (ZeRO-3 partitions them), as CPU tensors; every rank calls it, and
        with `keep` False this rank only takes part (returns {})."""
        if not keep and self.cfg.zero_stage != 3:
            return {}
        return full_state_dict(self.engine, self.cfg.zero_stage, on_every_rank=keep)

    def save_weights(self, out_dir: Path) -> None:
        """Write a complete model directory (config, tokenizer, processor, safetensors) into out_dir.

        Every rank calls it (ZeRO-3 gathers the weights collectively); only rank 0 writes, as save_pretrained does.
        """
        t0 = time.perf_counter()
        save_model_dir(self.engine, self.cfg.zero_stage, self.model_dir, out_dir)
        self.save_seconds = time.perf_counter() - t0

    def save_state(self, state: dict[str, torch.Tensor], out_dir: Path) -> None:
        """Write `state` (a full_state_dict of this rank 0, taken earlier) as a model directory; no collective."""
        save_model_dir(self.engine, self.cfg.zero_stage, self.model_dir, out_dir, state=state)
