"""Scores one group of K completions with the configured weighted reward components.

A component that returns NaN marks that completion unscorable for it; the weighted total is then NaN
too, never 0, so the learner leaves it out of its group's statistics instead of punishing it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

from services.common.config import RewardComponentConfig
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.reward import rewards

log = logging.getLogger("videorl.reward")


@dataclass(frozen=True)
class GroupScore:
    totals: list[float]                       # one per completion; NaN = unscorable
    components: dict[str, list[float]]        # component name -> one value per completion
    errors: list[str]                         # "<component>: <error>" for each component that raised


class Scorer:
    def __init__(self, components: list[RewardComponentConfig]):
        self.components = [(c.name, c.weight, rewards.get(c.name)) for c in components]

    def score(self, prompt: pb.Prompt, texts: list[str]) -> GroupScore:
        sample = rewards.Sample(task=prompt.task, answer=prompt.answer, options=tuple(prompt.options),
                                extra=json.loads(prompt.extra_json) if prompt.extra_json else {})
        per: dict[str, list[float]] = {}
        errors: list[str] = []
        for name, _w, fn in self.components:
            try:
                per[name] = [float(fn(t, sample)) for t in texts]
            except Exception as e:  # noqa: BLE001 - a bad row must not stop the stream: unscorable, counted
                log.warning("reward %s cannot score prompt %s: %s", name, prompt.prompt_id, e)
                errors.append(f"{name}: {e}")
                per[name] = [math.nan] * len(texts)
        totals = [math.fsum(w * per[name][i] for name, w, _ in self.components) for i in range(len(texts))]
        return GroupScore(totals, per, errors)

    def weights(self) -> dict[str, float]:
        return {name: w for name, w, _ in self.components}
