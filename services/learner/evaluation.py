"""Held-out evaluation records: one scored held-out prompt as an `EvalGroup`, and their summary per task. Used by
the learner's driver (periodic evaluation in a run) and by `rlctl eval` (one pass over a model)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.common.records import EvalSummary


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


@dataclass(frozen=True)
class EvalGroup:
    """One scored held-out prompt: its task (the synthetic task name when the row has one, else its task type),
    the version that answered, its accuracy (mean of the first reward component over its samples, NaN left out)
    and the mean of every component."""

    task: str
    version: int
    accuracy: float
    components: dict[str, float]

    @classmethod
    def of(cls, g: pb.ScoredGroup) -> EvalGroup:
        comps = {c.name: _mean(list(c.values)) for c in g.components}
        first = next(iter(comps.values())) if comps else _mean(list(g.rewards))
        return cls(g.prompt.truth.synth_task or g.prompt.task, g.policy_version, first, comps)


def summarise_eval(groups: list[EvalGroup]) -> EvalSummary:
    """Accuracy overall and per task (the mean of each task's first reward component, e.g. mcq), the mean of every
    component per task, and the versions that answered."""
    by_task: dict[str, list[EvalGroup]] = defaultdict(list)
    for g in groups:
        by_task[g.task].append(g)
    return EvalSummary(
        accuracy=round(_mean([g.accuracy for g in groups]), 4),
        per_task={t: round(_mean([g.accuracy for g in gs]), 4) for t, gs in sorted(by_task.items())},
        components={t: {c: round(_mean([g.components[c] for g in gs if c in g.components]), 4)
                        for c in gs[0].components} for t, gs in sorted(by_task.items())},
        groups=len(groups), versions=sorted({g.version for g in groups}))
