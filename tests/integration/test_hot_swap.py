"""A hot-swap is real: after loading version v, a running engine's greedy output for a fixed prompt equals
that of a fresh engine started from v's files, and differs from the previous version's."""

import asyncio
import uuid

import pytest
import torch

from services.common.config import MediaConfig, RunConfig
from services.common.media import sample_video
from services.common.prompts import chat_text
from services.common.weights import verify, write_version
from services.rollout.engine import VLLMEngine

pytestmark = pytest.mark.integration


def _perturbed_version(model_dir, root):
    """Version 1: the base weights with noise, published through the weight store like the learner does."""
    from transformers import Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(str(model_dir), dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)

    def write(d):
        model.save_pretrained(str(d), safe_serialization=True)
        for f in model_dir.glob("*.json"):
            if not (d / f.name).exists():
                (d / f.name).write_bytes(f.read_bytes())
        for f in model_dir.glob("*.jinja"):
            (d / f.name).write_bytes(f.read_bytes())
    return write_version(root, 1, step=1, write=write)


async def _greedy(engine, prompt, frames):
    (sample,) = await engine.generate(uuid.uuid4().hex, prompt, frames, n=1, max_tokens=16, temperature=0.0)
    return sample.token_ids


def test_hot_swap_equals_fresh_engine_and_changes_output(tiny_assets, tmp_path):
    cfg = RunConfig(rollout={"max_new_tokens": 16})
    row = tiny_assets.eval_rows[0]
    frames = sample_video(row.video, MediaConfig())
    manifest = _perturbed_version(tiny_assets.model_dir, tmp_path / "weights")
    verify(manifest)

    async def scenario():
        running = VLLMEngine.create(tiny_assets.model_dir, cfg)
        prompt = chat_text(running.tokenizer, row.question, list(row.options))
        try:
            before = await _greedy(running, prompt, frames)
            paused = await running.load_weights(manifest.uri)
            after = await _greedy(running, prompt, frames)
        finally:
            running.shutdown()
        fresh = VLLMEngine.create(manifest.uri, cfg)
        try:
            reference = await _greedy(fresh, prompt, frames)
        finally:
            fresh.shutdown()
        return before, after, reference, paused

    before, after, reference, paused = asyncio.run(scenario())
    assert after == reference, "the swapped engine must behave exactly like a fresh engine on the new files"
    assert after != before, "the new version's greedy output must differ from the previous version's"
    assert 0 < paused < 30


def test_engine_never_samples_vision_placeholders_even_from_a_uniform_policy(tiny_assets, tmp_path):
    """With a zeroed lm_head every token is equally likely (5 of 731 are vision markers: ~7 expected in 1,024
    sampled tokens); the engine's logit bias must keep every one of them out of the completions."""
    from transformers import Qwen2VLForConditionalGeneration

    from services.common.prompts import vision_token_ids

    model = Qwen2VLForConditionalGeneration.from_pretrained(str(tiny_assets.model_dir), dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.zero_()

    def write(d):
        model.save_pretrained(str(d), safe_serialization=True)
        for pattern in ("*.json", "*.jinja"):
            for f in tiny_assets.model_dir.glob(pattern):
                if not (d / f.name).exists():
                    (d / f.name).write_bytes(f.read_bytes())

    manifest = write_version(tmp_path / "weights", 1, step=1, write=write)
    row = tiny_assets.eval_rows[0]
    frames = sample_video(row.video, MediaConfig())

    async def scenario():
        engine = VLLMEngine.create(manifest.uri, RunConfig(rollout={"max_new_tokens": 16}))
        try:
            prompt = chat_text(engine.tokenizer, row.question, list(row.options))
            return engine, await engine.generate(uuid.uuid4().hex, prompt, frames, n=64, max_tokens=16,
                                                 temperature=1.0)
        finally:
            engine.shutdown()

    engine, samples = asyncio.run(scenario())
    tokens = [t for s in samples for t in s.token_ids]
    forbidden = set(vision_token_ids(engine.tokenizer))
    assert len(forbidden) == 5 and len(set(tokens)) > 200, "the policy must really be near uniform"
    assert not forbidden.intersection(tokens)
