"""What the experiment trackers are given (services/learner/tracking.py feeds them): a step as flat scalars, a
samples table, the run's config as flat params, and the `Backend` protocol the three trackers implement
(tracking_backends.py)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from services.common.tracking_config import TrackingConfig

if TYPE_CHECKING:
    from services.common.pb.videorl.v1 import rollout_pb2 as pb
    from services.common.records import StepRecord

SAMPLE_COLUMNS = ["step", "prompt_id", "task", "video", "question", "answer", "policy_version", "sample",
                  "completion", "reward"]


@dataclass(frozen=True)
class Samples:
    """A table of completions: one row per completion, `columns` naming each value."""

    step: int
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class RunInfo:
    """What every backend is started with: where the run writes, its name, and the ids a resumed run reuses."""

    run_dir: Path
    name: str
    hparams: dict[str, Any]
    ids: dict[str, str] = field(default_factory=dict)   # backend -> its run id (tracking.json)


class Backend(Protocol):
    name: str

    def start(self, tc: TrackingConfig, run: RunInfo) -> str | None:
        """Open the run (hyper-parameters logged once); returns its id to reuse on resume, if it has one."""

    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def samples(self, table: Samples) -> None: ...

    def close(self) -> None: ...

    def where(self) -> str:
        """Where the run can be looked at, for the log."""


def wandb_mode(tc: TrackingConfig) -> Literal["online", "offline"]:
    """tracking.wandb_mode, else WANDB_MODE, else online when WANDB_API_KEY is set, else offline."""
    mode = tc.wandb_mode or os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    if mode not in ("online", "offline"):
        raise ValueError(f"WANDB_MODE={mode!r}: tracking.wandb takes online or offline (or remove wandb from "
                         "tracking.backends)")
    return "online" if mode == "online" else "offline"


def look_at(tc: TrackingConfig, run_dir: Path) -> list[str]:
    """How to open each tracker's view of the run (printed at the end of `rlctl run` and `rlctl sft`).

    >>> look_at(TrackingConfig(backends=["tensorboard", "mlflow"], mlflow_uri="http://mlflow:5000"), Path("runs/a"))
    ['tensorboard: tensorboard --logdir runs/a/tb', 'mlflow: experiment videorl at http://mlflow:5000']
    """
    try:
        online = "wandb" in tc.backends and wandb_mode(tc) == "online"
    except ValueError as e:
        online, bad = False, str(e)
    else:
        bad = ""
    offline = f"{run_dir / 'wandb'} (offline; upload with wandb sync {run_dir / 'wandb'}/offline-run-*)"
    where = {"tensorboard": f"tensorboard --logdir {run_dir / 'tb'}",
             "wandb": bad or (f"project {tc.project}, online (its address is in the learner's log)" if online else
                              offline),
             "mlflow": f"experiment {tc.project} at {tc.mlflow_uri or (run_dir / 'mlruns')}"}
    return [f"{b}: {where[b]}" for b in tc.backends]


def step_scalars(rec: StepRecord, groups: list[pb.ScoredGroup], dropped: Mapping[str, float],
                 since: float | None) -> dict[str, float]:
    """One learner step as flat tracker scalars: train/*, reward/<component>, staleness, drops/<reason> (totals),
    time/<phase>, eval/* when a held-out round finished, actors/version/<actor>, throughput since `since`. No key
    is a folder of another (MLflow's file store keeps each key as a path)."""
    out: dict[str, float] = {f"train/{k}": v for k, v in rec.train.model_dump().items() if v is not None}
    out["version"] = rec.version
    components: dict[str, list[float]] = {}
    for g in groups:
        components.setdefault("total", []).extend(g.rewards)
        for c in g.components:
            components.setdefault(c.name, []).extend(c.values)
    for name, values in components.items():
        finite = [v for v in values if math.isfinite(v)]
        if finite:
            out[f"reward/{name}"] = sum(finite) / len(finite)
    staleness = [rec.version - v for v in rec.group_versions] or [0]
    out |= {"staleness/max": rec.staleness_max, "staleness/mean": sum(staleness) / len(staleness)}
    out |= {f"drops/{reason}": n for reason, n in dropped.items()}
    out |= {f"time/{phase}": s for phase, s in rec.seconds.items()}
    out |= {f"actors/version/{actor}": v for actor, v in rec.actor_versions.items()}
    if since is not None and rec.time > since:
        out |= {"throughput/groups_per_s": len(rec.group_ids) / (rec.time - since),
                "throughput/steps_per_s": 1.0 / (rec.time - since)}
    if rec.eval is not None:
        out["eval/accuracy"] = rec.eval.accuracy
        out |= {f"eval/{task}/accuracy": acc for task, acc in rec.eval.per_task.items()}
        out |= {f"eval/{task}/reward/{name}": v for task, comps in rec.eval.components.items()
                for name, v in comps.items()}
        if rec.eval.round is not None:
            out["eval/round"] = rec.eval.round
    return out


def sample_table(step: int, groups: list[pb.ScoredGroup], prompts: int) -> Samples:
    """The first `prompts` groups with every completion, its total reward and each reward component."""
    names = sorted({c.name for g in groups[:prompts] for c in g.components})
    rows = []
    for g in groups[:prompts]:
        per = {c.name: list(c.values) for c in g.components}
        for i, c in enumerate(g.completions):
            reward = g.rewards[i] if i < len(g.rewards) else float("nan")
            rows.append([step, g.prompt_id, g.prompt.task, g.prompt.video_uri, g.prompt.question, g.prompt.answer,
                         g.policy_version, i, c.text, reward,
                         *[per[n][i] if n in per and i < len(per[n]) else float("nan") for n in names]])
    return Samples(step, SAMPLE_COLUMNS + [f"reward/{n}" for n in names], rows)


def flat_params(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as dotted keys with string values (MLflow's params).

    >>> flat_params({"learner": {"lr": 0.1, "loss": {"agg": "token"}}, "tags": [1, 2]})
    {'learner.lr': '0.1', 'learner.loss.agg': 'token', 'tags': '[1, 2]'}
    """
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out |= flat_params(v, key + ".")
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return out
