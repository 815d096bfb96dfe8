"""The vLLM engine of one rollout actor: K samples per prompt with logprobs, and weight hot-swap.

Invariants kept here: all K completions of a prompt come from one `generate` request (n=K); a request that
was aborted returns None, never partial samples; `load_weights` runs with nothing in flight (the actor's
gate guarantees it, and pause(mode="wait") backs it up), so every completion is produced by exactly one
weight version; after a reload both the encoder cache and the prefix cache are reset, because either
would otherwise serve results computed with the old weights.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from services.common.config import RunConfig
from services.common.prompts import ChatTemplater, vision_token_ids
from services.rollout.vllm_plugin import SPIN_ENV


@dataclass(frozen=True)
class Sample:
    prompt_token_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]   # log-prob of each sampled token under the sampling policy
    text: str
    finish_reason: str


class Engine(Protocol):
    """What a rollout actor uses of its engine: `VLLMEngine`, or the timed stand-in of bench/scale_sim_bench.py."""

    tokenizer: ChatTemplater

    async def generate(self, request_id: str, prompt: str, frames: np.ndarray, n: int, max_tokens: int,
                       temperature: float, seed: int | None = None) -> list[Sample] | None: ...

    async def abort(self, request_ids: Iterable[str]) -> None: ...

    async def load_weights(self, weights_dir: str) -> float: ...

    def shutdown(self) -> None: ...


@runtime_checkable
class BroadcastEngine(Engine, Protocol):
    """An engine that also takes versions over the broadcast transport (`VLLMEngine`)."""

    async def join_weight_group(self, group: dict) -> None: ...

    async def prefetch_weights(self, update_info: dict, poll_s: float = 0.01) -> float: ...

    async def apply_weights(self, update_info: dict, version: int) -> float: ...

    async def weight_checksums(self) -> dict[str, str]: ...


# (model dir, rollout config, seed) -> a ready engine; RolloutActor's default is VLLMEngine.create.
EngineFactory = Callable[[Path, RunConfig], Engine]


def engine_args(model_dir: Path, cfg: RunConfig) -> dict:
    """vLLM's AsyncEngineArgs for one actor: rollout.engine made concrete for the run's accelerator, and room for
    every prompt in flight (K samples each). More than one GPU per engine runs its workers as Ray actors in the
    placement group the rollout actor was created in (rlctl/cluster.py); one runs in the actor's own process."""
    cfg = cfg.resolved()
    e = cfg.rollout.engine
    args = dict(model=str(model_dir), dtype=e.dtype, seed=cfg.seed, enforce_eager=e.enforce_eager,
                max_model_len=e.max_model_len, limit_mm_per_prompt={"video": 1, "image": 0},
                max_num_seqs=max(cfg.group_size * cfg.rollout.prompts_per_batch, 8),
                tensor_parallel_size=e.tensor_parallel_size,
                distributed_executor_backend="uni" if e.tensor_parallel_size == 1 else "ray",
                enable_prefix_caching=e.enable_prefix_caching, disable_log_stats=True)
    if e.kv_cache_mib is not None:
        args["kv_cache_memory_bytes"] = e.kv_cache_mib << 20
    if cfg.cluster.accelerator == "gpu":
        args["gpu_memory_utilization"] = e.gpu_memory_utilization
    if e.max_num_batched_tokens is not None:
        args["max_num_batched_tokens"] = e.max_num_batched_tokens
    if cfg.weights.transport == "broadcast":
        args.update(weight_transfer_args())
    return args


def weight_transfer_args() -> dict:
    """The engine arguments of the broadcast transport: the gloo backend of rollout/weight_transfer.py, which vLLM
    registers in its worker process by importing `worker_extension_cls`. It is the learner's one sender (gloo, from
    CPU memory), on GPUs too, where the workers copy each received tensor onto their device; vLLM's NCCL backend
    would need a NCCL sender in the learner, not built yet."""
    return {"weight_transfer_config": {"backend": "videorl_gloo"},
            "worker_extension_cls": "services.rollout.weight_transfer.GlooWorkerExtension"}


@dataclass(frozen=True)
class BroadcastSwap:
    receive_s: float    # from asking for the version to holding all of its bytes (generation goes on meanwhile)
    paused_s: float     # generation paused: loading the bytes into the model


class VLLMEngine:
    """Thin wrapper over `AsyncLLM`; vllm is imported only when an engine is created."""

    def __init__(self, llm, tokenizer):
        self.llm = llm
        self.tokenizer = tokenizer
        self.never = {i: -100.0 for i in vision_token_ids(tokenizer)}

    @classmethod
    def create(cls, model_dir: Path, cfg: RunConfig) -> VLLMEngine:
        """The engine of one actor, built from `engine_args`."""
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        from transformers import AutoProcessor
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        if (spin := cfg.resolved().rollout.engine.spin_wait_s) is not None:
            os.environ[SPIN_ENV] = repr(spin)   # for the engine's processes: rollout/vllm_plugin.py
        else:
            os.environ.pop(SPIN_ENV, None)
        llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args(model_dir, cfg)))
        return cls(llm, AutoProcessor.from_pretrained(str(model_dir)))

    async def generate(self, request_id: str, prompt: str, frames: np.ndarray, n: int, max_tokens: int,
                       temperature: float, seed: int | None = None) -> list[Sample] | None:
        """K=n samples for one prompt, or None if the request was aborted (see `abort`)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        # FINAL_ONLY: one output holding all n samples; streamed outputs of n>1 requests may hold only some.
        # A vision placeholder in a completion is never a valid answer, and the learner would read it as a frame
        # slot; a small random-init model does sample them. Logprobs stay vLLM's raw ones, as the learner computes.
        params = SamplingParams(n=n, temperature=temperature, max_tokens=max_tokens, logprobs=0, seed=seed,
                                logit_bias=self.never, output_kind=RequestOutputKind.FINAL_ONLY)
        final = None
        async for out in self.llm.generate({"prompt": prompt, "multi_modal_data": {"video": frames}}, params,
                                           request_id=request_id):
            final = out
        if final is not None and any(c.finish_reason == "abort" for c in final.outputs):
            return None
        if final is None or not final.finished or len(final.outputs) != n:
            got = 0 if final is None else len(final.outputs)
            raise RuntimeError(f"vLLM returned {got} of {n} samples for one prompt")
        samples = []
        for c in sorted(final.outputs, key=lambda c: c.index):
            # logprobs=0 returns the sampled token's logprob only: one dict per generated token.
            lps = [float(step[tok].logprob) for tok, step in zip(c.token_ids, c.logprobs or [], strict=True)]
            samples.append(Sample(list(final.prompt_token_ids or []), list(c.token_ids), lps, c.text,
                                  c.finish_reason or "stop"))
        return samples

    async def abort(self, request_ids: Iterable[str]) -> None:
        """Abort requests by id; their `generate` calls return None. Unknown or finished ids are ignored."""
        await self.llm.abort(list(request_ids))

    async def load_weights(self, weights_dir: str) -> float:
        """Hot-swap to the safetensors in `weights_dir`; returns the seconds generation was paused."""
        t0 = time.perf_counter()
        await self.llm.pause_generation(mode="wait")
        try:
            await self.llm.collective_rpc("reload_weights", kwargs={"weights_path": weights_dir})
            await self.llm.reset_encoder_cache()
            await self.llm.reset_prefix_cache()
        finally:
            await self.llm.resume_generation()
        return time.perf_counter() - t0

    async def join_weight_group(self, group: dict) -> None:
        """Join a broadcast weight group (weight_wire.GroupInfo as a dict); returns once every rank has joined."""
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest

        await self.llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info=group))

    async def receive_weights(self, update_info: dict, version: int, poll_s: float = 0.01) -> BroadcastSwap:
        """Receive one version from the weight group (its metadata: weight_wire.Layout.update_info) and swap it in.
        The bytes arrive while generation goes on; it pauses only to load them. A failed receive raises and leaves
        the old weights serving (rollout/weight_transfer.py)."""
        receive_s = await self.prefetch_weights(update_info, poll_s)
        return BroadcastSwap(receive_s, await self.apply_weights(update_info, version))

    async def prefetch_weights(self, update_info: dict, poll_s: float = 0.01) -> float:
        """Receive a version's bytes into the workers' staging buffers while generation goes on; returns the seconds
        it took. Raises when the broadcast failed (the workers have left the group; the model is untouched)."""
        t0 = time.perf_counter()
        await self.llm.collective_rpc("videorl_prefetch_weights", kwargs={"update_info": update_info})
        while True:
            status = await self.llm.collective_rpc("videorl_prefetch_status")
            if failed := [s for s in status if s not in ("receiving", "ready")]:
                raise RuntimeError(failed[0])
            if all(s == "ready" for s in status):
                return time.perf_counter() - t0
            await asyncio.sleep(poll_s)

    async def apply_weights(self, update_info: dict, version: int) -> float:
        """Load the version `prefetch_weights` received, generation paused meanwhile; returns the seconds paused."""
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        t0 = time.perf_counter()
        await self.llm.pause_generation(mode="wait")
        try:
            await self.llm.start_weight_update()
            await self.llm.update_weights(WeightTransferUpdateRequest(update_info=update_info))
            await self.llm.finish_weight_update(weight_version=str(version))
            await self.llm.reset_encoder_cache()
            await self.llm.reset_prefix_cache()
        finally:
            await self.llm.resume_generation()
        return time.perf_counter() - t0

    async def weight_checksums(self) -> dict[str, str]:
        """vLLM's sha256 of every parameter of every worker, keyed '<dp:pp:pcp:tp>:<vLLM parameter name>'."""
        return {k: v for per_engine in await self.llm.compute_weight_checksums() for k, v in per_engine.items()}

    def shutdown(self) -> None:
        self.llm.shutdown()
