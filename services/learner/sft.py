"""CoT-SFT cold start: teacher-forced training on each row's worked response, before GRPO.

Invariants this module keeps:
- The model sees what the rollout actors will show it: the prompt is `prompts.chat_text` rendered by the model's
  own chat template, and the frames come from `FrameCache.get_for_prompt(row.to_prompt(...), cfg.media)` (the
  actors' call: same sampling, reverse-time rows played backwards), encoded as the learner's BatchBuilder encodes
  them. So SFT, rollouts and GRPO updates all see identical prompt tokens and pixels.
- The response is `response_text(row)`: `<think>{reasoning}</think><answer>{answer}</answer>` when the row has a
  reasoning, else `<answer>{answer}</answer>` (an MCQ answer is its letter), tokenized on its own (as vLLM emits
  it after the prompt) and followed by the tokenizer's eos (`<|im_end|>`, where generation stops).
- Loss only on the response: prompt and padding positions carry label -100. A step's loss is the mean over all
  response tokens of its batch, however the batch is split into micro-batches.
- Bad input never stops training: malformed JSONL rows fail before training starts with the file, line and field
  (dataset.load_rows); a row whose video cannot be sampled (MediaError) is skipped, counted by reason, and not
  tried again.
- The output is a complete model directory (weights as safetensors, config, tokenizer, processor, chat template,
  generation config) that `rlctl run --set model.path=DIR` starts from; it appears only when complete (written to
  a sibling temp dir, then renamed). Its `sft_info.json` holds the counts and loss summary, `sft_log.jsonl` the
  loss curve.

Why DeepSpeed rather than a plain torch loop: the same setup as the GRPO learner (services/learner/engine.py:
process group, ZeRO stage from the config, fp32 on CPU, torch's AdamW), so an SFT fits wherever the GRPO of the
same model fits (ZeRO-2/3 over several ranks), and saves its weights the same way. Under several ranks (torchrun)
each rank takes every world-th row of the stream and DeepSpeed averages the ranks' gradients.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from services.common.atomic import fsync_dir, fsync_tree
from services.common.config import MediaConfig, SFTConfig
from services.common.dataset import DatasetError, Row, load_rows, rows_with_reverse
from services.common.media import FrameCache, MediaError
from services.common.prompts import chat_text
from services.common.records import SFTSummary

if TYPE_CHECKING:
    from services.learner.tracking import Tracker

IGNORE = -100  # label of a position that carries no loss
# Files of a model directory besides the weights and config that save_pretrained writes (as engine.py copies them).


def response_text(row: Row) -> str:
    """What the model is taught to write for `row` (without the eos token).

    >>> response_text(Row("r1", "v.mp4", "mcq", "Which way?", "B", ("up", "down"), reasoning="It falls."))
    '<think>It falls.</think><answer>B</answer>'
    >>> response_text(Row("r2", "v.mp4", "numeric", "How many?", "3"))
    '<answer>3</answer>'
    """
    answer = f"<answer>{row.answer}</answer>"
    return f"<think>{row.reasoning}</think>{answer}" if row.reasoning else answer


@dataclass
class Example:
    """One encoded row: its prompt exactly as the actors build it, and the response token ids (eos included)."""

    input_ids: torch.Tensor             # (P,) prompt token ids
    mm_token_type_ids: torch.Tensor     # (P,) which prompt positions are video tokens
    pixel_values_videos: torch.Tensor   # (patches, C*tp*p*p)
    video_grid_thw: torch.Tensor        # (1, 3)
    response_ids: list[int]


def encode(processor, row: Row, frames: np.ndarray) -> Example:
    """Encode a row whose frames were sampled (the prompt as services.learner.batch.BatchBuilder encodes it)."""
    text = chat_text(processor, row.question, list(row.options))
    enc = processor(text=[text], videos=[frames], return_tensors="pt", do_resize=False, do_sample_frames=False)
    tok = processor.tokenizer
    response = tok(response_text(row), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return Example(enc["input_ids"][0], enc["mm_token_type_ids"][0], enc["pixel_values_videos"],
                   enc["video_grid_thw"], response)


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt + response; labels are the response tokens, IGNORE elsewhere (prompt and padding)."""
    seqs = [torch.cat([e.input_ids, torch.tensor(e.response_ids, dtype=e.input_ids.dtype)]) for e in examples]
    n, width = len(seqs), max(len(s) for s in seqs)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    mm_token_type_ids = torch.zeros((n, width), dtype=examples[0].mm_token_type_ids.dtype)
    for i, (e, seq) in enumerate(zip(examples, seqs, strict=True)):
        p = len(e.input_ids)
        input_ids[i, : len(seq)] = seq
        labels[i, p : len(seq)] = seq[p:]
        attention_mask[i, : len(seq)] = 1
        mm_token_type_ids[i, :p] = e.mm_token_type_ids
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "mm_token_type_ids": mm_token_type_ids,
            "pixel_values_videos": torch.cat([e.pixel_values_videos for e in examples]),
            "video_grid_thw": torch.cat([e.video_grid_thw for e in examples])}


def response_loss_sum(model, batch: dict[str, torch.Tensor], device) -> tuple[torch.Tensor, int]:
    """(sum of the response tokens' negative log-likelihoods, number of response tokens)."""
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits  # (n, L, V)
    labels = batch["labels"][:, 1:].to(device)  # the logit at position j predicts token j+1
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(),
                                            ignore_index=IGNORE, reduction="sum")
    return nll, int((labels != IGNORE).sum())


class RowStream:
    """Encoded examples, epoch after epoch in a seeded order; rows whose video cannot be sampled are skipped."""

    def __init__(self, rows: list[Row], processor, media: MediaConfig, seed: int, rank: int = 0, world: int = 1):
        self.rows, self.processor, self.media = rows, processor, media
        self.seed, self.rank, self.world = seed, rank, world
        self.frames = FrameCache(256 << 20)
        self.skipped: Counter[str] = Counter()  # MediaError reason -> rows
        self.bad: set[str] = set()
        self._it = self._examples()

    def _order(self) -> Iterator[Row]:
        for epoch in range(10**9):
            for i in np.random.default_rng([self.seed, epoch]).permutation(len(self.rows)).tolist():
                yield self.rows[i]

    def _examples(self) -> Iterator[Example]:
        for k, row in enumerate(self._order()):
            if k % self.world != self.rank or row.id in self.bad:
                continue
            try:
                frames = self.frames.get_for_prompt(row.to_prompt(row.id), self.media)
            except MediaError as e:
                self.bad.add(row.id)
                self.skipped[e.reason] += 1
                if len(self.bad) == len(self.rows):
                    raise DatasetError(f"no row's video could be sampled (skipped: {dict(self.skipped)})") from e
                continue
            yield encode(self.processor, row, frames)

    def take(self, n: int) -> list[Example]:
        return [next(self._it) for _ in range(n)]


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak lr before optimizer step `step` (0-based): linear warm-up, then constant or cosine.

    >>> [round(lr_factor(s, 4, 2, "cosine"), 3) for s in range(4)]
    [0.5, 1.0, 1.0, 0.0]
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup + 1:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup - 1)))


def load_sft_rows(paths: list[Path]) -> list[Row]:
    """Rows of every file, reverse-time variants included; ids must be unique over all files."""
    rows: list[Row] = []
    where: dict[str, Path] = {}
    for path in paths:
        for row in rows_with_reverse(load_rows(path)):
            if row.id in where:
                raise DatasetError(f"{path}: field 'id': {row.id!r} is also in {where[row.id]}")
            where[row.id] = path
            rows.append(row)
    return rows


def total_steps(cfg: SFTConfig, n_rows: int) -> int:
    return cfg.steps or max(1, math.ceil(cfg.epochs * n_rows / cfg.batch_size))


def train_sft(cfg: SFTConfig, media: MediaConfig, model_dir: Path, data: list[Path], out_dir: Path, seed: int = 0,
              progress: bool = True, tracker: Callable[[], Tracker] | None = None) -> SFTSummary:
    """Train the model in `model_dir` on `data` and write the result to `out_dir`; returns the summary.
    `tracker` opens the experiment trackers (tracking.backends), on rank 0 only: every step's loss goes to them."""
    out_dir = Path(out_dir).resolve()
    if (out_dir / "config.json").exists():
        raise FileExistsError(f"{out_dir} already holds a model; remove it or choose another output dir")
    rows = load_sft_rows(data)  # bad rows fail here, before any model is loaded
    trainer = _Trainer(cfg, Path(model_dir), total_steps(cfg, len(rows)), seed)
    stream = RowStream(rows, trainer.processor, media, seed, trainer.rank, trainer.world)
    per_rank = max(1, cfg.batch_size // trainer.world)
    log: list[dict[str, Any]] = []  # step 1, then every log_every steps: the mean loss since the previous record
    window: list[float] = []
    start = time.perf_counter()
    track = tracker() if tracker is not None and trainer.rank == 0 else None
    with _progress(trainer.steps, progress and trainer.rank == 0) as show, _closing(track):
        for step in range(trainer.steps):
            loss, tokens = trainer.step(stream.take(per_rank), step)
            window.append(loss)
            if track is not None:
                track.scalars(step + 1, {"sft/loss": loss, "sft/lr": trainer.lr(step), "sft/tokens": tokens,
                                         "sft/skipped_rows": sum(stream.skipped.values())})
            record = None
            if step == 0 or (step + 1) % cfg.log_every == 0 or step + 1 == trainer.steps:
                record = {"step": step + 1, "loss": round(sum(window) / len(window), 5), "lr": trainer.lr(step),
                          "skipped_rows": sum(stream.skipped.values()),
                          "seconds": round(time.perf_counter() - start, 2)}
                log.append(record)
                window = []
            show(loss, sum(stream.skipped.values()), record)
    summary = SFTSummary(model_dir=str(model_dir), data=[str(p) for p in data], rows=len(rows),
                         steps=trainer.steps, batch_size=cfg.batch_size, world_size=trainer.world,
                         skipped_rows=dict(stream.skipped), loss_first=log[0]["loss"], loss_last=log[-1]["loss"],
                         seconds=round(time.perf_counter() - start, 2), out=str(out_dir),
                         config=cfg.model_dump(mode="json"))
    trainer.save(out_dir, summary, log)
    return summary


class _Trainer:
    """The model under DeepSpeed (as LearnerEngine sets it up), one `step` per optimizer update."""

    def __init__(self, cfg: SFTConfig, model_dir: Path, steps: int, seed: int):
        from transformers import AutoProcessor
        from transformers.utils import logging as hf_logging

        from services.learner.ds_model import TrainSpec, build_engine

        hf_logging.disable_progress_bar()
        self.cfg, self.model_dir, self.steps = cfg, model_dir, steps
        self.processor = AutoProcessor.from_pretrained(str(model_dir))
        self.pad_id = self.processor.tokenizer.pad_token_id or 0
        torch.manual_seed(seed)
        self.engine, self.optimizer = build_engine(model_dir, TrainSpec(
            micro_batch_size=cfg.micro_batch_size or cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
            grad_clip=cfg.grad_clip, zero_stage=cfg.zero_stage, freeze_vision=cfg.freeze_vision))
        self.device = self.engine.device
        self.rank, self.world = self.engine.global_rank, self.engine.world_size

    def lr(self, step: int) -> float:
        return self.cfg.lr * lr_factor(step, self.steps, self.cfg.warmup_steps, self.cfg.schedule)

    def step(self, examples: list[Example], step: int) -> tuple[float, int]:
        """One optimizer update on these examples; returns (mean response-token loss, response tokens)."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(step)
        self.engine.train()
        size = self.cfg.micro_batch_size or len(examples)
        micro = [collate(examples[i : i + size], self.pad_id) for i in range(0, len(examples), size)]
        # Position 0 is always prompt (IGNORE), so every response label is predicted by the position before it.
        total = max(1, sum(int((m["labels"] != IGNORE).sum()) for m in micro))
        loss_sum = 0.0
        for j, batch in enumerate(micro):
            self.engine.set_gradient_accumulation_boundary(j == len(micro) - 1)
            nll, _ = response_loss_sum(self.engine, batch, self.device)
            self.engine.backward(nll / total, scale_wrt_gas=False)
            loss_sum += float(nll.detach())
        self.engine.step()
        return loss_sum / total, total

    def save(self, out_dir: Path, summary: SFTSummary, log: list[dict[str, Any]]) -> None:
        """Every rank calls this (ZeRO-3 gathers collectively); rank 0 writes a temp dir and renames it into place."""
        from services.learner.ds_model import save_model_dir

        tmp = out_dir.with_name(f".{out_dir.name}.partial")  # one name for every rank (only rank 0 writes)
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.parent.mkdir(parents=True, exist_ok=True)
        save_model_dir(self.engine, self.cfg.zero_stage, self.model_dir, tmp)
        if self.rank != 0:
            return
        (tmp / "sft_info.json").write_text(summary.model_dump_json(indent=1))
        (tmp / "sft_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
        fsync_tree(tmp)
        if out_dir.exists():  # an empty or half-written dir (a complete one was refused up front)
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
        fsync_dir(out_dir.parent)


@contextmanager
def _closing(tracker: Tracker | None) -> Iterator[None]:
    try:
        yield
    finally:
        if tracker is not None:
            tracker.close()


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[float, int, dict | None], None]]:
    """A rich progress bar on stderr showing the loss (an average over the last ~10 steps) and the skipped rows;
    where stderr is no terminal (a log file), one line per log record instead."""
    from rich.console import Console

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        def line(loss: float, skipped: int, record: dict | None) -> None:
            if enabled and record is not None:
                console.print(f"sft step {record['step']}/{total} loss {record['loss']:.4f} lr {record['lr']:.3g} "
                              f"skipped rows {skipped}", soft_wrap=True)

        yield line
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("sft"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("loss {task.fields[loss]}  skipped rows {task.fields[skipped]}"))
    with Progress(*columns, console=console) as bar:
        job = bar.add_task("sft", total=total, loss="-", skipped=0)
        ema: list[float] = []

        def show(loss: float, skipped: int, record: dict | None) -> None:
            ema.append(loss if not ema else 0.9 * ema[-1] + 0.1 * loss)
            bar.update(job, advance=1, loss=f"{ema[-1]:.4f}", skipped=skipped)

        yield show
