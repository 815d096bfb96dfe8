"""The reward registry: rewards are pure functions registered by name. A leaf: it imports no reward family.

Invariants every registered reward keeps:

- A reward is a pure function ``fn(completion: str, sample: Sample) -> float``: no I/O, nothing global
  written, the same inputs give the same output, and no ``str`` completion makes it raise. A malformed
  ``Sample`` (for example an answer letter beyond its options) does raise ``ValueError``: that is a data
  bug to fix, not a model output to score.
- The value is in [0, 1], or ``float("nan")`` for "unscorable" (the learner leaves such a sample out of
  its group's statistics).
- Work is bounded on huge completions (``services.reward.text`` says how).

Each family module registers its rewards on import; ``services.reward.catalogue`` imports them all, so code
that looks rewards up by name imports the catalogue, not this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Sample:
    """What a reward knows about the question a completion answers.

    ``options`` are the bare option texts in letter order (A, B, …); a leading label such as ``"B. "`` on
    an option is tolerated. ``extra`` holds task-specific targets (``num_options`` when the texts are unknown).
    """

    task: str
    answer: str
    options: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


RewardFn = Callable[[str, Sample], float]

_REGISTRY: dict[str, RewardFn] = {}
REGISTRY: Mapping[str, RewardFn] = MappingProxyType(_REGISTRY)


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """Register a reward under ``name``; a second registration of the same name is a bug and raises.

    >>> @register("always_one")
    ... def always_one(completion: str, sample: Sample) -> float:
    ...     return 1.0
    >>> get("always_one")("anything", Sample(task="t", answer=""))
    1.0
    >>> del _REGISTRY["always_one"]  # keep the doctest from leaking into the registry
    """

    def decorate(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY:
            raise ValueError(f"reward {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return decorate


def get(name: str) -> RewardFn:
    """The reward registered as ``name``; ``KeyError`` names the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown reward {name!r}; known rewards: {', '.join(sorted(_REGISTRY))}") from None
