"""The learner's model under DeepSpeed: GRPO steps on batches, and full weights for publishing.

On CPU it trains in fp32 over gloo (bf16 is 10-30x slower on CPUs without AMX) with torch's AdamW
(DeepSpeedCPUAdam would compile a C++ op for minutes on first use).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from services.common.config import LearnerConfig
from services.common.redis_server import free_port
from services.learner.batch import Batch, completion_logp
from services.learner.grpo import compute_advantages, policy_loss

# Files of a model directory that are not weights; each published version carries them so that it is
# a complete model directory a fresh engine can load.
_NON_WEIGHT_FILES = ("*.json", "*.jinja", "*.txt", "*.model")


def init_process_group() -> None:
    """Join the launcher's process group (torchrun/deepspeed set RANK, WORLD_SIZE, ...), or make a one-rank group.

    A one-rank group rendezvous through a file, not a TCPStore: the store's server would listen on every
    interface whatever MASTER_ADDR says, and a local run keeps every socket on loopback.
    """
    import deepspeed

    if torch.distributed.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "WORLD_SIZE" in os.environ:
        deepspeed.init_distributed(dist_backend=backend)
        return
    for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ[k] = v
    os.environ.setdefault("MASTER_PORT", str(free_port()))  # read by some DeepSpeed code paths; nothing binds it
    rendezvous = Path(tempfile.mkdtemp(prefix="videorl-pg-")) / "store"
    deepspeed.init_distributed(dist_backend=backend, init_method=f"file://{rendezvous}", rank=0, world_size=1)


class LearnerEngine:
    def __init__(self, model_dir: Path, cfg: LearnerConfig, batch_size: int):
        import deepspeed
        from transformers import Qwen2VLForConditionalGeneration
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the run's own progress view reports publishing
        init_process_group()
        self.cfg, self.model_dir = cfg, Path(model_dir)
        model = Qwen2VLForConditionalGeneration.from_pretrained(str(model_dir), dtype=torch.float32)
        ds_config = {
            "train_batch_size": batch_size,
            "train_micro_batch_size_per_gpu": batch_size,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": 1.0,
            "zero_optimization": {"stage": cfg.zero_stage},
            "optimizer": {"type": "AdamW", "params": {"lr": cfg.lr, "weight_decay": 0.0, "torch_adam": True}},
            "bf16": {"enabled": False},
            "fp16": {"enabled": False},
            "steps_per_print": 10**9,
        }
        self.engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
        self.device = self.engine.device

    def train_step(self, batch: Batch, group_size: int) -> dict[str, float]:
        """One GRPO update on a batch of whole groups; returns its metrics."""
        self.engine.train()
        dev = self.device
        out = self.engine(input_ids=batch.input_ids.to(dev), attention_mask=batch.attention_mask.to(dev),
                          mm_token_type_ids=batch.mm_token_type_ids.to(dev),
                          pixel_values_videos=batch.pixel_values_videos.to(dev),
                          video_grid_thw=batch.video_grid_thw.to(dev))
        logp = completion_logp(out.logits, batch)                                   # (N, T)
        adv = compute_advantages(batch.rewards, group_size, mode=self.cfg.advantage)  # (N,)
        mask = batch.loss_mask.to(dev)
        loss, metrics = policy_loss(logp, batch.old_logp.to(dev), adv.to(dev), mask,
                                    clip_low=self.cfg.clip_eps, clip_high=self.cfg.clip_eps)
        self.engine.backward(loss)
        self.engine.step()
        with torch.no_grad():
            diff = ((logp.detach() - batch.old_logp.to(dev)).abs() * mask).sum() / mask.sum().clamp(min=1)
        finite = batch.rewards[torch.isfinite(batch.rewards)]
        return {"loss": float(loss.detach()), "adv_abs_mean": float(adv.abs().mean()),
                "reward_mean": float(finite.mean()) if finite.numel() else float("nan"),
                "logp_diff_vs_behaviour": float(diff), **metrics}

    def save_weights(self, out_dir: Path) -> None:
        """Write a complete model directory (config, tokenizer, processor, safetensors) into out_dir."""
        t0 = time.perf_counter()
        module = self.engine.module
        if self.cfg.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                module.save_pretrained(str(out_dir), safe_serialization=True)
        else:
            module.save_pretrained(str(out_dir), safe_serialization=True)
        for pattern in _NON_WEIGHT_FILES:
            for f in self.model_dir.glob(pattern):
                if not (out_dir / f.name).exists():
                    shutil.copy2(f, out_dir / f.name)
        self.save_seconds = time.perf_counter() - t0
