"""Turns scored groups into one padded training batch for the HF Qwen2-VL model.

The video is decoded again here from its URI with the same sampling rules the actors use (pixels never
travel through Redis or gRPC), and the prompt is rendered with the same chat template. The prompt
token ids the processor produces are checked against the ones vLLM reported; a mismatch means the two
sides would not score the same sequence, and is counted rather than trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.common.config import MediaConfig
from services.common.media import FrameCache
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.common.prompts import chat_text, vision_token_ids


@dataclass
class Batch:
    input_ids: torch.Tensor             # (N, L) prompt + completion, right-padded
    attention_mask: torch.Tensor        # (N, L)
    mm_token_type_ids: torch.Tensor     # (N, L) which positions are video tokens (for M-RoPE); 0 on text
    loss_mask: torch.Tensor             # (N, T) 1 on completion tokens, T = longest completion
    old_logp: torch.Tensor              # (N, T) behaviour log-probs from vLLM
    rewards: torch.Tensor               # (N,) NaN = unscorable
    prompt_lens: list[int]              # per sequence
    pixel_values_videos: torch.Tensor   # (sum of patches, C*tp*p*p)
    video_grid_thw: torch.Tensor        # (N, 3)
    versions: list[int]                 # per sequence

    def __len__(self) -> int:
        return len(self.prompt_lens)

    def seq_lens(self) -> list[int]:
        """Tokens (prompt + completion) of each sequence."""
        return self.attention_mask.sum(dim=1).tolist()

    def select(self, rows: list[int]) -> Batch:
        """The sub-batch of these sequences, in this order, trimmed to its own longest sequence and completion."""
        idx = torch.tensor(rows, dtype=torch.long)
        seq_len = max(self.seq_lens()[i] for i in rows)
        comp_len = max(1, int(self.loss_mask[idx].sum(dim=1).max()))
        patches = self.video_grid_thw.prod(dim=1).tolist()  # (N,) rows of pixel_values_videos per sequence
        starts = [sum(patches[:i]) for i in range(len(patches))]
        pix = torch.cat([self.pixel_values_videos[starts[i]: starts[i] + patches[i]] for i in rows])
        return Batch(self.input_ids[idx, :seq_len], self.attention_mask[idx, :seq_len],
                     self.mm_token_type_ids[idx, :seq_len], self.loss_mask[idx, :comp_len],
                     self.old_logp[idx, :comp_len], self.rewards[idx], [self.prompt_lens[i] for i in rows], pix,
                     self.video_grid_thw[idx], [self.versions[i] for i in rows])


def pack_micro_batches(seq_lens: list[int], budget: int | None) -> list[list[int]]:
    """Split sequences, in order, into micro-batches whose padded size (rows × longest row) fits `budget` tokens.

    A sequence longer than the budget gets a micro-batch of its own; None puts everything in one.

    >>> pack_micro_batches([10, 12, 30, 5, 5], budget=30)
    [[0, 1], [2], [3, 4]]
    """
    if budget is None:
        return [list(range(len(seq_lens)))] if seq_lens else []
    out: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i, n in enumerate(seq_lens):
        if cur and (len(cur) + 1) * max(longest, n) > budget:
            out.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        out.append(cur)
    return out


class BatchBuilder:
    def __init__(self, processor, media: MediaConfig, cache_bytes: int = 256 << 20):
        self.processor, self.media = processor, media
        self.frames = FrameCache(cache_bytes)
        self.pad_id = processor.tokenizer.pad_token_id or 0
        self.placeholders = set(vision_token_ids(processor.tokenizer))

    def _prompt_inputs(self, prompt: pb.Prompt) -> dict:
        frames = self.frames.get_for_prompt(prompt, self.media)  # reverse-time rows backwards, as the actors
        text = chat_text(self.processor, prompt.question, list(prompt.options))
        return self.processor(text=[text], videos=[frames], return_tensors="pt", do_resize=False,
                              do_sample_frames=False)

    def build(self, groups: list[pb.ScoredGroup]) -> tuple[Batch, int]:
        """Returns the batch and the number of groups dropped: their prompt tokens differ from what the sampler
        saw, or a completion holds a vision placeholder token (the model would read it as a frame slot; samplers
        are told never to emit one, see services/rollout/engine.py, but a group from elsewhere might)."""
        rows, pix, grids, mismatched = [], [], [], 0
        for g in groups:
            enc = self._prompt_inputs(g.prompt)
            prompt_ids = enc["input_ids"][0].tolist()
            if g.completions and list(g.completions[0].prompt_token_ids) not in ([], prompt_ids):
                mismatched += 1
                continue
            if any(self.placeholders.intersection(c.completion_token_ids) for c in g.completions):
                mismatched += 1
                continue
            for c, r in zip(g.completions, g.rewards, strict=True):
                rows.append((prompt_ids, list(c.completion_token_ids), list(c.logprobs), r, g.policy_version,
                             enc["mm_token_type_ids"][0]))
                pix.append(enc["pixel_values_videos"])
                grids.append(enc["video_grid_thw"])
        if not rows:
            raise ValueError("no usable group in batch")
        n, seq_len = len(rows), max(len(p) + len(c) for p, c, *_ in rows)
        mm_types = torch.zeros((n, seq_len), dtype=torch.long)
        comp_len = max(1, max(len(c) for _, c, *_ in rows))
        input_ids = torch.full((n, seq_len), self.pad_id, dtype=torch.long)
        attention = torch.zeros((n, seq_len), dtype=torch.long)
        loss_mask = torch.zeros((n, comp_len))
        old_logp = torch.zeros((n, comp_len))
        for i, (p, c, lp, _, _, types) in enumerate(rows):
            input_ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            mm_types[i, : len(p)] = types
            attention[i, : len(p) + len(c)] = 1
            loss_mask[i, : len(c)] = 1
            old_logp[i, : len(c)] = torch.tensor(lp)
        batch = Batch(input_ids, attention, mm_types, loss_mask, old_logp,
                      torch.tensor([row[3] for row in rows], dtype=torch.float32), [len(p) for p, *_ in rows],
                      torch.cat(pix), torch.cat(grids), [row[4] for row in rows])
        return batch, mismatched


def completion_logp(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Log-prob of each completion token: logits (N, L, V) -> (N, T), zero where loss_mask is 0."""
    n, t = batch.loss_mask.shape
    out = torch.zeros((n, t), dtype=torch.float32, device=logits.device)  # bf16 logits: log-probs in fp32
    for i, p in enumerate(batch.prompt_lens):
        k = int(batch.loss_mask[i].sum())
        if k == 0:
            continue
        # the logit at position j predicts token j+1
        step_logits = logits[i, p - 1 : p - 1 + k].float()
        targets = batch.input_ids[i, p : p + k].to(logits.device)
        out[i, :k] = torch.log_softmax(step_logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    return out
