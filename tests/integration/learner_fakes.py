"""Test doubles at the learner's edges: the tiny model, synthetic rows, and scored groups made up instead of
sampled by vLLM and scored by the reward service (random completion tokens, fixed log-probs, 0/1 rewards)."""

from __future__ import annotations

import random
from pathlib import Path

from services.common.config import MediaConfig
from services.common.dataset import Row, load_rows
from services.common.pb.videorl.v1 import rollout_pb2 as pb


def tiny_model(out_dir: Path) -> Path:
    from services.embedded.model import build_tiny_qwen2vl

    return build_tiny_qwen2vl(out_dir, warm_start_steps=0)  # random init: fast, and enough to train on


def synth_rows(out_dir: Path, n: int) -> list[Row]:
    from services.embedded.synth import make_direction_dataset

    train, _ = make_direction_dataset(out_dir, n, 1, seed=0)
    return load_rows(train)


def fake_group(prompt: pb.Prompt, version: int, k: int, rng: random.Random, rewards: list[float] | None = None,
               max_tokens: int = 6) -> pb.ScoredGroup:
    """K made-up completions of `prompt` by policy `version`, with sampler log-probs of -2 per token."""
    comps = []
    for i in range(k):
        ids = [rng.randrange(40, 200) for _ in range(rng.randint(2, max_tokens))]
        comps.append(pb.Completion(prompt_id=prompt.prompt_id, group_id=f"{prompt.prompt_id}/v{version}",
                                   sample_index=i, group_size=k, policy_version=version, completion_token_ids=ids,
                                   logprobs=[-2.0] * len(ids), prompt=prompt))
    rewards = rewards if rewards is not None else [float(rng.random() < 0.5) for _ in range(k)]
    return pb.ScoredGroup(group_id=f"{prompt.prompt_id}/v{version}", prompt_id=prompt.prompt_id,
                          policy_version=version, prompt=prompt, completions=comps, rewards=rewards)


def fake_batch(model_dir: Path, rows: list[Row], k: int, seed: int):
    """A Batch of one group per row, built by the real BatchBuilder (videos decoded, prompts rendered)."""
    from transformers import AutoProcessor

    from services.learner.batch import BatchBuilder

    rng = random.Random(seed)
    groups = [fake_group(r.to_prompt(f"p{i}-{r.id}"), 0, k, rng, rewards=[float(j % 2) for j in range(k)])
              for i, r in enumerate(rows)]
    builder = BatchBuilder(AutoProcessor.from_pretrained(str(model_dir)), MediaConfig())
    batch, mismatched = builder.build(groups)
    assert mismatched == 0
    return batch
