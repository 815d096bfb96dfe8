"""The reward catalogue: every reward family, registered on import. Adding a reward is its module plus one line
here. Code that looks rewards up by name (the scorer, `rlctl rewards`) imports this module."""

from __future__ import annotations

from services.reward import bbox, graph, mcq, numeric, temporal  # noqa: F401  (each registers its rewards)
from services.reward.registry import REGISTRY, RewardFn, Sample, get

__all__ = ["REGISTRY", "RewardFn", "Sample", "get"]
