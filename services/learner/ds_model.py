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


@dataclass(frozen=True)
class GroupSpec:
    """One rank's place in a learner group of Ray actors (rlctl/local.py forms it): rank 0's address and port for
    the rendezvous, and this rank's own address (the interface gloo listens on)."""

    rank: int
    world_size: int
    master_addr: str
    master_port: int
    own_addr: str = "127.0.0.1"


def init_process_group(group: GroupSpec | None = None) -> None:
    """Join `group`, else the launcher's process group (torchrun/deepspeed set RANK, WORLD_SIZE, ...), else make a
    one-rank group. NCCL on GPU, gloo on CPU.

    A one-rank group rendezvous through a file, not a TCPStore: the store's server would listen on every
    interface whatever MASTER_ADDR says, and a local run keeps every socket on loopback.
    """
    import deepspeed

    if torch.distributed.is_initialized():
        return
    clear_stale_build_locks()  # DeepSpeed compiles or loads its CPU comm op here; a stale lock would hang it
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if group is not None:
        # Ray gives each rank its own GPU (CUDA_VISIBLE_DEVICES), so every rank's device is its local 0.
        _set_env(RANK=group.rank, LOCAL_RANK=0, WORLD_SIZE=group.world_size, MASTER_ADDR=group.master_addr,
                 MASTER_PORT=group.master_port, **{_OWN_GROUP: 1})
        if backend == "gloo" and (ifname := interface_of(group.own_addr)):
            os.environ["GLOO_SOCKET_IFNAME"] = ifname  # else gloo listens at the hostname's address
        deepspeed.init_distributed(dist_backend=backend, init_method=f"tcp://{group.master_addr}:{group.master_port}",
                                   rank=group.rank, world_size=group.world_size)
        return
    # A launcher's variables, not ones this function wrote earlier in this process (or in the parent a Ray worker
    # inherited them from, as in a test session): those would send a one-rank group through a TCPStore on '::'.
    if "WORLD_SIZE" in os.environ and os.environ.get(_OWN_GROUP) != "1":
        deepspeed.init_distributed(dist_backend=backend)
        return
    _set_env(RANK=0, LOCAL_RANK=0, WORLD_SIZE=1, MASTER_ADDR="127.0.0.1", **{_OWN_GROUP: 1})
    if backend == "gloo" and (loopback := interface_of("127.0.0.1")):
        # Gloo binds a listener for each group it creates at the address of the machine's hostname unless told an
        # interface. One rank needs no network at all: keep it on loopback.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
    os.environ.setdefault("MASTER_PORT", str(free_port()))  # read by some DeepSpeed code paths; nothing binds it
    rendezvous = Path(tempfile.mkdtemp(prefix="videorl-pg-")) / "store"
    deepspeed.init_distributed(dist_backend=backend, init_method=f"file://{rendezvous}", rank=0, world_size=1)


def _set_env(**values: object) -> None:
    for k, v in values.items():
        os.environ[k] = str(v)


def interface_of(address: str) -> str:
    """The name of the network interface holding `address` ('lo' for 127.0.0.1 on Linux), or '' if none does."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address == address for a in addrs):
            return name
    return ""


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_model(model_dir: Path, dtype: str = "float32"):
    """The model of `model_dir` in `dtype`. Under ZeRO-3 call it inside `zero3_loading` so that each rank loads
    only its partition."""
    from transformers import AutoModelForImageTextToText

    # the class the directory's config names: Qwen2-VL, Qwen2.5-VL, ...
    return AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=_DTYPES[dtype])


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
    dtype: str = "float32"                  # float32 | bfloat16
    gradient_checkpointing: bool = False
    offload_optimizer: bool = False         # ZeRO-Offload: optimizer states in CPU memory (stage 2/3, GPU)
    gpu: bool = False


def ds_config(spec: TrainSpec) -> dict:
    """The DeepSpeed config of a training engine.

    Gradient accumulation is by hand (one boundary per update), since the number of micro-batches varies per step.
    On CPU, torch's AdamW: DeepSpeedCPUAdam would compile a C++ op for minutes on first use; on GPU DeepSpeed picks
    its fused Adam, or its CPU Adam when the optimizer is offloaded.
    """
    zero: dict = {"stage": spec.zero_stage}
    if spec.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if spec.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False  # publishing gathers module by module instead
    adam: dict = {"lr": spec.lr, "weight_decay": spec.weight_decay}
    if not spec.gpu:
        adam["torch_adam"] = True
    return {
        "train_micro_batch_size_per_gpu": spec.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": spec.grad_clip,
        "zero_optimization": zero,
        "optimizer": {"type": "AdamW", "params": adam},
        "bf16": {"enabled": spec.dtype == "bfloat16"},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,
    }


def reference_ds_config(spec: TrainSpec) -> dict:
    """The DeepSpeed config of the frozen KL reference under ZeRO-3: partitioned like the policy, no optimizer."""
    return {"train_micro_batch_size_per_gpu": spec.micro_batch_size, "zero_optimization": {"stage": 3},
            "bf16": {"enabled": spec.dtype == "bfloat16"}, "steps_per_print": 10**9}


@contextmanager
def zero3_loading(config: dict) -> Iterator[None]:
    """Within it, transformers' from_pretrained partitions a ZeRO-3 model as it loads (each rank holds its share,
    never the whole model); outside ZeRO-3 it does nothing."""
    if config["zero_optimization"]["stage"] != 3:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig

    marker = HfDeepSpeedConfig(config)  # transformers looks for a live one (a weak reference) while loading
    try:
        yield
    finally:
        del marker


def build_engine(model_dir: Path, spec: TrainSpec, group: GroupSpec | None = None):
    """(DeepSpeed engine, its optimizer) for the model of `model_dir`, in this process's group (made if needed)."""
    import deepspeed

    init_process_group(group)
    config = ds_config(spec)
    with zero3_loading(config):
        model = load_model(model_dir, spec.dtype)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if spec.freeze_vision:
        for p in vision_parameters(model):
            p.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, optimizer, *_ = deepspeed.initialize(model=model, model_parameters=trainable, config=config)
    return engine, optimizer


def build_reference(model_dir: Path, spec: TrainSpec, device):
    """The frozen KL reference: under ZeRO-3 a DeepSpeed engine partitioned like the policy (its parameters gathered
    layer by layer in forward), else a plain copy on every rank."""
    if spec.zero_stage != 3:
        return load_model(model_dir, spec.dtype).to(device).eval().requires_grad_(False)
    import deepspeed

    config = reference_ds_config(spec)
    with zero3_loading(config):
        model = load_model(model_dir, spec.dtype).eval().requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()   # DeepSpeed's eval() returns None, not the engine
    return engine


def full_state_dict(engine, zero_stage: int, on_every_rank: bool = True) -> dict[str, torch.Tensor]:
    """Every weight of the engine's model as CPU tensors, named as its state_dict names them. Every rank calls it;
    with `on_every_rank` False only rank 0 keeps the tensors (the others return {}).

    Under ZeRO-3 the parameters are gathered one module at a time (collectively), so no device ever holds more
    than one module's full weights beyond its own partition."""
    module = engine.module
    if zero_stage != 3:
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    import deepspeed

    keep = on_every_rank or engine.global_rank == 0
    params = dict(module.named_parameters(remove_duplicate=False))   # tied weights appear under each name
    tensors = {**dict(module.named_buffers(remove_duplicate=False)), **params}
    by_module: dict[str, list[str]] = {}
    for name in module.state_dict():  # under ZeRO-3 its values are placeholders; its keys are the names to write
        by_module.setdefault(name.rpartition(".")[0], []).append(name)
    out: dict[str, torch.Tensor] = {}
    for names in by_module.values():
        with deepspeed.zero.GatheredParameters([params[n] for n in names if n in params], modifier_rank=None):
            if keep:
                out.update({n: tensors[n].detach().cpu().clone() for n in names})
    return out


def save_model_dir(engine, zero_stage: int, source_dir: Path, out_dir: Path,
                   state: dict[str, torch.Tensor] | None = None) -> None:
    """Write the engine's model as a complete model directory into `out_dir`: safetensors, plus the config,
    tokenizer and processor files of `source_dir`. Every rank calls it (ZeRO-3 gathers collectively); rank 0
    writes. Given `state` (a full_state_dict taken earlier), rank 0 alone calls it and writes that instead."""
    main = engine.global_rank == 0
    if state is None and zero_stage == 3:
        state = full_state_dict(engine, zero_stage, on_every_rank=False)
    if main:
        engine.module.save_pretrained(str(out_dir), state_dict=state, safe_serialization=True)
    for pattern in NON_WEIGHT_FILES if main else ():
        for f in Path(source_dir).glob(pattern):
            if f.name not in NOT_COPIED and not (Path(out_dir) / f.name).exists():
                shutil.copy2(f, Path(out_dir) / f.name)
