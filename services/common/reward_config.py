"""The reward service's config section (`reward` of the run config, services/common/config.py): the weighted
components per task, the LLM judge's endpoint, and how the gRPC server listens."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from services.common.config_base import Strict as _Strict


class RewardComponentConfig(_Strict):
    """One weighted term of a task's reward. Its value is logged under `key` (the label, else the name)."""

    name: str = Field(min_length=1, description="registered reward function name, or `judge`")
    weight: float = Field(1.0, description="weight in the total reward; 0 logs (or gates) without counting")
    label: str | None = Field(None, min_length=1, description="name in logs, metrics and gates; defaults to name")
    gate: str | None = Field(None, description="key of an earlier component of the same list that must pass first")
    gate_min: float = Field(1.0, ge=0, le=1, description="the gate passes when its value is >= this")
    rubric: Literal["route", "reference"] | None = Field(
        None, description="judge only: `route` (Ego-ST, 3 x 0-5, /15) or `reference` (0-10 against the reference, /10)")

    @property
    def key(self) -> str:
        return self.label or self.name

    @model_validator(mode="after")
    def _check(self) -> RewardComponentConfig:
        if self.name == "judge" and self.rubric is None:
            raise ValueError("rubric: the judge reward needs a rubric (route or reference)")
        if self.name != "judge" and self.rubric is not None:
            raise ValueError(f"rubric: only the judge reward takes a rubric, not {self.name!r}")
        return self


class JudgeServeConfig(_Strict):
    """A judge model served by this project on Ray Serve (services/judge/serve.py): vLLM behind an OpenAI-compatible
    app, autoscaled between min_replicas and max_replicas on the requests each replica has in flight."""

    model: Path | None = Field(None, description="the judge model's directory (Hugging Face format); None: the "
                               "embedded tiny judge, which knows the reply format and grades at random")
    min_replicas: int = Field(1, ge=1, le=64, description="replicas kept however idle")
    max_replicas: int = Field(1, ge=1, le=64, description="replicas at most; more than min_replicas autoscales")
    target_ongoing_requests: float = Field(4.0, gt=0, description="requests in flight per replica that Serve aims "
                                           "at: above it adds replicas, below it removes them")
    max_ongoing_requests: int = Field(32, ge=1, le=4096, description="requests one replica takes at once; the rest "
                                      "queue in Serve's proxy")
    upscale_delay_s: float = Field(10.0, ge=0, description="load above target this long before a replica is added")
    downscale_delay_s: float = Field(60.0, ge=0, description="load below target this long before one is removed")
    num_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves per replica")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (0 on CPU; 1 for a judge on its own GPU)")
    dtype: str = Field("auto", description="vLLM dtype (auto: the model's; CPU machines want float32 or bfloat16)")
    max_model_len: int | None = Field(None, ge=256, description="prompt + reply tokens per request (None: the "
                                      "model's own limit)")
    kv_cache_mib: int | None = Field(256, ge=16, description="KV cache per replica, MiB (None: vLLM's default, "
                                     "gpu_memory_utilization of the GPU; on CPU always bound it)")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="GPU share vLLM takes when kv_cache_mib "
                                          "is None")
    host: str = Field("127.0.0.1", description="where Serve's HTTP proxy listens")
    port: int = Field(0, ge=0, le=65535, description="its port; 0 picks a free one")

    @model_validator(mode="after")
    def _check(self) -> JudgeServeConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas: {self.max_replicas} is below min_replicas ({self.min_replicas})")
        return self


class JudgeConfig(_Strict):
    """The LLM judge's OpenAI-compatible chat endpoint (`vllm serve`, a hosted API, or `serve`: one this run
    starts on Ray Serve); see services/reward/judge.py."""

    base_url: str = Field("http://127.0.0.1:8000/v1", description="requests go to {base_url}/chat/completions")
    model: str | None = Field(None, min_length=1, description="model name sent in each request; needed by the judge")
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                    description="environment variable holding the API key (never the key itself)")
    timeout_s: float = Field(30.0, gt=0, le=600, description="bound on one request, connect to last byte")
    retries: int = Field(2, ge=0, le=10, description="extra attempts after a timeout, transport error, 429 or 5xx")
    backoff_s: float = Field(0.5, ge=0, le=60, description="wait before the first retry; doubles for each next one")
    max_concurrency: int = Field(16, ge=1, le=1024, description="judge requests in flight at once, over all groups")
    max_tokens: int = Field(64, ge=8, le=4096, description="bound on the judge's reply length")
    max_answer_chars: int = Field(8000, ge=64, description="candidate answers are cut to this many characters")
    cache_size: int = Field(50_000, ge=0, description="scores kept, keyed by (rubric, question, reference, answer)")
    serve: JudgeServeConfig | None = Field(None, description="serve the judge model on Ray Serve (base_url is then "
                                           "its address; `model` its served name)")


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class RewardConfig(_Strict):
    host: str = Field("127.0.0.1", description="address the gRPC server binds (local default: loopback only)")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    components: list[RewardComponentConfig] = Field(
        default_factory=lambda: [RewardComponentConfig(name="mcq", weight=1.0),
                                 RewardComponentConfig(name="answer_format", weight=0.1)],
        min_length=1,
        description="weighted reward components summed into each completion's reward (tasks not in `tasks`)",
    )
    tasks: dict[str, list[RewardComponentConfig]] = Field(
        default_factory=dict, description="per task type (Prompt.task), its own components instead of `components`")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="the LLM judge endpoint, if one is used")
    tls_cert: Path | None = Field(None, description="PEM certificate (chain) the reward server presents; TLS is on "
                                                    "when set (needs tls_key); required off loopback")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_ca: Path | None = Field(None, description="PEM CA bundle the actors verify the server with "
                                                  "(None: the system's)")
    tls_server_name: str | None = Field(None, description="name the actors expect in the server certificate, when "
                                                          "it differs from the address's host (e.g. a Service name)")
    require_token: bool = Field(False, description="refuse calls without `authorization: Bearer <token>`, the token "
                                                   "read from env VIDEORL_REWARD_TOKEN; required off loopback")
    health_port: int | None = Field(None, ge=0, le=65535, description="also serve only gRPC health, in plaintext, on "
                                    "this port (Kubernetes' gRPC probes speak neither TLS nor tokens)")
    max_held_completions: int = Field(4096, ge=1, le=1_048_576, description=(
        "completions held across all streams (K slots per group, from its first completion to its ack); at the cap "
        "the service stops reading streams, so gRPC flow control pushes back on the actors"))
    max_open_groups_per_stream: int = Field(8, ge=1, le=1024, description=(
        "unfinished groups one stream may hold; opening one more rejects the stream's oldest unfinished group"))

    @model_validator(mode="after")
    def _check(self) -> RewardConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key: give both or neither")
        if self.host not in LOOPBACK_HOSTS and (self.tls_cert is None or not self.require_token):
            raise ValueError(f"host {self.host!r} is not loopback: set tls_cert, tls_key and require_token (plaintext "
                             "and unauthenticated gRPC is only for the local default on 127.0.0.1)")
        lists = {"components": self.components, **{f"tasks.{t}": c for t, c in self.tasks.items()}}
        for where, comps in lists.items():
            if not comps:
                raise ValueError(f"{where}: needs at least one component")
            seen: set[str] = set()
            for i, c in enumerate(comps):
                if c.key in seen:
                    raise ValueError(f"{where}[{i}]: duplicate component {c.key!r}; give one a `label`")
                if c.gate is not None and c.gate not in seen:
                    raise ValueError(f"{where}[{i}].gate: {c.gate!r} is not an earlier component of {where}")
                seen.add(c.key)
        if self.judge.model is None and any(c.name == "judge" for comps in lists.values() for c in comps):
            raise ValueError("judge.model: required when a component uses the judge")
        return self
