"""The one way the learner builds a trainable model under DeepSpeed and writes it out, shared by GRPO
(services/learner/engine.py) and CoT-SFT (services/learner/sft.py): the process group, the model, the DeepSpeed
engine, and full weights gathered across ranks.

ZeRO-3 partitions parameters: gathering them is collective, so every rank calls `full_state_dict` and
`save_model_dir`; only rank 0 writes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from services.common.processes import free_port
from services.common.torch_ext import clear_stale_build_locks

# Files of a model directory that are not weights; every written model directory carries them, so that a fresh
# engine can load it. `NOT_COPIED` are facts about the source directory, not about a new one.
NON_WEIGHT_FILES = ("*.json", "*.jinja", "*.txt", "*.model")
NOT_COPIED = frozenset({"build_info.json", "sft_info.json"})


_OWN_GROUP = "VIDEORL_ONE_RANK_GROUP"  # set with the launcher variables when init_process_group wrote them itself


def init_process_group() -> None:
    """Join the launcher's process group (torchrun/deepspeed set RANK, WORLD_SIZE, ...), or make a one-rank group.

    A one-rank group rendezvous through a file, not a TCPStore: the store's server would listen on every
    interface whatever MASTER_ADDR says, and a local run keeps every socket on loopback.
    """
    import deepspeed

    if torch.distributed.is_initialized():
        return
    clear_stale_build_locks()  # DeepSpeed compiles or loads its CPU comm op here; a stale lock would hang it
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    # A launcher's variables, not ones this function wrote earlier in this process (or in the parent a Ray worker
    # inherited them from, as in a test session): those would send a one-rank group through a TCPStore on '::'.
    if "WORLD_SIZE" in os.environ and os.environ.get(_OWN_GROUP) != "1":
        deepspeed.init_distributed(dist_backend=backend)
        return
    for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                 (_OWN_GROUP, "1")):
        os.environ[k] = v
    if backend == "gloo" and (loopback := _loopback_interface()):
        # Gloo binds a listener for each group it creates at the address of the machine's hostname unless told an
        # interface. One rank needs no network at all: keep it on loopback.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
    os.environ.setdefault("MASTER_PORT", str(free_port()))  # read by some DeepSpeed code paths; nothing binds it
    rendezvous = Path(tempfile.mkdtemp(prefix="videorl-pg-")) / "store"
    deepspeed.init_distributed(dist_backend=backend, init_method=f"file://{rendezvous}", rank=0, world_size=1)


def _loopback_interface() -> str:
    """The name of this machine's loopback interface ('lo' on Linux), or '' if there is none."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address == "127.0.0.1" for a in addrs):
            return name
    return ""


def load_model(model_dir: Path):
    """The model of `model_dir` in fp32 (the learner trains in fp32 on CPU: bf16 is 10-30x slower there)."""
    from transformers import Qwen2VLForConditionalGeneration

    return Qwen2VLForConditionalGeneration.from_pretrained(str(model_dir), dtype=torch.float32)


def vision_parameters(model) -> list[torch.nn.Parameter]:
    """The vision tower's parameters (Qwen2-VL keeps it under `model.visual`, or `visual` in older transformers)."""
    tower = getattr(getattr(model, "model", model), "visual", None) or getattr(model, "visual", None)
    if tower is None:
        raise ValueError(f"{type(model).__name__} has no vision tower named `visual`")
    return list(tower.parameters())


@dataclass(frozen=True)
class TrainSpec:
    """What the DeepSpeed engine is built with (GRPO's and SFT's configs each map onto it)."""

    micro_batch_size: int       # nominal sequences per micro-batch (DeepSpeed's bookkeeping; we accumulate by hand)
    lr: float
    weight_decay: float
    grad_clip: float
    zero_stage: int
    freeze_vision: bool


def build_engine(model_dir: Path, spec: TrainSpec):
    """(DeepSpeed engine, its optimizer) for the model of `model_dir`, in this process's group (made if needed).

    fp32 with torch's AdamW: DeepSpeedCPUAdam would compile a C++ op for minutes on first use. Gradient
    accumulation is by hand (one boundary per update), since the number of micro-batches varies per step.
    """
    import deepspeed

    init_process_group()
    model = load_model(model_dir)
    if spec.freeze_vision:
        for p in vision_parameters(model):
            p.requires_grad_(False)
    ds_config = {
        "train_micro_batch_size_per_gpu": spec.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": spec.grad_clip,
        "zero_optimization": {"stage": spec.zero_stage},
        "optimizer": {"type": "AdamW",
                      "params": {"lr": spec.lr, "weight_decay": spec.weight_decay, "torch_adam": True}},
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, optimizer, *_ = deepspeed.initialize(model=model, model_parameters=trainable, config=ds_config)
    return engine, optimizer


@contextmanager
def gathered(module, zero_stage: int) -> Iterator:
    """`module` (a transformers model) with its full parameters for the block (ZeRO-3 gathers them, collectively
    on every rank)."""
    if zero_stage != 3:
        yield module
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        yield module


def full_state_dict(engine, zero_stage: int) -> dict[str, torch.Tensor]:
    """Every weight of the engine's model as CPU tensors (every rank calls it)."""
    with gathered(engine.module, zero_stage) as module:
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def save_model_dir(engine, zero_stage: int, source_dir: Path, out_dir: Path) -> None:
    """Write the engine's model as a complete model directory into `out_dir`: safetensors, plus the config,
    tokenizer and processor files of `source_dir`. Every rank calls it; rank 0 writes."""
    main = engine.global_rank == 0
    with gathered(engine.module, zero_stage) as module:
        module.save_pretrained(str(out_dir), safe_serialization=True, is_main_process=main)
    for pattern in NON_WEIGHT_FILES if main else ():
        for f in Path(source_dir).glob(pattern):
            if f.name not in NOT_COPIED and not (Path(out_dir) / f.name).exists():
                shutil.copy2(f, Path(out_dir) / f.name)
