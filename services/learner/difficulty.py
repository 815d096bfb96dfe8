"""Difficulty-controlled prompt sampling (TVG-R1, Time-R1): estimate each train row's difficulty from the
current policy's pass rate on it, and pick the next rows by a configurable rule.

A row's pass rate p is the fraction of the K completions of its latest groups whose total reward reached
`pass_reward`, smoothed over the row's groups by an exponential moving average (`ema`: weight of the newest
group), so it follows the policy as it improves. Rules:

- ``uniform``: every row equally likely (a seeded shuffle per epoch; what the feeder does without this).
- ``filter``: rows with ``p_min < p <= p_max`` (default 0 < p <= 0.7: not yet solved, not hopeless). Rows
  never seen are always eligible; with probability ``explore`` a draw ignores the rule, so rows filtered out
  get measured again as the policy changes instead of being frozen out for good.
- ``target``: rows weighted by exp(−(p − target)² / (2·width²)), unseen rows at p = target (the highest
  weight), plus the same ``explore`` fraction of uniform draws.

Invariants: the sampler never returns a row outside the train list; it never loops forever (when no row is
eligible it falls back to uniform and counts it); draws are reproducible from the seed and the observations.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

Rule = Literal["uniform", "filter", "target"]


@dataclass
class DifficultySampler:
    ids: Sequence[str]                      # the train rows' ids, in row order
    rule: Rule = "uniform"
    pass_reward: float = 1.0
    p_min: float = 0.0
    p_max: float = 0.7
    target: float = 0.5
    width: float = 0.2
    explore: float = 0.1
    ema: float = 0.5
    seed: int = 0
    pass_rate: dict[str, float] = field(default_factory=dict)
    fallbacks: int = 0                      # draws where no row was eligible under the rule

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._index = {row_id: i for i, row_id in enumerate(self.ids)}
        self._order: list[int] = []

    def observe(self, row_id: str, rewards: Sequence[float]) -> float | None:
        """Update a row's pass rate from one group's total rewards (NaN = unscorable, left out)."""
        scored = [r for r in rewards if not math.isnan(r)]
        if row_id not in self._index or not scored:
            return None
        p = sum(r >= self.pass_reward for r in scored) / len(scored)
        old = self.pass_rate.get(row_id)
        self.pass_rate[row_id] = p if old is None else (1 - self.ema) * old + self.ema * p
        return self.pass_rate[row_id]

    def next_index(self) -> int:
        """The index (into `ids`) of the next row to feed."""
        if self.rule == "uniform" or self.rng.random() < self.explore:
            return self._uniform()
        if self.rule == "filter":
            eligible = [i for i, row_id in enumerate(self.ids) if self._eligible(row_id)]
            if not eligible:
                self.fallbacks += 1
                return self._uniform()
            return self.rng.choice(eligible)
        weights = [self._weight(row_id) for row_id in self.ids]
        return self.rng.choices(range(len(self.ids)), weights=weights)[0]

    def _uniform(self) -> int:
        if not self._order:
            self._order = list(range(len(self.ids)))
            self.rng.shuffle(self._order)
        return self._order.pop()

    def _eligible(self, row_id: str) -> bool:
        p = self.pass_rate.get(row_id)
        return p is None or self.p_min < p <= self.p_max

    def _weight(self, row_id: str) -> float:
        p = self.pass_rate.get(row_id, self.target)
        return math.exp(-((p - self.target) ** 2) / (2 * self.width**2)) + 1e-12

    def summary(self) -> dict[str, float]:
        """How many rows are measured, their mean pass rate, and the share the rule currently allows."""
        rates = list(self.pass_rate.values())
        allowed = sum(self._eligible(row_id) for row_id in self.ids) / max(1, len(self.ids))
        return {"measured": len(rates), "pass_rate_mean": sum(rates) / len(rates) if rates else float("nan"),
                "eligible_share": allowed, "fallbacks": self.fallbacks}
