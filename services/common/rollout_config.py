"""The rollout actors' config (`rollout:`): the actor loop, its vLLM engine and its timeouts around faults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.common.config_base import Strict as _Strict


class EngineConfig(_Strict):
    """One rollout actor's vLLM engine. `auto` settings follow the accelerator (cluster.accelerator): fp32 and eager
    on CPU, bf16 and CUDA graphs on GPU."""

    max_model_len: int = Field(512, ge=64, description="vLLM max_model_len")
    kv_cache_mib: int | None = Field(None, ge=8, description=(
        "KV cache size per engine, MiB; null = 64 on CPU, and on GPU what gpu_memory_utilization leaves"))
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights and activations; auto = float32 on CPU, bfloat16 on GPU")
    tensor_parallel_size: int = Field(1, ge=1, le=64, description=(
        "GPUs per engine (its weights sharded over them); more than 1 places the actor in a placement group"))
    gpu_memory_utilization: float = Field(0.85, gt=0, lt=1, description=(
        "share of each GPU's memory vLLM may take (weights, activations, KV cache); ignored on CPU"))
    enforce_eager: bool | None = Field(None, description="no CUDA graphs; null = eager on CPU, graphs on GPU")
    max_num_batched_tokens: int | None = Field(None, ge=64, description=(
        "tokens per engine step (chunked prefill); null = vLLM's default"))
    enable_prefix_caching: bool = Field(True, description=(
        "reuse the KV cache of a shared prompt prefix (the K samples of a prompt share theirs); reset on each swap"))
    spin_wait_s: float | None = Field(None, ge=0, le=10, description=(
        "how long vLLM's engine processes busy-wait for their next message before sleeping until woken "
        "(rollout/vllm_plugin.py); null = 0.05 on CPU, where the spin takes cores the model and learner need "
        "(bench/results/profile_loop.md), vLLM's own 1 s on GPU; 0 makes every engine step wait for a wake-up"))


class ActorFaultsConfig(_Strict):
    """How a rollout actor rides out faults around it (its own death is the supervisor's: supervisor.actor)."""

    start_timeout_s: float = Field(600.0, gt=0,
                                   description="an actor still loading its engine after this long is an error")
    reclaim_idle_s: float = Field(300.0, ge=0.1, le=86_400, description=(
        "a prompt an actor took and has not finished after this long is reclaimed by another (its holder is presumed "
        "hung; a holder known dead hands its prompts over at once); keep it well above the time to generate and "
        "score one batch"))
    reconnect_max_s: float = Field(5.0, gt=0, le=300, description=(
        "cap of the backoff between reconnects to the reward service (from 0.1 s, doubling)"))
    reward_outage_s: float = Field(120.0, gt=0, le=86_400, description=(
        "an actor whose reward service acks nothing this long after its stream broke fails, naming the address"))


class RolloutConfig(_Strict):
    """The actor loop: how many actors, what they generate and how they swap weights."""

    num_actors: int = Field(2, ge=1, le=256, description="rollout actors (one vLLM engine each)")
    prompts_per_batch: int = Field(2, ge=1, le=256, description=(
        "prompts an actor keeps generating at once; a finished one's slot is refilled from the stream at once"))
    max_new_tokens: int = Field(24, ge=1, le=32_768, description="generation length bound")
    temperature: float = Field(1.0, ge=0, le=5, description="sampling temperature")
    heartbeat_s: float = Field(1.0, gt=0, description="seconds between registry heartbeats")
    eval_samples: int = Field(1, ge=1, le=64,
                              description="completions per held-out prompt (1 at temperature 0 = greedy)")
    eval_temperature: float = Field(0.0, ge=0, le=5, description="sampling temperature for held-out prompts")
    swap: Literal["abort", "wait"] = Field(
        "abort", description="on a new version: abort in-flight requests and redo them, or let them finish")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="the vLLM engine of each actor")
    faults: ActorFaultsConfig = Field(default_factory=ActorFaultsConfig, description="timeouts around each actor")
