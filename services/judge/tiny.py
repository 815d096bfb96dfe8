"""The embedded tiny judge: the tiny Qwen2-VL with a short SFT that teaches only the judge's reply FORMAT, the
rubric's JSON object with random integer scores, on prompts built exactly as the reward service's judge client
builds them (services/reward/judge.py build_messages, both rubrics). It grades nothing: its scores are noise. What
it gives a local run is the whole served-judge path (Ray Serve, vLLM, the client, reply parsing) with replies that
parse, on a laptop with no model hub.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any

from services.embedded.synth import build_once
from services.reward.judge import RUBRICS, Rubric, build_messages

_VERSION = 1
_TURNS = ("left", "right", "straight ahead", "back", "up the stairs", "down the stairs")
_LANDMARKS = ("the door", "the stairs", "the shop", "the lift", "the window", "the red sign", "the corridor")
_QUESTIONS = ("How do I get from the entrance to the kitchen?", "Describe the route to the exit.",
              "Which way did the camera wearer walk to reach the stairs?", "What happened after the door?")


def _route(rng: random.Random) -> str:
    steps = [f"go {rng.choice(_TURNS)} at {rng.choice(_LANDMARKS)}" for _ in range(rng.randint(1, 4))]
    return ", then ".join(steps).capitalize() + "."


def _example(rng: random.Random, rubric: Rubric) -> tuple[list[dict[str, str]], str]:
    """One judge request as the client sends it, and a reply in the rubric's shape with random scores."""
    candidate = rng.choice([_route(rng), rng.choice("ABCD"), "", "I do not know."])
    messages = build_messages(rubric, rng.choice(_QUESTIONS), _route(rng), candidate, f"{rng.getrandbits(64):016x}")
    reply = json.dumps({f: rng.randint(0, rubric.top) for f in rubric.fields})
    return messages, reply


def build_tiny_judge(out_dir: Path, base_model: Path, steps: int = 80, seed: int = 0) -> Path:
    """Build (or reuse) the tiny judge in `out_dir` from the tiny model in `base_model`; `out_dir`."""
    base_model = Path(base_model).resolve()
    marker = base_model / "build_info.json"
    params = {"version": _VERSION, "seed": seed, "steps": steps,
              "base": marker.read_text() if marker.exists() else str(base_model)}

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

        start = time.perf_counter()
        processor = AutoProcessor.from_pretrained(str(base_model))
        model = Qwen2VLForConditionalGeneration.from_pretrained(str(base_model), dtype=torch.float32)
        stats = _train(model, processor.tokenizer, steps, seed)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        shutil.copy(base_model / "generation_config.json", tmp / "generation_config.json")
        stats["build_s"] = round(time.perf_counter() - start, 2)
        (tmp / "build_info.json").write_text(json.dumps({"judge_warm_start": stats}, indent=2))

    build_once(out_dir, params, build)
    return Path(out_dir).resolve()


def _train(model: Any, tokenizer: Any, steps: int, seed: int, batch_size: int = 4, lr: float = 3e-3) -> dict:
    """Teacher-forced SFT on the reply tokens (and <|im_end|>) of judge requests, text only, one thread."""
    import torch

    rng = random.Random(seed)
    rubrics = list(RUBRICS.values())
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / steps)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.train()
    losses = []
    try:
        for _ in range(steps):
            seqs = []
            for _ in range(batch_size):
                messages, reply = _example(rng, rng.choice(rubrics))
                text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                prompt = tokenizer(text, add_special_tokens=False)["input_ids"]   # as vLLM renders a chat
                target = tokenizer(reply, add_special_tokens=False)["input_ids"] + [end]
                seqs.append((list(prompt), target))
            width = max(len(p) + len(t) for p, t in seqs)
            ids = torch.full((batch_size, width), pad)
            labels = torch.full((batch_size, width), -100)
            mask = torch.zeros((batch_size, width), dtype=torch.long)
            for i, (p, t) in enumerate(seqs):
                ids[i, : len(p) + len(t)] = torch.tensor(p + t)
                labels[i, len(p): len(p) + len(t)] = torch.tensor(t)
                mask[i, : len(p) + len(t)] = 1
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
        model.eval()
    return {"steps": steps, "loss_first": round(losses[0], 4),
            "loss_last10": round(sum(losses[-10:]) / len(losses[-10:]), 4)}
