"""A tiny random-init Qwen2-VL built offline, loadable by both vLLM and HF transformers.

Invariants this module keeps:
- Offline and seeded: the tokenizer is a byte-level BPE trained here on a fixed corpus, the weights come from
  `torch.manual_seed(seed)`; nothing is downloaded. The same arguments give the same files on the same machine.
- One prompt format: services.common.prompts (shared with the actors and the learner) renders it through the
  processor's chat template, which is the template saved with the model, so the warm start, vLLM rollouts and
  HF training all see identical token sequences.
- A 64x64 frame is resized to 56x56 (patch 14, merge 2), so every 2 frames cost 4 video tokens.
- The output dir is complete only with its `.complete` marker, written last into a temp dir that is then
  renamed into place (see `synth.build_once`); a matching marker means "reuse, don't rebuild".
- The warm start teaches the answer *format* only: targets are `<answer>X</answer><|im_end|>` with X drawn
  uniformly, independent of the video, so the direction task is still entirely left to RL.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

from services.common.prompts import chat_text, user_text
from services.embedded.synth import DIRECTIONS, LETTERS, QUESTION, build_once, decode_video, read_jsonl

# Qwen2-VL's special tokens in Qwen's order; they get the ids after the BPE vocabulary, as in Qwen.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Qwen style, without Qwen's default system prompt (prompts stay short); '\n' is a Jinja escape, so raw string.
CHAT_TEMPLATE = r"""{%- for message in messages -%}
{{- '<|im_start|>' + message['role'] + '\n' -}}
{%- if message['content'] is string -%}
{{- message['content'] -}}
{%- else -%}
{%- for part in message['content'] -%}
{%- if part['type'] == 'video' -%}
{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}
{%- elif part['type'] == 'image' -%}
{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
{%- elif part['type'] == 'text' -%}
{{- part['text'] -}}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{{- '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\n' -}}
{%- endif -%}"""
MIN_PIXELS = 28 * 28
MAX_PIXELS = 64 * 64
VOCAB_TARGET = 1024
INIT_RANGE = 0.1
# Bump when the architecture, tokenizer corpus or warm-start recipe changes, so old markers stop matching.
_VERSION = 2
_GENERIC_ENGLISH = (
    "The quick brown fox jumps over the lazy dog.",
    "A video is a sequence of frames shown one after another at a fixed rate.",
    "Look at the first frame and the last frame, then compare where the object is.",
    "If the object is higher at the end, it moved up; if it is lower, it moved down.",
    "If it is further to the left at the end, it moved left; further to the right means it moved right.",
    "Let me think step by step about the motion before I answer the question.",
    "The red square starts near the top and slides towards the bottom of the picture.",
    "A small blue disc travels across the screen from one side to the other.",
    "Green, yellow, orange, purple, white and black are colours; circles and squares are shapes.",
    "The answer is one letter. The options are labelled with capital letters.",
    "I see the shape in every frame, and its position changes by a few pixels each time.",
    "Reinforcement learning improves a policy by rewarding the outputs that turn out to be correct.",
    "Please describe what happens in the clip, then give your final answer.",
    "There are four possible directions: up, down, left and right.",
    "Numbers such as 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16 and 64 appear in many questions.",
    "She said that the weather would be fine today, so we went for a walk in the park.",
    "This is a simple example with a question, some options, and an answer.",
    "What is shown in the video? Which object appears first? How many frames are there?",
)


def build_tiny_qwen2vl(
    out_dir: Path, seed: int = 0, warm_start_steps: int = 200, videos_jsonl: Path | None = None
) -> Path:
    """Build (or reuse) the tiny model in `out_dir` in `save_pretrained` layout and return `out_dir`.

    With `warm_start_steps > 0` and `videos_jsonl`, the weights get a short format-only SFT on those rows' videos.
    `out_dir/build_info.json` records sizes, timings and the warm-start loss.
    """
    out_dir = Path(out_dir).resolve()
    warm_rows = Path(videos_jsonl) if warm_start_steps > 0 and videos_jsonl is not None else None
    warm = warm_rows is not None
    params = {
        "version": _VERSION,
        "seed": seed,
        "warm_start_steps": warm_start_steps if warm else 0,
        # The rows' content, not the path: a rebuilt data set must invalidate the warm start.
        "videos_jsonl_sha256": hashlib.sha256(warm_rows.read_bytes()).hexdigest() if warm_rows else None,
    }

    def build(tmp: Path) -> None:
        start = time.perf_counter()
        tokenizer = build_tokenizer()
        processor = build_processor(tokenizer)
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(build_config(tokenizer))
        info: dict[str, Any] = {"vocab_size": len(tokenizer), "params": sum(p.numel() for p in model.parameters())}
        if warm_rows is not None:
            rows = read_jsonl(warm_rows)
            info["warm_start"] = warm_start(model, processor, rows, steps=warm_start_steps, seed=seed)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        _generation_config(tokenizer).save_pretrained(tmp)
        info["build_s"] = round(time.perf_counter() - start, 2)
        (tmp / "build_info.json").write_text(json.dumps(info, indent=2))

    build_once(out_dir, params, build)
    return out_dir


def build_tokenizer() -> Qwen2Tokenizer:
    """Byte-level BPE with Qwen2's normalizer and pre-tokenizer, trained on the task texts and some English."""
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(_corpus(), trainer)
    trained = json.loads(bpe.to_str())["model"]
    vocab = dict(trained["vocab"])
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(m) for m in trained["merges"]],  # type: ignore[misc]  # pairs, as the slow tokenizer takes
        eos_token="<|im_end|>",  # as Qwen2-VL-Instruct: generation ends at the end of the assistant turn
        pad_token="<|endoftext|>",
        unk_token=None,  # type: ignore[arg-type]  # byte-level: every string is representable
    )
    # Marking them special keeps BPE from splitting them and lets skip_special_tokens drop them.
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _corpus() -> list[str]:
    task = [user_text(QUESTION, list(DIRECTIONS))]
    task += [f"<answer>{letter}</answer>" for letter in LETTERS]
    task += [f"<think>The shape moves {d}.</think><answer>{LETTERS[i]}</answer>" for i, d in enumerate(DIRECTIONS)]
    # The chat scaffolding without special tokens, so the words around them get merges of their own.
    task += ["user\n", "assistant\n", "system\n", "You are a helpful assistant.", "<think>\n", "\n</think>\n\n"]
    # Repetition makes the task strings' merges win over generic English ones.
    return task * 20 + list(_GENERIC_ENGLISH) * 3


def build_processor(tokenizer: Qwen2Tokenizer) -> Qwen2VLProcessor:
    vision = {
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "patch_size": 14,
        "merge_size": 2,
        "temporal_patch_size": 2,
    }
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**vision),
        # Frames arrive already sampled (do_sample_frames off, so no video metadata is needed). No per-video pixel
        # cap: that is what vLLM's token-count estimate assumes, and at 64x64 it changes nothing anyway.
        video_processor=Qwen2VLVideoProcessor(**vision, do_sample_frames=False, cap_pixels_per_frame=False),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def _token_id(tokenizer: Qwen2Tokenizer, token: str) -> int:
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int):
        raise ValueError(f"{token!r} is not one token of the tiny tokenizer")
    return found


def build_config(tokenizer: Qwen2Tokenizer) -> Qwen2VLConfig:
    ids = {t: _token_id(tokenizer, t) for t in SPECIAL_TOKENS}
    return Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,  # head_dim 32 = 2 * sum(mrope_section)
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
            "bos_token_id": None,
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "initializer_range": INIT_RANGE,
        },
        vision_config={
            "depth": 2,
            "embed_dim": 64,
            "num_heads": 4,
            "mlp_ratio": 2,
            "hidden_size": 128,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_channels": 3,
            "initializer_range": INIT_RANGE,
        },
        # A 5x larger init than Qwen's 0.02: at 0.02 this tiny model does not learn where things are in a frame at
        # any learning rate we tried (supervised, 300 steps); at 0.1 it reaches 90% on the direction task in about
        # 2,000 supervised samples. HF's _init_weights reads the top-level value; the sub-configs carry it too.
        initializer_range=INIT_RANGE,  # type: ignore[call-arg]  # a PretrainedConfig kwarg the stubs do not list
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def _generation_config(tokenizer: Qwen2Tokenizer) -> GenerationConfig:
    # vLLM stops on these ids too; <|endoftext|> is a fallback for completions that skip <|im_end|>.
    stop = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    return GenerationConfig(eos_token_id=stop, pad_token_id=stop[1], do_sample=True, temperature=1.0)


def warm_start(
    model: Qwen2VLForConditionalGeneration,
    processor: Qwen2VLProcessor,
    rows: list[dict[str, Any]],
    steps: int,
    seed: int = 0,
    batch_size: int = 8,
    lr: float = 1e-3,
    max_rows: int = 128,
) -> dict[str, Any]:
    """Teacher-forced SFT on `<answer>X</answer><|im_end|>` with X uniform over the options; returns stats.

    The learning rate is gentle on purpose: random-letter targets reward ignoring the video, and at 5e-3 they did
    so hard enough that the direction task became unlearnable afterwards; at 1e-3 the format is learned as well
    (loss 0.237 against a floor of 0.231) and learning from the video survives.

    Only the first `max_rows` rows are used: their prompts are encoded once up front, and a format needs no more.
    """
    start = time.perf_counter()
    prompts = [_encode_prompt(processor, row) for row in rows[:max_rows]]
    targets = [processor.tokenizer(f"<answer>{x}</answer><|im_end|>")["input_ids"] for x in LETTERS]
    pad_id = processor.tokenizer.pad_token_id
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    # Decaying to zero lets the last steps average out batch noise in the letter logits (uniform, not skewed).
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / steps)
    model.train()
    losses = []
    with _single_thread():
        for _ in range(steps):
            picks = torch.randint(len(prompts), (batch_size,), generator=gen).tolist()
            letters = torch.randint(len(LETTERS), (batch_size,), generator=gen).tolist()
            batch = _collate([prompts[i] for i in picks], [targets[j] for j in letters], pad_id)
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
    model.eval()
    return {
        "steps": steps,
        "rows": len(prompts),
        "seconds": round(time.perf_counter() - start, 2),
        # The floor is ln(4) = 1.386 on the letter token averaged over the 6 target tokens: about 0.23.
        "loss_first": round(losses[0], 4),
        "loss_last10": round(float(np.mean(losses[-10:])), 4),
    }


@contextmanager
def _single_thread() -> Iterator[None]:
    """One intra-op thread: as fast as two for matrices this small (measured), no waiting on a second thread when
    another process holds the other core, and results that do not depend on the machine's core count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _encode_prompt(processor: Qwen2VLProcessor, row: dict[str, Any]) -> dict[str, torch.Tensor]:
    text = chat_text(processor, row["question"], row["options"])
    enc = processor(text=[text], videos=[decode_video(row["video"])], return_tensors="pt")
    return {
        "input_ids": enc["input_ids"][0],
        "mm_token_type_ids": enc["mm_token_type_ids"][0],
        "pixel_values_videos": enc["pixel_values_videos"],
        "video_grid_thw": enc["video_grid_thw"],
    }


def _collate(prompts: list[dict[str, torch.Tensor]], targets: list[list[int]], pad_id: int) -> dict[str, Any]:
    """Right-padded batch of prompt + target, with labels only on the target tokens."""
    seqs = [torch.cat([p["input_ids"], torch.tensor(t)]) for p, t in zip(prompts, targets, strict=True)]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id)
    labels = torch.full((len(seqs), width), -100)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    mm_token_type_ids = torch.zeros((len(seqs), width), dtype=prompts[0]["mm_token_type_ids"].dtype)
    for i, (p, seq) in enumerate(zip(prompts, seqs, strict=True)):
        n_prompt = len(p["input_ids"])
        input_ids[i, : len(seq)] = seq
        labels[i, n_prompt : len(seq)] = seq[n_prompt:]
        attention_mask[i, : len(seq)] = 1
        mm_token_type_ids[i, :n_prompt] = p["mm_token_type_ids"]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "mm_token_type_ids": mm_token_type_ids,
        "pixel_values_videos": torch.cat([p["pixel_values_videos"] for p in prompts]),
        "video_grid_thw": torch.cat([p["video_grid_thw"] for p in prompts]),
    }
