"""The DeepSpeed learner engine in one process on the tiny model: gradient accumulation over token-budget
micro-batches gives the one-micro-batch update, the frozen vision tower stays put while the published
directory stays complete, and the reference model exists only with a KL term."""

import pytest
import torch
from learner_fakes import fake_batch, synth_rows, tiny_model

from services.common.config import LearnerConfig
from services.learner.ds_model import vision_parameters
from services.learner.engine import LearnerEngine

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("engine-assets")
    model = tiny_model(d / "model")
    return model, fake_batch(model, synth_rows(d / "synth", 4), 2, seed=0)


def _train(model, batch, steps=1, **cfg):
    loss = {k: cfg.pop(k) for k in ("agg", "kl_coef", "kl_type") if k in cfg}
    engine = LearnerEngine(model, LearnerConfig(lr=1e-3, loss=loss, **cfg), batch_size=len(batch), max_len=8)
    metrics = [engine.train_step(batch, 2) for _ in range(steps)]
    return engine, metrics


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_micro_batches_accumulate_to_the_whole_batch_update(assets, agg):
    model, batch = assets
    whole, [m1] = _train(model, batch, agg=agg)
    packed, [m2] = _train(model, batch, agg=agg, micro_batch_tokens=2 * max(batch.seq_lens()))
    assert m1.micro_batches == 1 and m2.micro_batches == 4
    assert m2.loss == pytest.approx(m1.loss, rel=1e-5)
    assert m2.clip_frac == pytest.approx(m1.clip_frac) and m2.tokens == m1.tokens
    # Adam's first step moves each weight by about lr = 1e-3 whatever its gradient's size, so a micro-batch whose
    # gradient went missing would show as ~1e-3 differences; summation order alone gives ~1e-6
    a, b = whole.full_state_dict(), packed.full_state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=2e-5, msg=name)
    assert whole.ref is None  # kl_coef = 0: no reference model at all


def test_freeze_vision_reference_kl_tis_and_iterations(assets, tmp_path):
    model, batch = assets
    engine, metrics = _train(model, batch, steps=2, freeze_vision=True, kl_coef=0.1, kl_type="k3", num_iterations=2,
                             old_logp="learner", tis_cap=2.0, micro_batch_tokens=4 * max(batch.seq_lens()))
    assert engine.ref is not None and not any(p.requires_grad for p in engine.ref.parameters())
    assert metrics[0].kl_mean > 0  # the second update of the first batch already moved away from the reference
    assert metrics[1].kl_mean > 0 and metrics[1].loss != metrics[1].pg_loss  # the KL term is in the loss
    assert 0 < metrics[0].tis_weight_mean <= 2.0
    from transformers import Qwen2VLForConditionalGeneration

    start = Qwen2VLForConditionalGeneration.from_pretrained(str(model), dtype=torch.float32)
    trained = engine.full_state_dict()
    vision_names = {n for n, p in start.named_parameters() if any(p is q for q in vision_parameters(start))}
    before = start.state_dict()
    assert vision_names and all(torch.equal(trained[n], before[n]) for n in vision_names)
    lm = [n for n in before if n not in vision_names and not torch.equal(trained[n], before[n])]
    assert lm, "the language model trained"
    engine.save_weights(tmp_path / "out")
    reloaded = Qwen2VLForConditionalGeneration.from_pretrained(str(tmp_path / "out"), dtype=torch.float32)
    assert reloaded.state_dict().keys() == before.keys()  # complete: the frozen tower is published too


def test_gradient_checkpointing_gives_the_same_update_and_bf16_trains(assets):
    model, batch = assets
    plain, [m1] = _train(model, batch)
    ckpt, [m2] = _train(model, batch, gradient_checkpointing=True)
    assert ckpt.engine.module.is_gradient_checkpointing and not plain.engine.module.is_gradient_checkpointing
    assert m2.loss == pytest.approx(m1.loss, rel=1e-5) and m2.tokens == m1.tokens
    a, b = plain.full_state_dict(), ckpt.full_state_dict()
    for name in a:   # recomputed activations are the same activations
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=2e-5, msg=name)

    half, [m3] = _train(model, batch, dtype="bfloat16")
    assert next(half.engine.module.parameters()).dtype == torch.bfloat16
    assert m3.loss == pytest.approx(m1.loss, abs=0.05) and m3.tokens == m1.tokens   # bf16 rounding only
    c = half.full_state_dict()
    moved = [n for n in a if not torch.equal(c[n].float(), a[n]) and c[n].is_floating_point()]
    assert c[next(iter(c))].dtype == torch.bfloat16 and len(moved) > len(a) // 2
