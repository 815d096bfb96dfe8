"""The embedded synthetic data set and tiny Qwen2-VL: determinism, schema, markers, HF loading, token counts."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from services.embedded import synth
from services.embedded.synth import (
    DIRECTIONS,
    LETTERS,
    MARKER,
    QUESTION,
    build_once,
    decode_video,
    make_direction_dataset,
    read_jsonl,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "directions"
    return make_direction_dataset(out, n_train=10, n_eval=4, seed=3)


def test_rows_follow_the_schema(dataset):
    train, eval_ = dataset
    for path, split, n in ((train, "train", 10), (eval_, "eval", 4)):
        rows = read_jsonl(path)
        assert len(rows) == n
        assert len({r["id"] for r in rows}) == n
        for row in rows:
            assert set(row) == {"id", "video", "task", "question", "options", "answer", "split", "extra"}
            assert row["extra"] == {"synth_task": "direction"}
            assert row["task"] == "mcq" and row["split"] == split and row["question"] == QUESTION
            assert row["options"] == ["up", "down", "left", "right"]
            assert row["answer"] in LETTERS
            assert Path(row["video"]).is_absolute() and Path(row["video"]).is_file()


def test_directions_are_balanced(dataset):
    train = [r["answer"] for r in read_jsonl(dataset[0])]
    counts = [train.count(letter) for letter in LETTERS]
    assert max(counts) - min(counts) <= 1  # 10 rows -> 3,3,2,2 in some order
    assert sorted(r["answer"] for r in read_jsonl(dataset[1])) == list(LETTERS)


def _centroid(frame: np.ndarray) -> np.ndarray:
    # The shape covers at most 256 of 4096 pixels, so the median colour is the background.
    background = np.median(frame.reshape(-1, 3), axis=0)
    ys, xs = np.nonzero(np.abs(frame.astype(int) - background).sum(-1) > 60)
    return np.array([xs.mean(), ys.mean()])


def test_videos_decode_to_16_frames_moving_the_labelled_way(dataset):
    steps = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}
    for row in read_jsonl(dataset[0]) + read_jsonl(dataset[1]):
        frames = decode_video(row["video"])
        assert frames.shape == (16, 64, 64, 3) and frames.dtype == np.uint8
        moved = _centroid(frames[-1]) - _centroid(frames[0])
        expected = np.array(steps[DIRECTIONS[LETTERS.index(row["answer"])]])
        assert moved @ expected >= 25  # 2-3 px per frame over 15 frames, along the labelled axis
        assert abs(moved @ expected[::-1]) <= 2  # and none across it


def test_same_seed_gives_same_rows_and_pixels(tmp_path, dataset):
    again = make_direction_dataset(tmp_path / "again", n_train=10, n_eval=4, seed=3)
    for first, second in zip(dataset, again, strict=True):
        rows_a, rows_b = read_jsonl(first), read_jsonl(second)
        assert [{**r, "video": None} for r in rows_a] == [{**r, "video": None} for r in rows_b]
        for a, b in zip(rows_a, rows_b, strict=True):
            np.testing.assert_array_equal(decode_video(a["video"]), decode_video(b["video"]))


def test_other_seed_gives_other_pixels(tmp_path, dataset):
    other = make_direction_dataset(tmp_path / "other", n_train=1, n_eval=0, seed=4)
    a, b = read_jsonl(dataset[0])[0], read_jsonl(other[0])[0]
    assert not np.array_equal(decode_video(a["video"]), decode_video(b["video"]))


def _count_encodes(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = synth.encode_mp4

    def counting(frames: np.ndarray, path: Path, **kwargs) -> None:
        calls.append(path)
        real(frames, path, **kwargs)

    monkeypatch.setattr(synth, "encode_mp4", counting)
    return calls


def test_complete_dir_is_reused_and_half_written_one_rebuilt(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    paths = make_direction_dataset(out, n_train=2, n_eval=1, seed=0)
    calls = _count_encodes(monkeypatch)
    assert make_direction_dataset(out, n_train=2, n_eval=1, seed=0) == paths
    assert calls == []

    (out / MARKER).unlink()  # as if the process died before finishing
    (out / "train.jsonl").write_text("garbage\n")
    make_direction_dataset(out, n_train=2, n_eval=1, seed=0)
    assert len(calls) == 3 and (out / MARKER).is_file()
    assert len(read_jsonl(out / "train.jsonl")) == 2

    make_direction_dataset(out, n_train=3, n_eval=1, seed=0)  # other parameters: rebuilt
    assert len(calls) == 3 + 4 and len(read_jsonl(out / "train.jsonl")) == 3


def test_failed_build_leaves_nothing_behind(tmp_path):
    def explode(tmp: Path) -> None:
        (tmp / "partial").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        build_once(tmp_path / "out", {"a": 1}, explode)
    assert list(tmp_path.iterdir()) == []


# --- the tiny model (no warm start: that is exercised by the vLLM integration test) ---


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from services.embedded.model import build_tiny_qwen2vl

    return build_tiny_qwen2vl(tmp_path_factory.mktemp("model") / "tiny", seed=0, warm_start_steps=0)


def test_model_dir_is_complete_and_reused(tiny_model, monkeypatch):
    from services.embedded import model as model_mod

    assert (tiny_model / MARKER).is_file() and (tiny_model / "model.safetensors").is_file()
    info = json.loads((tiny_model / "build_info.json").read_text())
    assert 300 <= info["vocab_size"] <= 2048 and info["params"] < 2_000_000
    monkeypatch.setattr(model_mod, "build_tokenizer", lambda: pytest.fail("rebuilt a complete model dir"))
    assert model_mod.build_tiny_qwen2vl(tiny_model, seed=0, warm_start_steps=0) == tiny_model


def test_hf_loads_model_and_4_frames_become_8_video_tokens(tiny_model):
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from services.common.prompts import chat_text as chat_prompt

    processor = AutoProcessor.from_pretrained(tiny_model)
    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model).eval()
    prompt = chat_prompt(processor, QUESTION, list(DIRECTIONS))
    enc = processor(text=[prompt], videos=[np.zeros((4, 64, 64, 3), np.uint8)], return_tensors="pt")
    # 64x64 -> 56x56 = 4x4 patches of 14 -> 2x2 after merging; 4 frames -> 2 temporal patches.
    assert enc["video_grid_thw"].tolist() == [[2, 4, 4]]
    assert int((enc["input_ids"] == model.config.video_token_id).sum()) == 8
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (1, enc["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


def test_prompt_format(tiny_model):
    from transformers import AutoProcessor

    from services.common.prompts import chat_text as chat_prompt
    from services.common.prompts import user_text as prompt_text

    text = prompt_text(QUESTION, list(DIRECTIONS))
    assert text == (
        "Which way does the shape move?\nA. up\nB. down\nC. left\nD. right\n"
        "Answer with the option letter inside <answer></answer>."
    )
    processor = AutoProcessor.from_pretrained(tiny_model)
    assert chat_prompt(processor, QUESTION, list(DIRECTIONS)) == (
        f"<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n"
    )
    # The tokenizer carries the same template, for callers (vLLM's chat API) that only see the tokenizer.
    assert processor.tokenizer.chat_template == processor.chat_template


def test_tokenizer_round_trips_special_tokens(tiny_model):
    from transformers import AutoTokenizer

    from services.embedded.model import SPECIAL_TOKENS

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS) and max(ids) == len(tokenizer) - 1
    for token, token_id in zip(SPECIAL_TOKENS, ids, strict=True):
        assert tokenizer(token)["input_ids"] == [token_id]
    text = "<|im_start|>assistant\n<think>left</think><answer>C</answer><|im_end|> héllo ✓"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == (
        "assistant\n<think>left</think><answer>C</answer> héllo ✓"
    )


def test_reasoning_is_off_by_default_and_exact_when_on(tmp_path, dataset):
    from services.embedded.synth import read_marker

    assert "reasoning" not in read_marker(dataset[0].parent)  # off: the marker (and so old caches) unchanged
    with_r = make_direction_dataset(tmp_path / "r", n_train=10, n_eval=4, seed=3, reasoning=True)
    assert read_marker(with_r[0].parent)["reasoning"] is True
    for plain_path, r_path in zip(dataset, with_r, strict=True):
        for plain, row in zip(read_jsonl(plain_path), read_jsonl(r_path), strict=True):
            text = row.pop("reasoning")
            assert {**row, "video": None} == {**plain, "video": None}
            assert text.endswith(f"so it moves {DIRECTIONS[LETTERS.index(row['answer'])]}.")
            np.testing.assert_array_equal(decode_video(row["video"]), decode_video(plain["video"]))
