"""services/learner/sft.py without DeepSpeed: response format, loss masking, the actors' prompt and frames, bad rows
and corrupt videos, the lr schedule."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from services.common.config import ConfigError, MediaConfig, SFTConfig, SFTRunConfig, load_config
from services.common.dataset import DatasetError, Reverse, Row, rows_with_reverse
from services.common.media import sample_video
from services.common.prompts import chat_text
from services.embedded.model import build_config, build_processor, build_tokenizer
from services.embedded.synth import encode_mp4
from services.learner import sft

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MEDIA = MediaConfig()


@pytest.fixture(scope="module")
def processor():
    return build_processor(build_tokenizer())


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """A 16-frame mp4 whose frames all differ, so that reversing them shows."""
    frames = np.zeros((16, 64, 64, 3), np.uint8)
    for t in range(16):
        frames[t, :, 4 * t : 4 * t + 8] = 200
    path = tmp_path_factory.mktemp("video") / "v.mp4"
    encode_mp4(frames, path)
    return path


def _row(video: Path, **kw) -> Row:
    fields = {"id": "r1", "video": str(video), "task": "mcq", "question": "Which way does the shape move?",
              "answer": "D", "options": ("up", "down", "left", "right")} | kw
    return Row(**fields)


def test_response_text_thinks_only_when_the_row_has_reasoning(video):
    thinking = _row(video, reasoning="It goes right.")
    assert sft.response_text(thinking) == "<think>It goes right.</think><answer>D</answer>"
    assert sft.response_text(_row(video)) == "<answer>D</answer>"
    numeric = _row(video, task="numeric", answer="3", options=(), reasoning="Three discs.")
    assert sft.response_text(numeric) == "<think>Three discs.</think><answer>3</answer>"


def test_prompt_tokens_are_masked_and_response_tokens_are_labels(processor, video):
    rows = [_row(video, reasoning="The square is further left in the first frame."), _row(video, id="r2")]
    frames = sample_video(video, MEDIA)
    examples = [sft.encode(processor, r, frames) for r in rows]
    batch = sft.collate(examples, processor.tokenizer.pad_token_id)
    tok = processor.tokenizer
    for i, (row, ex) in enumerate(zip(rows, examples, strict=True)):
        p, n = len(ex.input_ids), len(ex.response_ids)
        labels = batch["labels"][i]
        assert (labels[:p] == sft.IGNORE).all() and (labels[p + n :] == sft.IGNORE).all()  # prompt and padding
        assert labels[p : p + n].tolist() == ex.response_ids == batch["input_ids"][i, p : p + n].tolist()
        assert tok.decode(ex.response_ids) == sft.response_text(row) + "<|im_end|>"
        assert ex.response_ids[-1] == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
        assert batch["attention_mask"][i].sum() == p + n
        assert (batch["mm_token_type_ids"][i, p:] == 0).all()
    # The prompt is the actors' prompt, token for token.
    text = chat_text(processor, rows[0].question, list(rows[0].options))
    want = processor(text=[text], videos=[frames], return_tensors="pt", do_resize=False, do_sample_frames=False)
    assert examples[0].input_ids.tolist() == want["input_ids"][0].tolist()
    torch.testing.assert_close(examples[0].pixel_values_videos, want["pixel_values_videos"])


def test_loss_counts_response_tokens_only(processor, video):
    torch.manual_seed(0)
    from transformers import Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration(build_config(processor.tokenizer)).eval()
    frames = sample_video(video, MEDIA)
    rows = [_row(video, reasoning="It goes right."), _row(video, id="r2", answer="A")]
    batch = sft.collate([sft.encode(processor, r, frames) for r in rows], processor.tokenizer.pad_token_id)
    with torch.no_grad():
        nll, n = sft.response_loss_sum(model, batch, "cpu")
        hf_mean = model(**batch).loss  # HF's own shifted, -100-ignoring mean
    assert n == sum(len(sft.encode(processor, r, frames).response_ids) for r in rows)
    torch.testing.assert_close(nll / n, hf_mean)
    # Changing the prompt's labels to the prompt tokens would change the loss: masking is what keeps them out.
    unmasked = dict(batch, labels=torch.where(batch["attention_mask"] > 0, batch["input_ids"], sft.IGNORE))
    with torch.no_grad():
        assert sft.response_loss_sum(model, unmasked, "cpu")[1] > n


def test_frames_are_the_actors_frames_reversed_for_reverse_time_rows(processor, video):
    fwd = _row(video, reverse=Reverse("Which way, backwards?", "C"), reasoning="Right.")
    rows = list(rows_with_reverse([fwd]))
    stream = sft.RowStream(rows, processor, MEDIA, seed=0)
    got = {len(e.response_ids): e for e in stream.take(2)}  # forward (with reasoning) and reverse are told apart
    back = min(got.values(), key=lambda e: len(e.response_ids))
    want = sft.encode(processor, rows[1], sample_video(video, MEDIA, reverse=True))
    torch.testing.assert_close(back.pixel_values_videos, want.pixel_values_videos)
    assert back.input_ids.tolist() == want.input_ids.tolist()
    # The reverse row has no reasoning of its own: it must not inherit the forward video's.
    assert processor.tokenizer.decode(back.response_ids) == "<answer>C</answer><|im_end|>"


def test_corrupt_videos_are_skipped_and_counted(processor, video, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    rows = [_row(video), _row(broken, id="bad"), _row(tmp_path / "missing.mp4", id="gone"), _row(video, id="r3")]
    stream = sft.RowStream(rows, processor, MEDIA, seed=1)
    examples = stream.take(6)  # more than one epoch: the bad rows are tried once, then left out
    assert len(examples) == 6
    assert dict(stream.skipped) == {"corrupt": 1, "missing": 1} and stream.bad == {"bad", "gone"}
    with pytest.raises(DatasetError, match="no row's video could be sampled"):
        sft.RowStream([_row(broken, id="bad")], processor, MEDIA, seed=0).take(1)


def test_bad_rows_fail_before_training_with_file_line_and_field(tmp_path, video):
    good = {"id": "a", "video": str(video), "task": "mcq", "question": "Q?", "options": ["x", "y"], "answer": "A"}
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(good) + "\n" + json.dumps(good | {"id": "b", "reasoning": ""}) + "\n")
    with pytest.raises(DatasetError, match=r"d\.jsonl:2: field 'reasoning'"):
        sft.load_sft_rows([f])
    f.write_text(json.dumps(good | {"reasoning": 3}) + "\n")
    with pytest.raises(DatasetError, match=r"d\.jsonl:1: field 'reasoning'"):
        sft.load_sft_rows([f])
    f.write_text(json.dumps(good | {"reasoning": "ok"}) + "\n")
    (g := tmp_path / "e.jsonl").write_text(json.dumps(good) + "\n")
    with pytest.raises(DatasetError, match=r"e\.jsonl: field 'id': 'a' is also in .*d\.jsonl"):
        sft.load_sft_rows([f, g])
    (row,) = sft.load_sft_rows([f])
    assert row.reasoning == "ok"


def test_bad_rows_stop_train_sft_before_any_model_is_loaded(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"id": "a", "video": "v.mp4", "task": "mcq"}\n')
    with pytest.raises(DatasetError, match=r"d\.jsonl:1: missing field 'question'"):
        sft.train_sft(SFTConfig(), MEDIA, tmp_path / "no-model", [f], tmp_path / "out", progress=False)


def test_lr_schedule_warms_up_then_decays():
    assert [sft.lr_factor(s, 10, 0, "constant") for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    cos = [sft.lr_factor(s, 10, 2, "cosine") for s in range(10)]
    assert cos[:3] == [0.5, 1.0, 1.0] and cos[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(cos[1:], cos[2:], strict=False))


def test_sft_has_its_own_config(tmp_path):
    cfg = load_config(None, ["sft.data=a.jsonl", "sft.steps=5", "sft.zero_stage=3", "seed=4"], model=SFTRunConfig)
    assert cfg.sft.data == [Path("a.jsonl")] and cfg.sft.steps == 5 and cfg.sft.zero_stage == 3 and cfg.seed == 4
    assert load_config(None, ["sft.data=[a.jsonl, b.jsonl]"], model=SFTRunConfig).sft.data == [
        Path("a.jsonl"), Path("b.jsonl")]
    with pytest.raises(ConfigError, match="sft: moved to its own config file"):
        load_config(None, ["sft.steps=5"])                          # not a field of the run config any more
    with pytest.raises(ConfigError, match="sft.seed: moved to seed"):
        load_config(None, ["sft.seed=1"], model=SFTRunConfig)
    assert sft.total_steps(SFTConfig(batch_size=8, epochs=2), 20) == 5
    assert sft.total_steps(SFTConfig(steps=7), 20) == 7
