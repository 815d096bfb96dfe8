"""The run configuration: one pydantic model per service, composed into `RunConfig`, loaded from YAML.

Every field is typed, bounded or defaulted, and described in one line; unknown fields are errors so a
typo in a YAML file fails loudly with the field's path instead of being silently ignored.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, ClassVar, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from services.common.config_base import Strict as _Strict
from services.common.learner_config import LearnerConfig, LossConfig
from services.common.reward_config import RewardConfig
from services.common.rollout_config import ActorFaultsConfig, EngineConfig, RolloutConfig
from services.common.synth_tasks import parse_tasks
from services.common.tracking_config import TrackingConfig

# The role configs live in modules of their own; their names are importable from here, as every caller does.
__all__ = ["ActorFaultsConfig", "ClusterConfig", "ConfigError", "EngineConfig", "LearnerConfig", "LossConfig",
           "RolloutConfig", "RunConfig", "SFTRunConfig", "TrackingConfig", "WeightsConfig", "load_config"]


class RedisConfig(_Strict):
    url: str | None = Field(None, description="redis:// URL of the control plane; None starts an embedded server")
    persistence: bool = Field(True, description=(
        "the embedded server keeps an append-only file fsynced on every write, and rlctl run restarts it on the same "
        "data if it dies, losing nothing acknowledged (off: a crashed Redis ends the run)"))
    reconnect_s: float = Field(60.0, ge=1, le=3600, description=(
        "every service retries a lost Redis connection for this long (backoff to 1 s) before it fails"))


class ModelConfig(_Strict):
    path: Path | None = Field(None, description="HF save_pretrained dir of a Qwen2-VL model; None builds the tiny one "
                                                "(its random init seeded by the run's seed)")


class UniformSampling(_Strict):
    """Every train row alike, in shuffled passes."""

    type: Literal["uniform"] = "uniform"


class _ByPassRate(_Strict):
    pass_reward: float = Field(1.0, description="a completion passes when its total reward reaches this")
    explore: float = Field(0.1, ge=0, le=1, description="share of draws that ignore the rule (re-measures rows)")


class FilterSampling(_ByPassRate):
    """Only rows the policy neither always nor never passes (TVG-R1: 0 < p <= 0.7)."""

    type: Literal["filter"] = "filter"
    pass_min: float = Field(0.0, ge=0, le=1, description="keep rows with pass_min < p ...")
    pass_max: float = Field(0.7, ge=0, le=1, description="... and p <= pass_max")


class TargetSampling(_ByPassRate):
    """Rows drawn with a preference for those near a target pass rate (Time-R1)."""

    type: Literal["target"] = "target"
    target_pass: float = Field(0.5, ge=0, le=1, description="favour rows near this pass rate")
    target_width: float = Field(0.2, gt=0, description="width of the preference around it")


Sampling = Annotated[UniformSampling | FilterSampling | TargetSampling, Field(discriminator="type")]


class DataConfig(_Strict):
    train: Path | None = Field(None, description="train JSONL; None generates the embedded synthetic set")
    eval: Path | None = Field(None, description="held-out JSONL; None generates the embedded synthetic set")
    synth_train: int = Field(64, ge=1, le=100_000, description="rows of the embedded synthetic train split")
    synth_eval: int = Field(16, ge=1, le=100_000, description="rows of the embedded synthetic eval split")
    synth_tasks: list[str] | None = Field(
        None, description="render these tasks of the synthetic suite (synth_train/synth_eval rows each) instead of "
                          "the one direction task; see `rlctl data synth --help`")
    sampling: Sampling = Field(default_factory=UniformSampling, description=(
        "train prompt choice, by `type`: uniform (every row alike), filter or target (by the policy's pass rate)"))
    skip_bad_rows: bool = Field(True, description=(
        "rlctl run skips malformed dataset lines, naming each (file:line: field) in a warning and counting them "
        "(rows_skipped); false: the first one stops the run before it starts"))

    @field_validator("synth_tasks")
    @classmethod
    def _known_tasks(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            parse_tasks(v)  # ValueError naming the unknown task and the known ones
        return v


class MediaConfig(_Strict):
    """Frame sampling, with qwen-vl-utils' rules (see services/common/media.py)."""

    fps: float = Field(2.0, gt=0, description="frames sampled per second of video")
    min_frames: int = Field(4, ge=2, description="lower bound on sampled frames")
    max_frames: int = Field(768, ge=2, description="upper bound on sampled frames")
    min_pixels: int = Field(28 * 28, ge=28 * 28, description="lower bound on pixels per frame after resize")
    max_pixels: int = Field(64 * 64, ge=28 * 28, description="upper bound on pixels per frame after resize")
    folder_fps: float = Field(2.0, gt=0, description="frame rate assumed for a video given as a folder of frames")


class RestartPolicy(_Strict):
    max_restarts: int = Field(3, ge=0, le=1000, description=(
        "a process of this role that died is replaced up to this many times in a run; the next death fails the run"))


def _policy(n: int) -> RestartPolicy:
    return RestartPolicy(max_restarts=n)


class SupervisorConfig(_Strict):
    """How `rlctl run` keeps what it started alive (rlctl/supervisor.py): a process that died is replaced, up to its
    role's max_restarts. A process that fails with an error of its own is not replaced: that would repeat it."""

    actor: RestartPolicy = Field(default_factory=lambda: _policy(3), description=(
        "a rollout actor: a new one replaces it; the prompts it held are handed to the live actors at once"))
    reward: RestartPolicy = Field(default_factory=lambda: _policy(5), description=(
        "the local reward service: a new one on the same port; the actors reconnect and resend what was not acked"))
    learner: RestartPolicy = Field(default_factory=lambda: _policy(3), description=(
        "the learner: a new one resumes from the last checkpoint (learner.checkpoint_every)"))
    redis: RestartPolicy = Field(default_factory=lambda: _policy(5), description=(
        "the embedded Redis (redis.persistence): started again on the same port and data"))


CPU_KV_CACHE_MIB = 64  # rollout.engine.kv_cache_mib on CPU when unset: room for the default run's prompts in flight
CPU_SPIN_WAIT_S = 0.05  # rollout.engine.spin_wait_s on CPU when unset: bench/results/profile_loop.md


class ClusterConfig(_Strict):
    """Where the run's processes go and what they compute on."""

    accelerator: Literal["auto", "cpu", "gpu"] = Field("auto", description=(
        "gpu: actors and learner ranks request GPUs from Ray and default to bf16 and CUDA graphs; auto = gpu when "
        "the Ray cluster offers GPUs"))
    colocate: bool = Field(False, description=(
        "on GPU, a rollout actor (tensor_parallel_size 1) and a learner rank take half a GPU each, so one GPU holds "
        "both (a one-GPU machine); leave the learner room with rollout.engine.gpu_memory_utilization and kv_cache_mib"))


class WeightsConfig(_Strict):
    """How each policy version reaches the rollout actors (docs: DESIGN.md, "Weight transports")."""

    transport: Literal["auto", "disk", "broadcast"] = Field("auto", description=(
        "disk: safetensors + manifest, each actor loads the files; broadcast: streamed from the learner into the "
        "engines' workers over a gloo group, with a disk copy every disk_every versions and for late joiners; "
        "auto: broadcast on CPU, disk on GPU (the broadcast path is unverified on GPUs)"))
    bucket_mib: int = Field(64, ge=1, le=4096, description="broadcast: bytes packed per collective")
    timeout_s: float = Field(60.0, gt=0, le=3600, description=(
        "broadcast: the longest any collective waits (joining the group, one bucket) before it fails"))
    disk_every: int = Field(10, ge=1, le=1_000_000, description=(
        "broadcast: every this many versions a disk copy is written too, in the background (late joiners, recovery)"))
    shared_memory: bool = Field(True, description=(
        "broadcast: when every actor of the group runs on the learner's machine, hand each version over in a "
        "shared-memory file (/dev/shm) they map, instead of sending it over the group"))
    checksum_every: int = Field(10, ge=0, le=1_000_000, description=(
        "broadcast: every this many versions the learner sends its sha256 of each tensor, which each worker checks "
        "before loading (other bytes: the version is refused and comes as a disk copy), and each actor records "
        "vLLM's checksum of its weights and compares it with the other actors' (0: never)"))


# Fields that moved, old path -> where they live now: a config that still names one fails, naming the new place.
MOVED = {
    "rollout.max_restarts": "supervisor.actor.max_restarts",
    "learner.max_restarts": "supervisor.learner.max_restarts",
    "rollout.group_size": "group_size",
    "rollout.max_model_len": "rollout.engine.max_model_len",
    "rollout.kv_cache_mib": "rollout.engine.kv_cache_mib",
    **{f"rollout.{k}": f"rollout.faults.{k}" for k in ("start_timeout_s", "reclaim_idle_s", "reconnect_max_s",
                                                       "reward_outage_s")},
    **{f"learner.{k}": f"learner.loss.{k}" for k in ("clip_eps", "clip_low", "clip_high", "dual_clip", "kl_coef",
                                                     "kl_type")},
    "learner.loss_agg": "learner.loss.agg",
    **{f"data.{k}": f"data.sampling.{k} (with data.sampling.type: {rule})"
       for k, rule in (("pass_min", "filter"), ("pass_max", "filter"), ("target_pass", "target"),
                       ("target_width", "target"), ("pass_reward", "filter or target"),
                       ("explore", "filter or target"))},
    "model.seed": "seed (one seed derives every other)",
    "data.seed": "seed (one seed derives every other)",
    "sft": "its own config file, read by `rlctl sft CONFIG` (SFTRunConfig, rlctl/configs/sft.yaml)",
}


class SFTConfig(_Strict):
    """CoT-SFT cold start (`rlctl sft`, services/learner/sft.py): teacher-forced training on the rows' responses."""

    data: list[Path] = Field(default_factory=list, description="train JSONL file(s); empty = data.train (or synthetic)")
    epochs: float = Field(1.0, gt=0, le=1000, description="passes over the rows when `steps` is not set")
    steps: int | None = Field(None, ge=1, description="optimizer steps; None = epochs x rows / batch_size")
    batch_size: int = Field(8, ge=1, le=4096, description="rows per optimizer step (over all ranks)")
    micro_batch_size: int | None = Field(None, ge=1, description="rows per forward pass; None = the whole batch")
    lr: float = Field(1e-3, gt=0, description="peak AdamW learning rate")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps from 0 to lr")
    schedule: Literal["constant", "cosine"] = Field("cosine", description="lr after warm-up: constant or cosine to 0")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay")
    grad_clip: float = Field(1.0, ge=0, description="clip the global gradient norm to this (0 = off)")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage")
    freeze_vision: bool = Field(False, description="train only the language model; the output dir stays complete")
    out: Path | None = Field(None, description="output model directory; None = <run_dir>/sft")
    log_every: int = Field(10, ge=1, description="write a loss record to sft_log.jsonl every N steps")

    @field_validator("data", mode="before")
    @classmethod
    def _one_path(cls, v: object) -> object:
        return [v] if isinstance(v, (str, Path)) else v  # `--set sft.data=train.jsonl` names one file


class _TopLevel(_Strict):
    """A config file's root: a field that moved (`moved`: old path -> new place) fails naming its new place."""

    moved: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _refuse_moved(cls, data: object) -> object:
        if found := moved_fields(data, cls.moved):
            raise ValueError("; ".join(found))
        return data


class SFTRunConfig(_TopLevel):
    """`rlctl sft CONFIG`'s own config (rlctl/configs/sft.yaml): the model and rows to start from, frame sampling
    (keep it equal to the GRPO run's `media`), and the SFT training itself."""

    run_id: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")] = Field("sft", description="name of the run")
    run_dir: Path = Field(Path("runs/sft"), description="the output goes to <run_dir>/sft unless sft.out says")
    seed: int = Field(0, description="the one seed: the embedded model's init, the synthetic data, the row order")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    media: MediaConfig = MediaConfig()
    sft: SFTConfig = SFTConfig()
    tracking: TrackingConfig = TrackingConfig()

    moved: ClassVar[dict[str, str]] = {"model.seed": MOVED["model.seed"], "data.seed": MOVED["data.seed"],
                                       "sft.seed": "seed (one seed derives every other)"}


class RunConfig(_TopLevel):
    run_id: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")] = Field(
        "local", description="run name; every Redis key lives under videorl:<run_id>:")
    run_dir: Path = Field(Path("runs/local"), description="where weights, stats and logs of the run are written")
    seed: int = Field(0, description=(
        "the one seed: the embedded model's init, the synthetic data, the prompt order, sampling and training"))
    group_size: int = Field(4, ge=2, le=64, description=(
        "K: completions sampled per prompt by the actors, assembled into a group by the reward service, normalised "
        "over by the learner"))
    redis: RedisConfig = RedisConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    media: MediaConfig = MediaConfig()
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    learner: LearnerConfig = LearnerConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    cluster: ClusterConfig = ClusterConfig()
    weights: WeightsConfig = WeightsConfig()
    tracking: TrackingConfig = TrackingConfig()

    moved: ClassVar[dict[str, str]] = MOVED

    def resolved(self) -> RunConfig:
        """`on` this process's accelerator when cluster.accelerator is still auto (rlctl run resolves it from the
        Ray cluster before any service sees the config; a service built directly, as in tests, looks for itself)."""
        if self.cluster.accelerator != "auto":
            return self.on(self.cluster.accelerator)
        import torch  # only a process that builds an engine resolves here, and it has torch

        return self.on("gpu" if torch.cuda.is_available() else "cpu")

    def on(self, accelerator: Literal["cpu", "gpu"]) -> RunConfig:
        """This config with every `auto` made concrete for `accelerator` (what the services are given).

        >>> c = RunConfig().on("gpu"); c.learner.dtype, c.rollout.engine.dtype, c.rollout.engine.enforce_eager
        ('bfloat16', 'bfloat16', False)
        """
        if self.cluster.accelerator not in ("auto", accelerator):
            raise ValueError(f"cluster.accelerator is {self.cluster.accelerator}, but the run is on {accelerator}")
        gpu = accelerator == "gpu"
        e, lc = self.rollout.engine, self.learner
        if self.cluster.colocate and self.rollout.engine.tensor_parallel_size > 1:
            raise ValueError("cluster.colocate: only engines of one GPU (rollout.engine.tensor_parallel_size 1) share")
        if lc.offload_optimizer and not gpu:
            raise ValueError("learner.offload_optimizer: the optimizer is in CPU memory already on CPU")
        engine = e.model_copy(update={
            "dtype": e.dtype if e.dtype != "auto" else "bfloat16" if gpu else "float32",
            "enforce_eager": e.enforce_eager if e.enforce_eager is not None else not gpu,
            "spin_wait_s": e.spin_wait_s if e.spin_wait_s is not None or gpu else CPU_SPIN_WAIT_S})
        if not gpu and engine.kv_cache_mib is None:
            engine = engine.model_copy(update={"kv_cache_mib": CPU_KV_CACHE_MIB})  # CPU has no memory share to take
        w = self.weights
        return self.model_copy(update={
            "weights": w.model_copy(update={"transport": w.transport if w.transport != "auto" else
                                            "disk" if gpu else "broadcast"}),
            "cluster": self.cluster.model_copy(update={"accelerator": accelerator}),
            "rollout": self.rollout.model_copy(update={"engine": engine}),
            "learner": lc.model_copy(update={"dtype": lc.dtype if lc.dtype != "auto" else
                                             "bfloat16" if gpu else "float32"})})

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.media.min_pixels > self.media.max_pixels:
            raise ValueError("media.min_pixels must not exceed media.max_pixels")
        if self.media.min_frames > self.media.max_frames:
            raise ValueError("media.min_frames must not exceed media.max_frames")
        return self


def moved_fields(data: object, moved: dict[str, str]) -> list[str]:
    """One "old.path: moved to new place" line per field of `data` that `moved` lists."""
    return [f"{k}: moved to {new}" for k, new in moved.items()
            if isinstance(data, dict) and _has_path(data, k.split("."))]


def _has_path(data: dict, path: list[str]) -> bool:
    node: object = data
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the bad fields."""


Config = TypeVar("Config", RunConfig, SFTRunConfig)


def load_config(path: Path | None, overrides: list[str] | tuple[str, ...] = (),
                model: type[Config] = RunConfig) -> Config:  # type: ignore[assignment]
    """Load a YAML config of `model` (None = all defaults) and apply `a.b.c=value` overrides."""
    raw: dict = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read config: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z_]+(\.[a-z_]+)*", key):
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        node = raw
        *parents, leaf = key.split(".")
        for i, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parents[:i + 1])} is {node!r:.40}, not a mapping")
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not YAML: {e}") from None
    if moved := moved_fields(raw, model.moved):
        raise ConfigError(f"{path or 'config'}: invalid:\n  " + "\n  ".join(moved))
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        lines = [_error_line(err["loc"], err["type"], err["msg"], model) for err in e.errors()]
        raise ConfigError(f"{path or 'config'}: invalid:\n  " + "\n  ".join(lines)) from None


def _error_line(loc: tuple, kind: str, msg: str, root: type[BaseModel] = RunConfig) -> str:
    """One validation error as `field.path: message`. Our model validators start their message with the field
    they are about, relative to the model ("components[0].gate: ..."): that joins the path."""
    where = ".".join(str(x) for x in loc)
    if kind == "extra_forbidden":
        msg += _did_you_mean(loc, root)
    elif kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        head, sep, rest = msg.partition(": ")
        if sep and re.fullmatch(r"[\w.\[\]]+", head):
            where, msg = f"{where}.{head}" if where else head, rest
    return f"{where}: {msg}" if where else msg


def _did_you_mean(loc: tuple, root: type[BaseModel]) -> str:
    """' (did you mean 'x'?)' when the unknown field at `loc` is close to a field of the model it was given in."""
    model: type[BaseModel] = root
    for part in loc[:-1]:  # list indices and dict keys (reward.tasks.<task>) keep the model they index into
        if isinstance(part, str) and part in model.model_fields:
            model = _inner_model(model.model_fields[part].annotation) or model
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _inner_model(tp: object) -> type[BaseModel] | None:
    """The config model inside an annotation such as `X`, `X | None`, `list[X]` or `dict[str, list[X]]`."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in get_args(tp):
        if (model := _inner_model(arg)) is not None:
            return model
    return None
