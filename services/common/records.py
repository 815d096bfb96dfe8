"""Records that cross modules and processes, typed: a learner step (`StepRecord`, with its `TrainStats` and, when a
held-out round finished, its `EvalSummary`), a rollout actor's totals (`ActorStats`), a version's pickup by an actor
(`SwapLag`), a run's end-of-run summary (`RunSummary`), `rlctl eval`'s report (`EvalReport`) and `rlctl sft`'s
(`SFTSummary`).

Each has one JSON form, its field names as keys (`model_dump_json` / `model_validate_json`): the lines of
`<run_dir>/stats.jsonl`, the `learner:steps` list in Redis and `<run_dir>/summary.json`. Reading validates, so a
record from another version of the code fails with the field it lacks instead of a KeyError somewhere later.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Record(BaseModel):
    # NaN (a step whose every reward was unscorable) is written as NaN, as json.dumps writes it, and read back.
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")


class TrainStats(_Record):
    """What one learner step's GRPO updates measured (services/learner/engine.py train_step). Token means are over
    the step's completion tokens; `loss` and `pg_loss` are aggregated as learner.loss.agg says."""

    loss: float = Field(description="the loss minimised: surrogate + kl_coef * KL")
    pg_loss: float = Field(description="the clipped surrogate alone")
    kl_mean: float = Field(description="KL to the reference per token (0 without a reference)")
    ratio_mean: float = Field(description="mean importance ratio pi / pi_old per token")
    clip_frac: float = Field(description="share of tokens whose clipped term is active")
    clip_frac_low: float = Field(description="... of those, with a negative advantage")
    clip_frac_high: float = Field(description="... of those, with a positive advantage")
    dual_clip_frac: float = Field(description="share of tokens capped by the dual clip")
    tokens: float = Field(description="completion tokens trained on, per update (summed over micro-batches)")
    adv_abs_mean: float = Field(description="mean |advantage| over the step's completions")
    adv_std: float
    adv_min: float
    adv_max: float
    reward_mean: float = Field(description="mean reward of the step's completions (NaN rewards left out)")
    micro_batches: float = Field(description="micro-batches per update")
    logp_diff_vs_behaviour: float = Field(0.0, description="mean |learner logp - sampler logp| per token")
    tis_weight_mean: float | None = Field(None, description="mean truncated IS weight (only with learner.tis_cap)")
    tis_capped_frac: float | None = Field(None, description="share of tokens at the cap (only with learner.tis_cap)")


class EvalSummary(_Record):
    """Held-out accuracy (the mean of each task's first reward component, e.g. mcq), per task and overall, the mean
    of every component per task, and the versions that answered. In a run, also which round and when it was fed."""

    accuracy: float
    per_task: dict[str, float]
    components: dict[str, dict[str, float]]
    groups: int = Field(description="held-out prompts scored")
    versions: list[int]
    round: int | None = Field(None, description="evaluation round of a run (0 = before the first step)")
    fed_at_step: int | None = Field(None, description="learner step after which the round was fed")
    fed_at: float | None = Field(None, description="unix time the round was fed")
    done_at: float | None = Field(None, description="unix time its last prompt was scored")


class EvalReport(EvalSummary):
    """What `rlctl eval` reports and writes to <run_dir>/eval.json: the summary of one pass over the held-out split."""

    rows: int = Field(description="held-out rows fed")
    quarantined: int = Field(description="rows refused (bad video), scored by nobody")
    model: str = Field(description="the model directory evaluated")
    seconds: float


class SFTSummary(_Record):
    """What `rlctl sft` reports and writes beside the model (sft_info.json)."""

    model_dir: str = Field(description="the model trained from")
    data: list[str]
    rows: int
    steps: int
    batch_size: int
    world_size: int
    skipped_rows: dict[str, int] = Field(description="reason -> rows left out while training (bad videos)")
    loss_first: float = Field(description="mean loss of the first logged window")
    loss_last: float = Field(description="mean loss of the last logged window")
    seconds: float
    out: str
    config: dict = Field(description="the sft config, as run")


class StepRecord(_Record):
    """One learner step, as the driver records it after the step (stats.jsonl, Redis, `rlctl status`)."""

    step: int
    time: float = Field(description="unix time the step ended")
    version: int = Field(description="policy version after the step")
    published: int | None = Field(None, description="the version this step published, if it did")
    group_ids: list[str]
    group_versions: list[int] = Field(description="policy version that generated each group")
    staleness_max: int = Field(description="version minus the oldest group's version")
    actor_versions: dict[str, int] = Field(description="actor id -> version it had loaded")
    seconds: dict[str, float] = Field(description="phase -> seconds: wait, prepare, train, publish, checkpoint")
    train: TrainStats
    eval: EvalSummary | None = Field(None, description="a held-out round that finished during this step")


class SwapLag(_Record):
    """How long after its publication an actor served a version: seconds, and learner steps recorded meanwhile
    (0 = before the next step's record). None when the actor never served it."""

    version: int
    actor: str
    seconds: float | None
    steps: int | None


class ActorStats(BaseModel):
    """A rollout actor's totals, counted as it runs and returned when it stops. `gen_seconds` sums each group's own
    generation latency (groups in flight overlap); `busy_seconds` is wall time with at least one prompt in flight."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    actor_id: str = ""
    loaded_version: int = -1
    tokens: int = 0
    gen_seconds: float = 0.0
    busy_seconds: float = 0.0
    groups_sent: int = 0
    swaps: int = 0
    swap_seconds: float = 0.0
    reconnects: int = 0
    groups_resent: int = 0

    @property
    def tokens_per_s(self) -> float:
        return round(self.tokens / self.busy_seconds, 1) if self.busy_seconds else 0.0


class RunSummary(_Record):
    """What `rlctl run` reports at the end and writes to <run_dir>/summary.json."""

    records: list[StepRecord]
    actors: list[ActorStats]
    counters: dict[str, int]
    reward_metrics: dict[str, float] = Field(description="samples read from the reward service's exporter")
    swap_lag: list[SwapLag]
    seconds: float = Field(description="the whole run, start to stop")
    run_dir: str


def read_stats(path: Path) -> list[StepRecord]:
    """The step records of a run's stats.jsonl, in order. A last line cut short (the learner died mid-write) is left
    out; any other bad line raises ValueError naming the file and line."""
    lines = [(i, x) for i, x in enumerate(Path(path).read_text().splitlines(), 1) if x.strip()]
    records = []
    for i, line in lines:
        try:
            records.append(StepRecord.model_validate_json(line))
        except ValidationError as e:
            if i == lines[-1][0]:
                break
            raise ValueError(f"{path}:{i}: not a step record: {e.errors()[0]['msg']}") from None
    return records
