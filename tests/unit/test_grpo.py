"""compute_advantages and policy_loss against values worked out by hand (the arithmetic is in the comments)."""

import doctest
import math

import pytest
import torch

from services.common.config import LossConfig
from services.learner import grpo
from services.learner.grpo import compute_advantages, policy_loss

NAN = float("nan")


def pl(logp, old_logp, advantages, mask, ref_logp=None, max_len=None, is_weights=None, **loss):
    """policy_loss with the loss knobs given as keywords (they travel whole as a LossConfig)."""
    return policy_loss(logp, old_logp, advantages, mask, LossConfig(**loss), ref_logp=ref_logp, max_len=max_len,
                       is_weights=is_weights)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def assert_close(actual, expected):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=1e-9, atol=1e-12)


def test_docstring_examples_hold():
    assert doctest.testmod(grpo).failed == 0


# ---------------------------------------------------------------------------------- compute_advantages


def test_group_std():
    # group [1, 0, 0, 1]: mean 0.5, unbiased var = 4·0.25 / 3 = 1/3, std = 1/√3, (±0.5)·√3 = ±√3/2
    # group [0, 0, 0, 3]: mean 0.75, var = (3·0.5625 + 5.0625) / 3 = 2.25, std 1.5 → [−0.5, −0.5, −0.5, 1.5]
    adv = compute_advantages(t(1, 0, 0, 1, 0, 0, 0, 3), group_size=4, eps=0.0)
    h = math.sqrt(3) / 2
    assert_close(adv, [h, -h, -h, h, -0.5, -0.5, -0.5, 1.5])


def test_group_std_eps_is_added_to_the_std():
    # [0, 2]: mean 1, unbiased std √2; (2 − 1) / (√2 + 0.5)
    adv = compute_advantages(t(0, 2), group_size=2, eps=0.5)
    assert_close(adv, [-1 / (math.sqrt(2) + 0.5), 1 / (math.sqrt(2) + 0.5)])


def test_no_std():
    # [1, 2, 6]: mean 3 → [−2, −1, 3]; [5, 5, 8]: mean 6 → [−1, −1, 2]
    assert_close(compute_advantages(t(1, 2, 6, 5, 5, 8), group_size=3, mode="no_std"), [-2, -1, 3, -1, -1, 2])


def test_loo():
    # r_i − mean of the other two: 1 − (2+6)/2 = −3; 2 − (1+6)/2 = −1.5; 6 − (1+2)/2 = 4.5
    assert_close(compute_advantages(t(1, 2, 6), group_size=3, mode="loo"), [-3, -1.5, 4.5])


def test_loo_with_two_samples_is_the_difference():
    # K = 2: the other one is the baseline: 1 − 3 = −2, 3 − 1 = 2; 0.5 − 0.5 = 0
    assert_close(compute_advantages(t(1, 3, 0.5, 0.5), group_size=2, mode="loo"), [-2, 2, 0, 0])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # finite [1, 3, 5]: mean 3, unbiased var (4 + 0 + 4) / 2 = 4, std 2 → [−1, 0, 1]
        ("group_std", [-1, 0, 0, 1]),
        ("no_std", [-2, 0, 0, 2]),
        # 1 − (3+5)/2 = −3; 3 − (1+5)/2 = 0; 5 − (1+3)/2 = 3
        ("loo", [-3, 0, 0, 3]),
    ],
)
def test_nan_rewards_are_left_out_and_get_zero(mode, expected):
    adv = compute_advantages(t(1, 3, NAN, 5), group_size=4, mode=mode, eps=0.0)
    assert_close(adv, [expected[0], expected[1], 0, expected[3]])


@pytest.mark.parametrize("mode", ["group_std", "no_std", "loo"])
def test_groups_with_fewer_than_two_scored_rewards_get_zero(mode):
    # [nan, 4]: one reward, no baseline; [nan, nan]: none; [2, 2]: constant → all zeros, no nan leaks
    adv = compute_advantages(t(NAN, 4, NAN, NAN, 2, 2), group_size=2, mode=mode)
    assert_close(adv, [0, 0, 0, 0, 0, 0])


@pytest.mark.parametrize("mode", ["group_std", "no_std", "loo"])
def test_singleton_groups_get_zero(mode):
    assert_close(compute_advantages(t(3, -1, 7), group_size=1, mode=mode), [0, 0, 0])


@pytest.mark.parametrize("eps", [1e-6, 0.0])
@pytest.mark.parametrize("mode", ["group_std", "no_std", "loo"])
def test_constant_group_gets_exactly_zero(mode, eps):
    # 0.7·3 / 3 != 0.7 in floating point; a naive (r − mean) / (std + eps) gives rounding noise / tiny std
    adv = compute_advantages(t(0.7, 0.7, 0.7, 0.1, 0.1, 0.1), group_size=3, mode=mode, eps=eps)
    assert adv.tolist() == [0.0] * 6
    adv = compute_advantages(torch.tensor([0.1, 0.1, NAN, 0.3]), group_size=2, mode=mode, eps=eps)
    assert adv.tolist() == [0.0] * 4


def test_shifting_all_rewards_changes_nothing():
    rewards = t(0.1, 0.9, 0.4, 0.3, 0.3, NAN)
    for mode in ("group_std", "no_std", "loo"):
        assert_close(compute_advantages(rewards + 1000.0, 3, mode), compute_advantages(rewards, 3, mode))


def test_advantages_keep_dtype_and_shape():
    rewards = torch.tensor([0.0, 1.0, 1.0, 1.0], dtype=torch.float32)
    adv = compute_advantages(rewards, group_size=2)
    assert adv.dtype == torch.float32 and adv.shape == (4,)
    # [0, 1]: mean 0.5, std 1/√2 → ±0.5·√2 = ±0.7071 (eps 1e-6 is below float32's resolution here)
    torch.testing.assert_close(adv, torch.tensor([-0.70710678, 0.70710678, 0.0, 0.0]), rtol=1e-5, atol=1e-6)
    assert compute_advantages(torch.zeros(0), group_size=4).shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rewards": torch.zeros(2, 2), "group_size": 2}, "1-D float"),
        ({"rewards": torch.zeros(4, dtype=torch.long), "group_size": 2}, "1-D float"),
        ({"rewards": torch.zeros(5), "group_size": 2}, "do not split"),
        ({"rewards": torch.zeros(4), "group_size": 0}, "positive int"),
        ({"rewards": torch.zeros(4), "group_size": 2.0}, "positive int"),
        ({"rewards": torch.zeros(4), "group_size": 2, "mode": "std"}, "unknown mode 'std'; expected one of"),
        ({"rewards": torch.zeros(4), "group_size": 2, "eps": -1.0}, "eps"),
        ({"rewards": torch.tensor([1.0, math.inf]), "group_size": 2}, "inf"),
    ],
)
def test_advantage_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        compute_advantages(**kwargs)


# ---------------------------------------------------------------------------------------- policy_loss


def ratios(*values):
    """logp whose ratio against old_logp = 0 is each value, as a (1, T) leaf that takes gradients."""
    return torch.log(t(values)).requires_grad_()


def ones(b, n):
    return torch.ones(b, n, dtype=torch.float64)


def test_clipped_surrogate_positive_advantage():
    # A = 1, ratios 1.5 and 0.5, clip 0.2: −min(1.5, 1.2) = −1.2 (clipped), −min(0.5, 0.8) = −0.5
    # token_mean = −1.7 / 2 = −0.85
    logp = ratios(1.5, 0.5)
    loss, m = pl(logp, torch.zeros(1, 2), t(1), ones(1, 2))
    assert_close(loss, -0.85)
    assert m["clip_frac"] == 0.5 and m["clip_frac_high"] == 0.5 and m["clip_frac_low"] == 0.0
    assert m["ratio_mean"] == pytest.approx(1.0) and m["kl_mean"] == 0.0 and m["tokens"] == 2.0
    # d/dlogp: the clipped token has none; the other −ratio·A / 2 tokens = −0.25
    loss.backward()
    assert_close(logp.grad, [[0.0, -0.25]])


def test_clipped_surrogate_negative_advantage():
    # A = −1: −min(−1.5, −1.2) = 1.5 (not clipped); −min(−0.5, −0.8) = 0.8 (clipped below 1 − 0.2)
    # token_mean = 2.3 / 2 = 1.15; gradient 1.5 / 2 = 0.75 on the first token, 0 on the second
    logp = ratios(1.5, 0.5)
    loss, m = pl(logp, torch.zeros(1, 2), t(-1), ones(1, 2))
    assert_close(loss, 1.15)
    assert m["clip_frac"] == 0.5 and m["clip_frac_low"] == 0.5 and m["clip_frac_high"] == 0.0
    loss.backward()
    assert_close(logp.grad, [[0.75, 0.0]])


def test_asymmetric_clip():
    # clip_high 0.28 (DAPO): A = 2, ratio 1.5 → −2·1.28 = −2.56; clip_low 0.1: A = −2, ratio 0.5 → 2·0.9 = 1.8
    # token_mean over advantages given per token = (−2.56 + 1.8) / 2 = −0.38
    loss, _ = pl(ratios(1.5, 0.5), torch.zeros(1, 2), t([2, -2]), ones(1, 2), clip_low=0.1, clip_high=0.28)
    assert_close(loss, -0.38)


def test_dual_clip_caps_negative_advantage_losses():
    # A = −1, c = 3: ratio 4 → standard 4, capped at 3·1 = 3 (no gradient); ratio 2 → 2 < 3, unchanged
    # A = +1 is never dual-clipped: ratio 4 → −1.2. token_mean = (3 + 2 − 1.2) / 3 = 3.8 / 3
    logp = ratios(4, 2, 4)
    adv = t([-1, -1, 1])
    loss, m = pl(logp, torch.zeros(1, 3), adv, ones(1, 3), dual_clip=3.0)
    assert_close(loss, 3.8 / 3)
    assert m["dual_clip_frac"] == pytest.approx(1 / 3)
    loss.backward()
    # d/dlogp of ratio·1 / 3 at ratio 2 = 2/3; capped and clipped tokens have none
    assert_close(logp.grad, [[0.0, 2 / 3, 0.0]])
    # without dual clip the first token costs 4: (4 + 2 − 1.2) / 3 = 1.6
    assert_close(pl(ratios(4, 2, 4), torch.zeros(1, 3), adv, ones(1, 3))[0], 1.6)


@pytest.mark.parametrize(
    ("kl_type", "per_token"),
    [
        # d = logp − ref = [1, −1]; k1 = d
        ("k1", [1.0, -1.0]),
        # k2 = d²/2
        ("k2", [0.5, 0.5]),
        # k3 = exp(−d) + d − 1: e⁻¹ + 1 − 1 = 0.3679; e¹ − 1 − 1 = 0.7183
        ("k3", [math.exp(-1), math.exp(1) - 2]),
    ],
)
def test_kl_penalty(kl_type, per_token):
    # ratio 1 and A = 0, so the surrogate is 0 and the loss is kl_coef · mean KL
    logp = t([-1.0, -2.0])
    ref = t([-2.0, -1.0])
    mean_kl = sum(per_token) / 2
    loss, m = pl(logp, logp, t(0), ones(1, 2), ref_logp=ref, kl_type=kl_type, kl_coef=0.1)
    assert_close(loss, 0.1 * mean_kl)
    assert m["kl_mean"] == pytest.approx(mean_kl) and m["pg_loss"] == 0.0
    # the KL is reported even when it is not in the loss
    loss, m = pl(logp, logp, t(0), ones(1, 2), ref_logp=ref, kl_type=kl_type)
    assert loss.item() == 0.0 and m["kl_mean"] == pytest.approx(mean_kl)


def test_kl_gradient():
    # k3 = exp(ref − logp) − (ref − logp) − 1, d/dlogp = 1 − exp(ref − logp); at ref − logp = ln 2: 1 − 2 = −1
    # times kl_coef 0.5, over one token
    logp = t([0.0]).requires_grad_()
    loss, _ = pl(logp, logp.detach(), t(0), ones(1, 1), ref_logp=t([math.log(2)]), kl_coef=0.5)
    loss.backward()
    assert_close(logp.grad, [[-0.5]])


# ratio 1 everywhere, so the per-token loss is −A: [[−1, −2, pad], [−4, pad, pad]]
AGG_ADV = t([1, 2, 99], [4, 99, 99])
AGG_MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


@pytest.mark.parametrize(
    ("agg", "expected"),
    [
        ("token_mean", -7 / 3),  # (−1 − 2 − 4) / 3 tokens
        ("seq_mean_token_mean", -2.75),  # ((−1 − 2)/2 + (−4)/1) / 2 = (−1.5 − 4) / 2
        ("seq_mean_token_sum", -3.5),  # ((−1 − 2) + (−4)) / 2
        ("seq_mean_token_sum_norm", -0.875),  # (−1 − 2 − 4) / (2 sequences · max_len 4)
    ],
)
def test_aggregations(agg, expected):
    logp = torch.zeros(2, 3, dtype=torch.float64)
    loss, m = pl(logp, logp, AGG_ADV, AGG_MASK, agg=agg, max_len=4)
    assert_close(loss, expected)
    assert m["tokens"] == 3.0


@pytest.mark.parametrize("agg", ["seq_mean_token_mean", "seq_mean_token_sum"])
def test_sequences_without_tokens_do_not_dilute_seq_means(agg):
    # the second row is all padding: the mean is over the first row alone
    logp = torch.zeros(2, 2, dtype=torch.float64)
    loss, _ = pl(logp, logp, t(1, 5), torch.tensor([[1, 1], [0, 0]]), agg=agg)
    assert_close(loss, -1.0 if agg == "seq_mean_token_mean" else -2.0)


def test_all_padding_gives_zero_loss_with_a_graph():
    logp = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    loss, m = pl(logp, logp.detach(), t(1, 1), torch.zeros(2, 2, dtype=torch.bool))
    assert loss.item() == 0.0 and m["tokens"] == 0.0 and m["clip_frac"] == 0.0
    loss.backward()
    assert_close(logp.grad, torch.zeros(2, 2))


def test_garbage_under_the_mask_never_reaches_loss_or_gradient():
    # padding holding −inf / nan is common; the masked token [0, 1] must not matter
    logp = t([0.0, -math.inf]).requires_grad_()
    old = t([0.0, NAN])
    ref = t([0.0, math.inf])
    adv = t([1.0, NAN])
    mask = torch.tensor([[True, False]])
    loss, m = pl(logp, old, adv, mask, ref_logp=ref, kl_coef=0.1, dual_clip=3.0)
    assert_close(loss, -1.0)  # −ratio·A on the one real token
    assert all(math.isfinite(v) for v in m.values())
    loss.backward()
    assert_close(logp.grad, [[-1.0, 0.0]])


def test_sequence_and_token_advantages_agree():
    logp = t([math.log(1.1), math.log(0.7)], [math.log(1.3), 0.0])
    adv = t(0.5, -2.0)
    mask = torch.ones(2, 2)
    a, _ = pl(logp, torch.zeros(2, 2), adv, mask)
    b, _ = pl(logp, torch.zeros(2, 2), adv[:, None].expand(2, 2), mask)
    assert_close(a, b.item())


def test_gradients_flow_only_through_logp():
    logp = t([-1.0, -0.5]).requires_grad_()
    old = t([-1.2, -0.4]).requires_grad_()
    ref = t([-0.8, -0.9]).requires_grad_()
    adv = t(0.7).requires_grad_()
    mask = torch.ones(1, 2, requires_grad=True)
    loss, m = pl(logp, old, adv, mask, ref_logp=ref, kl_coef=0.1, dual_clip=2.0)
    loss.backward()
    assert logp.grad is not None and bool(logp.grad.abs().sum() > 0)
    assert old.grad is None and ref.grad is None and adv.grad is None and mask.grad is None
    assert all(type(v) is float for v in m.values())
    assert {"clip_frac", "ratio_mean", "kl_mean"} <= m.keys()


def test_float_mask_and_float32_inputs():
    logp = torch.log(torch.tensor([[1.5, 0.5, 9.0]])).requires_grad_()
    loss, _ = pl(logp, torch.zeros(1, 3), torch.ones(1), torch.tensor([[1.0, 1.0, 0.0]]))
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, torch.tensor(-0.85))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"agg": "seq_mean"}, "agg\n  Input should be 'token_mean'"),       # LossConfig bounds every knob
        ({"kl_type": "k4", "ref_logp": torch.zeros(2, 3)}, "kl_type\n  Input should be"),
        ({"old_logp": torch.zeros(2, 4)}, "old_logp must have logp's shape"),
        ({"mask": torch.ones(3, 2)}, "mask must have logp's shape"),
        ({"ref_logp": torch.zeros(2)}, "ref_logp must have logp's shape"),
        ({"advantages": torch.zeros(3)}, "advantages must be"),
        ({"advantages": torch.zeros(2, 1)}, "advantages must be"),
        ({"logp": torch.zeros(6)}, "logp must be a"),
        ({"agg": "seq_mean_token_sum_norm"}, "needs max_len"),
        ({"agg": "seq_mean_token_sum_norm", "max_len": 0}, "max_len must be"),
        ({"kl_coef": 0.1}, "needs ref_logp"),
        ({"kl_coef": -0.1, "ref_logp": torch.zeros(2, 3)}, "kl_coef"),
        ({"dual_clip": 1.0}, "dual_clip\n  Input should be greater than 1"),
        ({"clip_low": 1.0}, "clip_low"),
        ({"clip_high": -0.1}, "clip_high"),
    ],
)
def test_loss_arguments_are_checked(kwargs, message):
    args = {"logp": torch.zeros(2, 3), "old_logp": torch.zeros(2, 3), "advantages": torch.zeros(2)}
    args["mask"] = torch.ones(2, 3)
    with pytest.raises(ValueError, match=message):
        pl(**{**args, **kwargs})


# ------------------------------------------------------------------------------- mixed groups, all options


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # [1, nan, 3]: mean 2, unbiased std √2 → ∓1/√2; [2, 2, 2] and [nan, nan, 5]: 0;
        # [0, 1, 5]: mean 2, var (4 + 1 + 9) / 2 = 7 → [−2, −1, 3] / √7
        ("group_std", [-1 / math.sqrt(2), 0, 1 / math.sqrt(2), 0, 0, 0, 0, 0, 0,
                       -2 / math.sqrt(7), -1 / math.sqrt(7), 3 / math.sqrt(7)]),
        ("no_std", [-1, 0, 1, 0, 0, 0, 0, 0, 0, -2, -1, 3]),
        # 1 − 3 = −2, 3 − 1 = 2; 0 − (1+5)/2 = −3, 1 − (0+5)/2 = −1.5, 5 − (0+1)/2 = 4.5
        ("loo", [-2, 0, 2, 0, 0, 0, 0, 0, 0, -3, -1.5, 4.5]),
    ],
)
def test_each_group_is_normalised_on_its_own(mode, expected):
    rewards = t(1, NAN, 3, 2, 2, 2, NAN, NAN, 5, 0, 1, 5)
    assert_close(compute_advantages(rewards, group_size=3, mode=mode, eps=0.0), expected)


def test_all_loss_options_together():
    # row 0: A = +1, ratios [1.5, 1.0]; row 1: A = −1, ratios [3.0, 0.5]; clip 0.1 / 0.3, dual clip 2
    #   row 0: −min(1.5, 1.3) = −1.3 (clipped high); −min(1, 1) = −1
    #   row 1: −min(−3, −1.3) = 3, over the dual cap 2·1 → 2; −min(−0.5, −0.9) = 0.9 (clipped low)
    # k2 KL, with logp − ref = [[0, 0], [1, −2]]: [[0, 0], [0.5, 2]], weighted 0.5 → [[0, 0], [0.25, 1]]
    # per token [[−1.3, −1], [2.25, 1.9]]; seq_mean_token_mean = (−1.15 + 2.075) / 2 = 0.4625
    logp = torch.log(t([1.5, 1.0], [3.0, 0.5])).requires_grad_()
    ref = logp.detach() - t([0, 0], [1, -2])
    loss, m = pl(logp, torch.zeros(2, 2), t(1, -1), ones(2, 2), clip_low=0.1, clip_high=0.3, dual_clip=2.0,
                          agg="seq_mean_token_mean", ref_logp=ref, kl_type="k2", kl_coef=0.5)
    assert_close(loss, 0.4625)
    assert m["pg_loss"] == pytest.approx((-1.15 + 1.45) / 2)  # the surrogate alone: row means −1.15 and 2.9 / 2
    assert m["kl_mean"] == pytest.approx(2.5 / 4) and m["ratio_mean"] == pytest.approx(6 / 4)
    assert (m["clip_frac"], m["clip_frac_low"], m["clip_frac_high"]) == (0.5, 0.25, 0.25)
    assert m["dual_clip_frac"] == 0.25 and m["tokens"] == 4.0
    loss.backward()
    # each token weighs 1/2 in its row, each row 1/2: 1/4. Row 0: clipped → 0 (KL 0 there); −ratio·A = −1 → −1/4.
    # Row 1: capped and clipped → no surrogate gradient; the KL's d/dlogp = 0.5·(logp − ref) = 0.5 and −1 → ×1/4
    assert_close(logp.grad, [[0.0, -0.25], [0.125, -0.25]])


def test_seq_mean_token_sum_norm_with_clipping():
    # A = 1, ratios [1.5, 0.5] → [−1.2, −0.5]; A = −1, ratio [2.0, pad] → 2; Σ = 0.3 over 2 rows · max_len 3
    logp = torch.log(t([1.5, 0.5], [2.0, 1.0]))
    loss, _ = pl(logp, torch.zeros(2, 2), t(1, -1), torch.tensor([[1, 1], [1, 0]]),
                          agg="seq_mean_token_sum_norm", max_len=3)
    assert_close(loss, 0.3 / 6)


# ------------------------------------------------------------------------- truncated importance sampling


def test_truncated_is_weights():
    # exp(learner − sampler): exp(0 − ln 0.8) = 1.25; exp(0 − ln 0.1) = 10 → capped at 3; exp(ln 0.5 − 0) = 0.5
    w = grpo.truncated_is_weights(torch.log(t([1.0, 1.0, 0.5])), torch.log(t([0.8, 0.1, 1.0])), cap=3.0)
    assert_close(w, [[1.25, 3.0, 0.5]])
    with pytest.raises(ValueError, match="cap"):
        grpo.truncated_is_weights(torch.zeros(1, 1), torch.zeros(1, 1), cap=0.5)


def test_is_weights_scale_the_surrogate_but_not_the_kl():
    # A = 1, ratios [1.5, 0.5], weights [0.5, 2]: −1.2·0.5 = −0.6 and −0.5·2 = −1 → token_mean −0.8
    logp = ratios(1.5, 0.5)
    w = t([0.5, 2.0])
    loss, m = pl(logp, torch.zeros(1, 2), t(1), ones(1, 2), is_weights=w)
    assert_close(loss, -0.8)
    loss.backward()
    assert_close(logp.grad, [[0.0, -0.5]])  # the clipped token has none; −ratio·A·w / 2 = −0.5
    # k1 KL of 1 per token, coefficient 0.1, added unweighted: −0.8 + 0.1
    loss, _ = pl(ratios(1.5, 0.5), torch.zeros(1, 2), t(1), ones(1, 2), is_weights=w,
                          ref_logp=torch.log(t([1.5, 0.5])) - 1, kl_type="k1", kl_coef=0.1)
    assert_close(loss, -0.7)
    with pytest.raises(ValueError, match="is_weights must have"):
        pl(ratios(1.5, 0.5), torch.zeros(1, 2), t(1), ones(1, 2), is_weights=t(1.0))
