"""The learner's config (`learner:`): the GRPO loss, the DeepSpeed group (ranks, ZeRO stage, precision) and the
driver loop's schedule (steps, publishing, checkpoints, evaluation)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from services.common.config_base import Strict as _Strict


class LossConfig(_Strict):
    """The GRPO loss, passed whole to services/learner/grpo.py policy_loss (knobs named as verl and TRL name them)."""

    clip_eps: float = Field(0.2, gt=0, lt=1, description="PPO clip range of the ratio (both bounds unless set)")
    clip_low: float | None = Field(None, ge=0, lt=1, description="ratio floor is 1 - clip_low; None = clip_eps")
    clip_high: float | None = Field(None, ge=0, le=10, description="ratio ceiling is 1 + clip_high; None = clip_eps")
    dual_clip: float | None = Field(None, gt=1, le=100, description="cap the loss at dual_clip·|A| when A < 0")
    agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"] = Field(
        "token_mean", description="per-token loss reduction (verl's loss_agg_mode; _norm divides by max_new_tokens)")
    kl_coef: float = Field(0.0, ge=0, le=10, description="KL penalty weight to a frozen reference (0 = none)")
    kl_type: Literal["k1", "k2", "k3"] = Field("k3", description="KL estimator (Schulman's k1/k2/k3)")

    @property
    def clip_bounds(self) -> tuple[float, float]:
        """(clip_low, clip_high), each defaulting to clip_eps."""
        return (self.clip_eps if self.clip_low is None else self.clip_low,
                self.clip_eps if self.clip_high is None else self.clip_high)


class LearnerConfig(_Strict):
    steps: int = Field(20, ge=1, description="learner steps (optimizer updates) of the run")
    groups_per_step: int = Field(2, ge=1, description="scored groups consumed per step")
    publish_every: int = Field(4, ge=1, description="publish weights every N steps")
    lr: float = Field(5e-4, gt=0, description="AdamW learning rate")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage")
    ranks: int = Field(1, ge=1, le=4096, description=(
        "learner processes (Ray actors, one GPU each on GPU) forming one data-parallel group under ZeRO; rank 0 "
        "also runs the driver loop"))
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="training precision; auto = float32 on CPU (bf16 is 10-30x slower there), bf16 on GPU")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward (less memory)")
    offload_optimizer: bool = Field(False, description="keep ZeRO's optimizer states in CPU memory (stage 2 or 3)")
    loss: LossConfig = Field(default_factory=LossConfig, description="the clipped surrogate, its KL term, aggregation")
    max_staleness: int = Field(4, ge=0, description="drop groups older than this many versions")
    advantage: Literal["group_std", "no_std", "loo"] = Field("group_std", description="advantage normalisation")
    old_logp: Literal["sampler", "learner"] = Field(
        "sampler", description="PPO ratio against the sampler's (vLLM) log-probs or the learner's own first pass")
    tis_cap: float | None = Field(None, ge=1, le=1000, description=(
        "truncated importance sampling: weight tokens by min(p_learner/p_sampler, cap); needs old_logp=learner"))
    filter_zero_variance: bool = Field(False, description="drop groups whose finite rewards are all equal (no signal)")
    zero_variance_tol: float = Field(0.0, ge=0, le=1e3, description="rewards within this of each other count as equal")
    dynamic_sampling: bool = Field(False, description=(
        "with filter_zero_variance: keep drawing until a step has groups_per_step informative groups"))
    micro_batch_tokens: int | None = Field(None, ge=1, description=(
        "pack micro-batches up to this many padded tokens and accumulate gradients; None = one micro-batch"))
    grad_clip: float = Field(1.0, ge=0, description="clip the global gradient norm to this (0 = off)")
    freeze_vision: bool = Field(False, description="train only the language model; published dirs stay complete")
    num_iterations: int = Field(1, ge=1, le=16, description="updates per batch (old log-probs from the first)")
    checkpoint_every: int = Field(0, ge=0, description=(
        "save a resumable checkpoint every N steps (0 = never; then a learner that dies ends the run)"))
    keep_versions: int = Field(4, ge=2, description="published weight versions kept on disk (older ones deleted)")
    eval_every: int = Field(5, ge=0, description="feed the held-out split every N steps (0 = never)")
    prefetch_prompts: int = Field(4, ge=1, description="prompts in flight ahead of the learner (bounds staleness)")

    @model_validator(mode="after")
    def _check(self) -> LearnerConfig:
        if self.tis_cap is not None and self.old_logp != "learner":
            raise ValueError("tis_cap: truncated importance sampling needs old_logp=learner")
        if self.dynamic_sampling and not self.filter_zero_variance:
            raise ValueError("dynamic_sampling: needs filter_zero_variance=true")
        if self.offload_optimizer and self.zero_stage < 2:
            raise ValueError("offload_optimizer: needs zero_stage 2 or 3")
        return self
