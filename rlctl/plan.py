"""`rlctl plan`'s figures: whether a run's learner ranks and rollout actors fit their GPUs, from config.json alone.

Invariants (tests/unit/test_plan.py): in bf16 under ZeRO-2 and ZeRO-3 a learner rank's model states equal DeepSpeed's
own estimators (estimate_zero2/zero3_model_states_mem_needs; each learner pod is a node of one GPU); parameter counts
equal transformers' (rlctl/model_arch.py). Activations and the rollout's allowance are estimates, each formula stated
where it is computed; docs/plan.md tells the long story.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from rlctl.model_arch import ArchError, ModelShape, ParamCount, VisionShape, count_params, model_shape
from services.common.config import RunConfig

GiB = 1 << 30
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
# DeepSpeed's estimators pad CPU memory by this (their default `additional_buffer_factor`).
DS_BUFFER_FACTOR = 1.5
# A learner rank's memory besides model states and activations: CUDA context and cuBLAS workspaces (~1 GiB), NCCL's
# buffers (~0.5 GiB), ZeRO's gradient bucket (DeepSpeed's default reduce_bucket_size, 5e8 elements: 1 GB in bf16).
LEARNER_RUNTIME = 3 * GiB
# A vLLM engine's memory besides weights, KV cache and its forward pass: CUDA context, the CUDA graphs it captures,
# NCCL between its tensor-parallel workers, allocator slack.
ROLLOUT_RUNTIME = 2 * GiB
# vLLM's max_num_batched_tokens when unset for an engine of AsyncLLM.from_engine_args (usage context ENGINE: none of
# vLLM's per-GPU defaults applies): SchedulerConfig.DEFAULT_MAX_NUM_BATCHED_TOKENS.
VLLM_DEFAULT_BATCHED_TOKENS = 2048


class PlanError(ValueError):
    """A model config or run config that cannot be planned; the message says which field and why."""


# -- learner model states ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelStates:
    """One learner rank's model states on its GPU, and DeepSpeed's estimate of its pod's CPU memory."""

    params: int
    grads: int
    optimizer: int
    cpu: int

    @property
    def gpu(self) -> int:
        return self.params + self.grads + self.optimizer


def model_states(p: ParamCount, zero_stage: int, ranks: int, offload: bool, dtype: str) -> ModelStates:
    """Model states of one rank of `ranks`; P parameters, L in the largest module, N = ranks.

    bf16 is mixed-precision Adam, what DeepSpeed's estimators assume: 2-byte params, 2-byte and 4-byte gradients, a
    4-byte master copy and two 4-byte Adam states. ZeRO-2: 2P + int(18P/N); ZeRO-3: 4L + int(18P/N) (zero_init,
    params not offloaded); with the optimizer offloaded 2P, and 4L + int(2P/N). ZeRO-0/1 have no estimator: 20P, and
    4P + int(16P/N). fp32 (see `_fp32_states`) has no 16-bit copy and differs per stage."""
    total, n, big = p.total, ranks, p.largest_layer
    cpu = _ds_cpu(total, big, zero_stage, n, offload)
    if dtype == "float32":
        return _fp32_states(total, big, zero_stage, n, offload, cpu)
    if dtype not in ("bfloat16", "float16"):
        raise PlanError(f"learner.dtype: {dtype!r}; plan a concrete dtype (RunConfig.on('gpu'))")
    if zero_stage == 3:
        params = 2 * big + int(2 * total / n)       # its partition, and one gathered module
        if offload:
            return ModelStates(params, 2 * big, 0, cpu)
        grads = 2 * big + int(4 * total / n)
        return ModelStates(params, grads, 4 * big + int(18 * total / n) - params - grads, cpu)
    if zero_stage == 2:
        if offload:
            return ModelStates(2 * total, 0, 0, cpu)
        grads = int(6 * total / n)
        return ModelStates(2 * total, grads, int(18 * total / n) - grads, cpu)
    if zero_stage == 1:   # full 16-bit gradients; the fp32 gradient, master copy and Adam states partitioned
        return ModelStates(2 * total, 2 * total + int(4 * total / n), int(12 * total / n), cpu)
    return ModelStates(2 * total, 6 * total, 12 * total, cpu)


def _fp32_states(total: int, big: int, zero_stage: int, n: int, offload: bool, cpu: int) -> ModelStates:
    """fp32 training, read from DeepSpeed 0.19's optimizers: 4-byte params and gradients, no 16-bit copy, but an fp32
    master partition cloned all the same (ZeRO-1/2 always; ZeRO-3 too, as its no-copy shortcut compares a
    torch.device with a device name string and never matches) and, under ZeRO-1/2, the gradient partition flattened
    into a second one at each step. So ZeRO-2 = 4P + 20P/N and ZeRO-3 = 8L + 20P/N, against 2P + 18P/N and
    4L + 18P/N in bf16; ZeRO-0 is torch's Adam (16P). tests/integration/test_plan_deepspeed.py measures what stays
    between steps (params, master, Adam states: 16 bytes per parameter in fp32, 14 in bf16)."""
    if zero_stage == 3:
        params = 4 * big + int(4 * total / n)
        return ModelStates(params, 4 * big, 0, cpu) if offload else ModelStates(params, 4 * big + int(4 * total / n),
                                                                                int(12 * total / n), cpu)
    if zero_stage == 2:
        return ModelStates(4 * total, 0, 0, cpu) if offload else ModelStates(4 * total, int(8 * total / n),
                                                                             int(12 * total / n), cpu)
    if zero_stage == 1:
        return ModelStates(4 * total, 4 * total + int(4 * total / n), int(12 * total / n), cpu)
    return ModelStates(4 * total, 4 * total, 8 * total, cpu)


def _ds_cpu(total: int, largest: int, zero_stage: int, ranks: int, offload: bool) -> int:
    """DeepSpeed's CPU memory estimate of one learner pod (num_gpus_per_node=1, num_nodes=ranks, factor 1.5): with the
    optimizer offloaded, its states (ZeRO-2's formula grows with the total GPU count, max(4·GPUs, 16) bytes per
    parameter, as if every rank shared one host); without, room to load the model. ZeRO-0/1 as ZeRO-2."""
    f = DS_BUFFER_FACTOR
    if zero_stage == 3:
        return int(total * 16 * (1 / ranks) * f) if offload else int(largest * 4 * 1 * f)
    return int(total * max(4 * ranks, 16) * f) if offload else int(total * 4 * 1 * f)


# -- learner activations -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MicroBatch:
    tokens: int         # padded tokens (rows × max_model_len)
    rows: int           # sequences, each max_model_len long
    completion: int     # completion tokens (rows × max_new_tokens)
    patches: int        # vision patches (rows × video tokens × merge²)


def video_tokens(cfg: RunConfig, v: VisionShape) -> int:
    """LLM tokens of one prompt's video at most: max_frames / temporal_patch frame groups of max_pixels / (patch·merge)²
    tokens each, capped by what a prompt may hold (max_model_len - max_new_tokens)."""
    per_group = cfg.media.max_pixels // (v.patch * v.merge) ** 2
    groups = cfg.media.max_frames // v.temporal_patch
    return max(0, min(groups * per_group, cfg.rollout.engine.max_model_len - cfg.rollout.max_new_tokens))


def micro_batch(cfg: RunConfig, v: VisionShape) -> MicroBatch:
    """The largest micro-batch a rank trains: its share of a step (ceil(groups_per_step / ranks) × group_size
    sequences), every one max_model_len long, packed up to learner.micro_batch_tokens (a longer one alone), or all
    in one micro-batch without it."""
    length = cfg.rollout.engine.max_model_len
    seqs = math.ceil(cfg.learner.groups_per_step / cfg.learner.ranks) * cfg.group_size
    budget = cfg.learner.micro_batch_tokens
    rows = seqs if budget is None else max(1, min(seqs, budget // length))
    return MicroBatch(tokens=rows * length, rows=rows, completion=rows * min(cfg.rollout.max_new_tokens, length),
                      patches=rows * video_tokens(cfg, v) * v.merge ** 2)


def layer_bytes(hidden: int, kv_width: int, intermediate: int, heads: int, mlp_tensors: int, b: int) -> int:
    """Bytes one token (or patch) leaves saved for backward in one layer with SDPA attention (no s² matrix): two
    norms, each an fp32 copy and its b-byte output (2·(4h + b·h)); q, k, v (b·(h + 2·kv)); the rotated q, k
    (b·(h + kv)); the attention output (b·h) and its log-sum-exp (4 per head); the MLP's intermediates (b·i each:
    gate, up, act, product; fc1 and its activation without a gate)."""
    return 8 * hidden + 5 * b * hidden + 3 * b * kv_width + mlp_tensors * b * intermediate + 4 * heads


@dataclass(frozen=True)
class Activations:
    batch: MicroBatch
    with_checkpointing: int
    without_checkpointing: int


def activations(shape: ModelShape, cfg: RunConfig, b: int) -> Activations:
    """Peak activation bytes of one rank's micro-batch. Layers: `layer_bytes` × tokens × layers (text) plus × patches
    × depth (vision); with checkpointing each layer keeps only its input (b·h per token or patch) and one layer at a
    time is recomputed in full. Merger: three (tokens × merge²·width) tensors. Head, outside any checkpoint: the
    logits and their gradient (2·T·V·b) and the completions' fp32 log-softmax and its gradient (8·K·V)."""
    t, v = shape.text, shape.vision
    mb = micro_batch(cfg, v)
    text = mb.tokens * layer_bytes(t.hidden, t.kv_heads * t.head_dim, t.intermediate, t.heads, 4, b)
    vision = mb.patches * layer_bytes(v.hidden, v.hidden, v.intermediate, v.heads, 4 if v.gated_mlp else 2, b)
    merger = 3 * b * mb.patches * v.hidden
    head = 2 * mb.tokens * t.vocab * b + 8 * mb.completion * t.vocab
    full = t.layers * text + v.depth * vision
    kept = t.layers * mb.tokens * t.hidden * b + v.depth * mb.patches * v.hidden * b + max(text, vision)
    return Activations(mb, with_checkpointing=kept + merger + head, without_checkpointing=full + merger + head)


# -- components and verdicts ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    name: str
    bytes: int
    how: str


@dataclass(frozen=True)
class Component:
    """One process's memory on one of its GPUs: the items add up to `need`, judged against `budget`."""

    name: str
    items: tuple[Item, ...]
    budget: int
    budget_how: str
    notes: tuple[str, ...] = ()
    problem: str | None = None      # a reason it cannot start at all, whatever the memory

    @property
    def need(self) -> int:
        return sum(i.bytes for i in self.items)

    @property
    def margin(self) -> int:
        """Bytes to spare (negative: short by that much)."""
        return self.budget - self.need

    @property
    def fits(self) -> bool:
        return self.problem is None and self.margin >= 0


@dataclass(frozen=True)
class Plan:
    params: ParamCount
    shape: ModelShape
    components: tuple[Component, ...]   # the learner rank, the rollout actor
    learner_cpu: int                    # DeepSpeed's CPU memory estimate of one learner pod

    @property
    def fits(self) -> bool:
        return all(c.fits for c in self.components)


def parse_size(text: str) -> int:
    """Bytes of a size such as '80GiB', '141GB', '24 GiB' or '512MiB' (binary KiB..TiB, decimal KB..TB).

    >>> parse_size("80GiB"), parse_size("141GB"), parse_size("24 GiB")
    (85899345920, 141000000000, 25769803776)
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT])(i?)B\s*", text, flags=re.IGNORECASE)
    if m is None:
        raise PlanError(f"{text!r} is not a memory size: give a number and a unit, e.g. 80GiB, 141GB or '24 GiB'")
    power = "KMGT".index(m.group(2).upper()) + 1
    return int(float(m.group(1)) * (1024 if m.group(3) else 1000) ** power)


def plan_run(cfg: RunConfig, hf_config: dict, gpu_mem: int) -> Plan:
    """The plan of `cfg`, made concrete for GPUs (RunConfig.on('gpu')), with the model of `hf_config` on GPUs of
    `gpu_mem` bytes each."""
    if cfg.cluster.accelerator == "cpu":
        raise PlanError("cluster.accelerator: cpu; `rlctl plan` plans GPU runs (gpu or auto)")
    cfg = cfg.on("gpu")
    try:
        shape = model_shape(hf_config)
    except ArchError as e:
        raise PlanError(str(e)) from None
    params = count_params(shape)
    learner, cpu = learner_component(shape, params, cfg, gpu_mem)
    return Plan(params, shape, (learner, rollout_component(shape, params, cfg, gpu_mem)), cpu)


def learner_component(shape: ModelShape, p: ParamCount, cfg: RunConfig, gpu_mem: int) -> tuple[Component, int]:
    """One learner rank: its model states, the KL reference (learner.loss.kl_coef > 0), its activations and the
    runtime's own memory, against the whole GPU."""
    lc = cfg.learner
    b = DTYPE_BYTES[lc.dtype]
    ms = model_states(p, lc.zero_stage, lc.ranks, lc.offload_optimizer, lc.dtype)
    share = f"ZeRO-{lc.zero_stage}, {lc.ranks} rank(s)"
    offloaded = lc.offload_optimizer
    items = [Item("parameters", ms.params, f"{lc.dtype}; {share}"),
             Item("gradients", ms.grads, "reduced into the CPU's partition" if offloaded else share),
             Item("optimizer states", ms.optimizer, "offloaded: in CPU memory" if offloaded
                  else "fp32 master, Adam m and v" + ("" if lc.zero_stage == 0 else f"; {share}"))]
    if lc.loss.kl_coef > 0:
        ref = b * p.total // lc.ranks if lc.zero_stage == 3 else b * p.total
        items.append(Item("KL reference", ref, "frozen copy, partitioned (ZeRO-3)" if lc.zero_stage == 3
                          else "frozen copy on every rank"))
    act = activations(shape, cfg, b)
    on = lc.gradient_checkpointing
    chosen, other = ((act.with_checkpointing, act.without_checkpointing) if on
                     else (act.without_checkpointing, act.with_checkpointing))
    mb = act.batch
    items.append(Item("activations", chosen, f"{mb.rows} seq x {cfg.rollout.engine.max_model_len} tokens, "
                      f"{mb.patches} patches; gradient checkpointing {'on' if on else 'off'}"))
    items.append(Item("runtime", LEARNER_RUNTIME, "CUDA context, NCCL, ZeRO's gradient bucket"))
    need = sum(i.bytes for i in items)
    notes = [f"gradient checkpointing {'off' if on else 'on'}: activations {gib(other)}, "
             f"total {gib(need - chosen + other)}",
             f"CPU memory per learner pod, DeepSpeed's estimate: {gib(ms.cpu)} "
             + ("(the offloaded optimizer states)" if offloaded else "(loading the model)")]
    if lc.zero_stage in (2, 3) and lc.dtype != "float32":
        largest = f"largest_layer_params={p.largest_layer}, " if lc.zero_stage == 3 else ""
        notes.append(f"model states {gib(ms.gpu)} = DeepSpeed's estimate_zero{lc.zero_stage}_model_states_mem_needs("
                     f"total_params={p.total}, {largest}num_gpus_per_node=1, num_nodes={lc.ranks}, "
                     f"cpu_offload={offloaded})")
    if lc.dtype == "float32":
        notes.append("fp32: DeepSpeed's estimators assume bf16 mixed precision; these are 4-byte params and "
                     "gradients plus the fp32 master copy DeepSpeed still clones (ZeRO-2: 4P + 20P/N, ZeRO-3: "
                     "8L + 20P/N, against 2P + 18P/N and 4L + 18P/N in bf16)")
    return Component("learner rank", tuple(items), gpu_mem, "the whole GPU", tuple(notes)), ms.cpu


def kv_bytes_per_token(shape: ModelShape, tp: int, b: int) -> int:
    """KV cache bytes of one token on one GPU of an engine: 2 (K and V) · layers · kv heads · head_dim · b / TP, where
    vLLM gives each GPU max(1, kv_heads / TP) heads (it replicates KV heads when TP exceeds them)."""
    t = shape.text
    return 2 * t.layers * max(1, t.kv_heads // tp) * t.head_dim * b


def rollout_component(shape: ModelShape, p: ParamCount, cfg: RunConfig, gpu_mem: int) -> Component:
    """One rollout actor, per GPU of its engine: weights sharded over tensor_parallel_size, an allowance for vLLM's
    forward pass and runtime, and the KV cache vLLM takes from what gpu_memory_utilization leaves (or kv_cache_mib).
    It fits when the KV cache holds at least one sequence of max_model_len (vLLM refuses to start otherwise)."""
    from services.rollout.engine import engine_args  # numpy and more: only when planning

    # what the engine is given (services/rollout/engine.py), so the plan and the engine cannot drift apart
    args = engine_args(Path(cfg.model.path or "."), cfg)
    e, t, v = cfg.rollout.engine, shape.text, shape.vision
    tp, b = args["tensor_parallel_size"], DTYPE_BYTES[args["dtype"]]
    problem = next((f"rollout.engine.tensor_parallel_size: {tp} does not divide {what} ({n})" for what, n in
                    (("num_attention_heads", t.heads), ("vision num_heads", v.heads)) if n % tp), None)
    if problem is None and t.kv_heads % tp and tp % t.kv_heads:
        problem = (f"rollout.engine.tensor_parallel_size: {tp} and num_key_value_heads ({t.kv_heads}) must divide "
                   "one another")
    weights = b * p.total // tp
    batched = args.get("max_num_batched_tokens", VLLM_DEFAULT_BATCHED_TOKENS)
    in_flight = args["max_num_seqs"]
    # One forward pass at its widest: the hidden state and residual (2·h) and this GPU's share of q/k/v and of the MLP
    # (gate+up, then the activated product: 3·i) per batched token; the vision encoder on one video (merge² patches
    # per token); the sampler's fp32 logits and probabilities for every sequence in flight.
    qkv = (t.heads + 2 * t.kv_heads) * t.head_dim
    text = batched * b * (2 * t.hidden + (qkv + 3 * t.intermediate) // tp)
    patches = video_tokens(cfg, v) * v.merge ** 2
    vision = patches * b * (2 * v.hidden + (3 * v.hidden + 3 * v.intermediate) // tp)
    forward = ROLLOUT_RUNTIME + max(text, vision) + 8 * in_flight * t.vocab
    per_token = kv_bytes_per_token(shape, tp, b)
    per_seq = per_token * e.max_model_len
    items = [Item("weights", weights, f"{e.dtype}, {p.total / 1e9:.2f}B params / TP {tp}"),
             Item("forward + runtime", forward, f"{batched} batched tokens, {patches} patches, {in_flight} seqs, "
                  f"{gib(ROLLOUT_RUNTIME)} runtime")]
    if "kv_cache_memory_bytes" in args:   # a fixed KV cache: vLLM takes that, whatever gpu_memory_utilization says
        kv, budget, how = args["kv_cache_memory_bytes"], gpu_mem, "the whole GPU (rollout.engine.kv_cache_mib is set)"
        items.append(Item("KV cache", kv, f"kv_cache_mib {e.kv_cache_mib}"))
    else:   # vLLM's KV cache is what the share leaves; the least it starts with is one whole sequence
        share = args["gpu_memory_utilization"]
        budget = int(gpu_mem * share)
        kv, how = max(0, budget - weights - forward), f"gpu_memory_utilization {share}"
        items.append(Item("KV, one sequence", per_seq, f"{e.max_model_len} tokens x {per_token // 1024} KiB/token; "
                          "vLLM needs at least this"))
    seqs = kv // per_seq
    queued = "" if seqs >= in_flight else ", vLLM queues the rest"
    notes = [f"KV cache {gib(kv)}: {seqs} sequences of max_model_len {e.max_model_len} ({per_token // 1024} KiB per "
             f"token per GPU); {in_flight} in flight per actor{queued}"]
    if problem is None and seqs < 1:
        problem = f"the KV cache ({gib(kv)}) holds no whole sequence of max_model_len {e.max_model_len}"
    return Component(f"rollout actor (TP {tp})", tuple(items), budget, how, tuple(notes), problem)


def gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"
