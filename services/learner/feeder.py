"""The prompt feeder, owned by the learner's driver: keeps a bounded number of train prompts queued in
the Redis stream ahead of the actors, and feeds the held-out split on request.

Each feeding of a row gets a fresh prompt id (`<kind>-<counter>-<row id>`), the unit of exactly-once
scoring; the order of train rows is a seeded shuffle per epoch, so a run is reproducible, unless
`data.sampling` picks rows by difficulty (services/learner/difficulty.py), from the pass rates the driver
reports with `observe()`. `state()` and
`restore()` carry that cursor through a checkpoint; prompt ids stay unique across a restart because the
counter resumes from the larger of the checkpoint's and Redis' `prompts_fed`.
"""

from __future__ import annotations

import random
from typing import Any

from services.common.config import FilterSampling, Sampling, TargetSampling
from services.common.control import ControlPlane
from services.common.dataset import Row
from services.learner.difficulty import DifficultySampler


class PromptFeeder:
    def __init__(self, control: ControlPlane, train: list[Row], eval_rows: list[Row], ahead: int, seed: int,
                 sampling: Sampling | None = None):
        self.control, self.train, self.eval_rows, self.ahead = control, train, eval_rows, ahead
        self.rng = random.Random(seed)
        self.order: list[int] = []
        self.fed = 0
        self.eval_rounds = 0
        self.sampler: DifficultySampler | None = None
        ids = [row.id for row in train]
        if isinstance(sampling, FilterSampling):
            self.sampler = DifficultySampler(ids, rule="filter", pass_reward=sampling.pass_reward,
                                             p_min=sampling.pass_min, p_max=sampling.pass_max,
                                             explore=sampling.explore, seed=seed)
        elif isinstance(sampling, TargetSampling):
            self.sampler = DifficultySampler(ids, rule="target", pass_reward=sampling.pass_reward,
                                             target=sampling.target_pass, width=sampling.target_width,
                                             explore=sampling.explore, seed=seed)

    def observe(self, sample_id: str, rewards: list[float]) -> None:
        """A train group's rewards under the current policy: updates that row's pass rate (difficulty)."""
        if self.sampler is not None:
            self.sampler.observe(sample_id, rewards)

    def _next_row(self) -> Row:
        if self.sampler is not None:
            return self.train[self.sampler.next_index()]
        if not self.order:
            self.order = list(range(len(self.train)))
            self.rng.shuffle(self.order)
        return self.train[self.order.pop()]

    def top_up(self) -> int:
        """Queue train prompts until `ahead` are in flight (queued, generating, or scored but not yet consumed by
        the learner); bounding the sum, not just the prompt queue, bounds both memory and staleness."""
        deficit = self.ahead - self.control.in_flight()
        batch = []
        for _ in range(max(0, deficit)):
            row = self._next_row()
            prompt_id = f"train-{self.fed}-{row.id}"
            batch.append((prompt_id, row.to_prompt(prompt_id).SerializeToString()))
            self.fed += 1
        self.control.feed_prompts(batch, "prompts_fed")   # one round trip, however many (bench/scale_sim_bench.py)
        return len(batch)

    def state(self) -> dict[str, Any]:
        """The data cursor and RNG, as JSON-able values."""
        version, internal, gauss = self.rng.getstate()
        state = {"fed": self.fed, "eval_rounds": self.eval_rounds, "order": list(self.order),
                 "rng": [version, list(internal), gauss]}
        if self.sampler is not None:
            state["pass_rate"] = dict(self.sampler.pass_rate)
        return state

    def restore(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.order = list(state["order"])
        self.eval_rounds = int(state["eval_rounds"])
        self.fed = max(int(state["fed"]), self.control.counters().get("prompts_fed", 0))
        if self.sampler is not None:
            self.sampler.pass_rate.update(state.get("pass_rate", {}))

    def feed_eval(self) -> int:
        """Queue the whole held-out split once; returns its size."""
        batch = []
        for row in self.eval_rows:
            prompt = row.to_prompt(f"eval-{self.eval_rounds}-{row.id}")
            prompt.split = "eval"  # whatever the file says: held-out groups must never reach training
            batch.append((prompt.prompt_id, prompt.SerializeToString()))
        self.control.feed_prompts(batch)
        self.eval_rounds += 1
        return len(self.eval_rows)
