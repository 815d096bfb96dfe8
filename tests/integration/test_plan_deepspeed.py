"""What `rlctl plan` claims about fp32 training, measured on DeepSpeed itself: in one process on CPU, a small model
under ZeRO-2 and ZeRO-3 in bf16 and fp32 takes one optimizer step, and the bytes DeepSpeed then keeps per parameter
(the parameters, the fp32 master partition, a copy even in fp32, and Adam's two states) are the plan's
parameters and optimizer states, less the one gathered layer ZeRO-3 holds only inside a forward or backward pass."""

from __future__ import annotations

import pytest
import torch

from rlctl.model_arch import ParamCount
from rlctl.plan import model_states
from services.learner.ds_model import TrainSpec, ds_config, init_process_group

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _storage_bytes(tensors: list[torch.Tensor], seen: set[int]) -> int:
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        if t.numel() and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def _kept(engine, zero_stage: int) -> tuple[int, int]:
    """(bytes of parameters, bytes of master copy and Adam states) DeepSpeed's optimizer holds after a step; a master
    partition that is the parameters' own storage counts once, as parameters."""
    opt, seen = engine.optimizer, set()
    if zero_stage == 3:
        params = _storage_bytes(list(opt.fp16_partitioned_groups_flat), seen)
        master = list(opt.fp32_partitioned_groups_flat)
    else:
        params = _storage_bytes(list(opt.bit16_groups_flat), seen)
        master = list(opt.single_partition_of_fp32_groups)
    states = [t for s in opt.optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    return params, _storage_bytes(master + states, seen)


@pytest.mark.parametrize("zero_stage", [2, 3])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_deepspeed_keeps_what_the_plan_counts_in_bf16_and_fp32(zero_stage, dtype):
    import deepspeed

    init_process_group()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 512)).to(
        getattr(torch, dtype))
    n = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    spec = TrainSpec(micro_batch_size=1, lr=1e-3, weight_decay=0.0, grad_clip=1.0, zero_stage=zero_stage,
                     freeze_vision=False, dtype=dtype)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()), config=ds_config(spec))
    loss = engine(torch.randn(2, 512, dtype=getattr(torch, dtype))).float().pow(2).mean()
    engine.backward(loss)
    engine.step()
    params, optimizer = _kept(engine, zero_stage)
    plan = model_states(ParamCount(text=n, vision=0, largest_layer=largest), zero_stage, 1, False, dtype)
    gathered = (2 if dtype == "bfloat16" else 4) * largest if zero_stage == 3 else 0
    assert params == pytest.approx(plan.params - gathered, rel=1e-3)   # flat buffers are padded a little
    assert optimizer == pytest.approx(plan.optimizer, rel=1e-3)
    per_param = (params + optimizer) / n
    # bf16: 2-byte params + fp32 master + m + v; fp32: no 16-bit copy, but the master is still a copy of its own
    assert per_param == pytest.approx(14 if dtype == "bfloat16" else 16, rel=1e-3)
