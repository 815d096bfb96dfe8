"""GRPO math: group-relative advantages and the clipped policy-gradient loss.

Pure tensor functions with no state and no distributed calls, checked on CPU against hand-derived values.
The knobs mean what they mean in verl, TRL and OpenRLHF: ``clip_low``/``clip_high`` are verl's
``clip_ratio_low``/``clip_ratio_high`` (DAPO's clip-higher), ``dual_clip`` is verl's ``clip_ratio_c``,
``k1``/``k2``/``k3`` are Schulman's KL estimators (verl's ``kl``/``mse``/``low_var_kl`` without its clamp),
and the four ``agg`` modes are verl's ``loss_agg_mode`` values with dashes as underscores.

Invariants:

- Gradients flow only through ``logp``: ``old_logp``, ``ref_logp``, ``advantages`` and ``mask`` are detached.
- Masked-out positions never reach the loss or its gradient, even when they hold -inf or nan (padding
  often does): they are replaced by zeros before any arithmetic.
- A NaN reward means "unscorable": it is left out of its group's statistics and gets advantage 0.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

from services.common.config import LossConfig

AdvantageMode = Literal["group_std", "no_std", "loo"]
Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"]
KLType = Literal["k1", "k2", "k3"]

DEFAULT_LOSS = LossConfig()

# The keys of policy_loss's metrics, in the order it computes them.
_METRICS = (
    "loss",
    "pg_loss",
    "kl_mean",
    "ratio_mean",
    "clip_frac",
    "clip_frac_low",
    "clip_frac_high",
    "dual_clip_frac",
    "tokens",
)


def compute_advantages(
    rewards: Tensor, group_size: int, mode: AdvantageMode = "group_std", eps: float = 1e-6
) -> Tensor:
    """Group-relative advantages for B groups of K = ``group_size`` contiguous rewards.

    ``rewards`` is (B·K,); the result has the same shape and dtype. With n the number of non-NaN rewards
    in a group, mean and std taken over those n:

    - ``group_std``: (r − mean) / (unbiased std + eps)  (GRPO; TRL's ``scale_rewards="group"``)
    - ``no_std``:    r − mean                          (Dr. GRPO)
    - ``loo``:       r − mean of the other n − 1        (RLOO)

    NaN rewards get advantage 0. So does every member of a group with n < 2: one reward has no baseline
    (its std and its leave-one-out mean are undefined), so it carries no signal. A constant group gets 0
    in every mode. ±inf rewards are a bug upstream and raise ``ValueError``.

    >>> compute_advantages(torch.tensor([1.0, 3.0, 0.0, float("nan")]), group_size=2, mode="no_std")
    tensor([-1.,  1.,  0.,  0.])
    """
    _check_advantage_args(rewards, group_size, mode, eps)
    r = rewards.detach().to(torch.float64).view(-1, group_size)  # (B, K)
    scored = ~torch.isnan(r)  # (B, K)
    n = scored.sum(dim=1, keepdim=True)  # (B, 1) scorable rewards per group
    # Advantages are shift-invariant; measuring from the group's lowest reward makes a constant group
    # exactly 0 instead of rounding noise that a tiny std would then blow up.
    low = torch.where(scored, r, math.inf).amin(dim=1, keepdim=True)  # (B, 1)
    r = torch.where(scored, r - low, 0.0)  # (B, K)
    total = r.sum(dim=1, keepdim=True)  # (B, 1)
    mean = total / n.clamp(min=1)  # (B, 1)
    if mode == "group_std":
        var = torch.where(scored, r - mean, 0.0).square().sum(dim=1, keepdim=True) / (n - 1).clamp(min=1)  # (B, 1)
        std = var.sqrt()  # (B, 1)
        adv = torch.where(std > 0, (r - mean) / (std + eps), 0.0)  # (B, K)
    elif mode == "no_std":
        adv = r - mean  # (B, K)
    else:
        adv = r - (total - r) / (n - 1).clamp(min=1)  # (B, K): minus the mean of the other n − 1
    adv = torch.where(scored & (n >= 2), adv, 0.0)  # (B, K)
    return adv.to(rewards.dtype).view_as(rewards)


def policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, loss: LossConfig = DEFAULT_LOSS,
                ref_logp: Tensor | None = None, max_len: int | None = None,
                is_weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """The clipped surrogate loss (plus an optional KL penalty), aggregated over masked tokens; the knobs come
    whole in ``loss`` (learner.loss: clip_low, clip_high, dual_clip, agg, kl_type, kl_coef, already bounded).

    ``logp``, ``old_logp``, ``ref_logp`` and ``mask`` are (B, T); ``advantages`` is (B,) or (B, T);
    ``mask`` is 0/1 (bool, int or float). Per token, with ratio = exp(logp − old_logp):

        loss = −min(ratio·A, clip(ratio, 1 − clip_low, 1 + clip_high)·A)
        loss = min(loss, −dual_clip·A)  where A < 0, if ``dual_clip`` is set (it must exceed 1)
        loss *= is_weights  (per-token importance weights, e.g. ``truncated_is_weights``; the KL is not weighted)
        loss += kl_coef·KL(logp, ref_logp)

    ``agg``: ``token_mean`` = Σ masked / number of masked tokens; ``seq_mean_token_mean`` = mean over
    sequences of each one's token mean; ``seq_mean_token_sum`` = mean over sequences of each one's token
    sum; ``seq_mean_token_sum_norm`` = Σ masked / (B · ``max_len``) (Dr. GRPO). The two ``seq_mean``
    modes average over sequences with at least one masked token, so all-padding rows do not dilute them.

    Returns ``(loss, metrics)``: a scalar tensor and python floats ``loss``, ``pg_loss`` (the surrogate
    alone, same agg), ``kl_mean`` (0 without ``ref_logp``), ``ratio_mean``, ``clip_frac`` (tokens whose
    clipped term is the active one), ``clip_frac_low`` (of those, A < 0), ``clip_frac_high`` (A > 0),
    ``dual_clip_frac`` and ``tokens``; the fractions and means are over masked tokens.

    >>> logp = torch.log(torch.tensor([[1.5, 0.5]]))  # ratios 1.5 and 0.5 against old_logp = 0
    >>> value, m = policy_loss(logp, torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2))
    >>> round(value.item(), 4), m["clip_frac"]  # (−1.2 − 0.5) / 2; the first token is clipped at 1.2
    (-0.85, 0.5)
    """
    _check_loss_args(logp, old_logp, advantages, mask, ref_logp, is_weights, loss, max_len)
    (clip_low, clip_high), dual_clip, agg, kl_coef = loss.clip_bounds, loss.dual_clip, loss.agg, loss.kl_coef
    m = mask.detach().bool()  # (B, T)
    logp = torch.where(m, logp, 0.0)  # (B, T)
    old = torch.where(m, old_logp.detach(), 0.0)  # (B, T)
    adv = advantages.detach().to(logp.dtype)
    adv = torch.where(m, adv.unsqueeze(-1) if adv.dim() == 1 else adv, 0.0)  # (B, T)

    ratio = torch.exp(logp - old)  # (B, T); 1 where masked out
    surrogate = -adv * ratio  # (B, T)
    clipped_surrogate = -adv * ratio.clamp(1 - clip_low, 1 + clip_high)  # (B, T)
    pg = torch.maximum(surrogate, clipped_surrogate)  # (B, T) = −min(ratio·A, clip(ratio)·A)
    clipped = clipped_surrogate > surrogate  # (B, T)
    dual_capped = torch.zeros_like(m)  # (B, T)
    if dual_clip is not None:
        cap = -adv * dual_clip  # (B, T); positive where A < 0
        dual_capped = (adv < 0) & (pg > cap)
        pg = torch.where(dual_capped, cap, pg)
    if is_weights is not None:
        pg = pg * torch.where(m, is_weights.detach().to(pg.dtype), 0.0)

    kl = torch.zeros_like(logp)  # (B, T)
    if ref_logp is not None:
        kl = _kl(logp, torch.where(m, ref_logp.detach(), 0.0), loss.kl_type)
    per_token = pg + kl_coef * kl if kl_coef else pg  # (B, T)
    value = _aggregate(per_token, m, agg, max_len)

    token_stats = (kl, ratio, clipped, clipped & (adv < 0), clipped & (adv > 0), dual_capped)
    return value, _loss_metrics(value, _aggregate(pg.detach(), m, agg, max_len), token_stats, m)


@torch.no_grad()
def _loss_metrics(loss: Tensor, pg_loss: Tensor, token_stats: tuple[Tensor, ...], m: Tensor) -> dict[str, float]:
    """policy_loss's metrics as python floats, named by _METRICS, read with one device sync."""
    stats = [loss.detach(), pg_loss, *(_masked_mean(x.detach(), m) for x in token_stats), m.sum()]
    values = torch.stack([x.to(torch.float64) for x in stats]).tolist()
    return dict(zip(_METRICS, values, strict=True))


def truncated_is_weights(learner_logp: Tensor, sampler_logp: Tensor, cap: float) -> Tensor:
    """Per-token truncated importance weights min(π_learner / π_sampler, cap), detached; (B, T) in, (B, T) out.

    They correct for tokens sampled by a different (older, or numerically different) policy than the one
    the learner's old log-probs come from, as in verl's TIS: the weight is bounded so that a token the
    sampler found unlikely cannot blow up the gradient.

    >>> truncated_is_weights(torch.tensor([[0.0, 0.0]]), torch.log(torch.tensor([[0.8, 0.1]])), cap=2.0)
    tensor([[1.2500, 2.0000]])
    """
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    return torch.exp(learner_logp.detach() - sampler_logp.detach()).clamp(max=cap)


def _kl(logp: Tensor, ref_logp: Tensor, kl_type: KLType) -> Tensor:
    """Per-token estimate of KL(π‖π_ref) from samples of π; (B, T) in, (B, T) out."""
    log_ratio = logp - ref_logp  # (B, T)
    if kl_type == "k1":
        return log_ratio
    if kl_type == "k2":
        return 0.5 * log_ratio.square()
    return torch.exp(-log_ratio) + log_ratio - 1  # k3 = exp(ref − logp) − (ref − logp) − 1, always ≥ 0


def _aggregate(per_token: Tensor, mask: Tensor, agg: Aggregation, max_len: int | None) -> Tensor:
    """Reduce (B, T) per-token losses over the masked tokens to a scalar, as ``agg`` says."""
    x = torch.where(mask, per_token, 0.0)  # (B, T)
    tokens = mask.sum(dim=1)  # (B,)
    if agg == "token_mean":
        return x.sum() / tokens.sum().clamp(min=1)
    if agg == "seq_mean_token_sum_norm":
        return x.sum() / (x.shape[0] * (max_len or 0))  # policy_loss has checked max_len is set
    per_seq = x.sum(dim=1)  # (B,); 0 for rows with no masked token
    if agg == "seq_mean_token_mean":
        per_seq = per_seq / tokens.clamp(min=1)
    return per_seq.sum() / (tokens > 0).sum().clamp(min=1)


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, x.to(torch.float64), 0.0).sum() / mask.sum().clamp(min=1)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")


def _check_advantage_args(rewards: Tensor, group_size: int, mode: str, eps: float) -> None:
    _check_choice("mode", mode, get_args(AdvantageMode))
    if rewards.dim() != 1 or not rewards.is_floating_point():
        raise ValueError(f"rewards must be a 1-D float tensor, got {rewards.dtype} of shape {tuple(rewards.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if torch.isinf(rewards).any():
        raise ValueError("rewards contain ±inf; use NaN for an unscorable sample")


def _check_loss_args(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, ref_logp: Tensor | None,
                     is_weights: Tensor | None, loss: LossConfig, max_len: int | None) -> None:
    """Shapes, and what `loss` needs of the other arguments (LossConfig bounded each knob already)."""
    if logp.dim() != 2 or not logp.is_floating_point():
        raise ValueError(f"logp must be a (B, T) float tensor, got {logp.dtype} of shape {tuple(logp.shape)}")
    shape = tuple(logp.shape)
    for name, t in (("old_logp", old_logp), ("mask", mask), ("ref_logp", ref_logp), ("is_weights", is_weights)):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must have logp's shape {shape}, got {tuple(t.shape)}")
    if tuple(advantages.shape) not in (shape[:1], shape):
        raise ValueError(f"advantages must be (B,) = {shape[:1]} or (B, T) = {shape}, got {tuple(advantages.shape)}")
    if loss.kl_coef > 0 and ref_logp is None:
        raise ValueError("kl_coef > 0 needs ref_logp")
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if loss.agg == "seq_mean_token_sum_norm" and max_len is None:
        raise ValueError("agg='seq_mean_token_sum_norm' needs max_len (the generation length limit)")
