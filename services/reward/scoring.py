"""Scores one group of K completions with the weighted reward components configured for its task.

Invariants this module keeps:

- A prompt's components are `reward.tasks[prompt.task]` when that task is listed, else `reward.components`.
  Components are computed in list order; each one's values (one per completion) are returned and logged
  under its key (label, else name), so the scored group records every term, not only the total.
- A gated component counts for a completion only when its gate (an earlier component) scored >= gate_min
  there: below that its value is 0.0 and it is not computed at all (no judge call is spent on an answer
  that is already wrong); a NaN gate makes it NaN.
- NaN marks a completion unscorable for a component. The weighted total is then NaN too, never 0, so the
  learner leaves it out of its group's statistics instead of punishing it. Weight-0 components are logged
  (or gate) without entering the total. A component that raises (a malformed row) is NaN for the whole
  group, and the error is returned and counted; nothing raised here stops the stream.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.config import ConfigError
from services.common.ground_truth import GroundTruth, GroundTruthError
from services.common.metrics import check_name
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.common.reward_config import RewardComponentConfig, RewardConfig
from services.reward import catalogue
from services.reward.judge import JudgeClient, JudgeReward

log = logging.getLogger("videorl.reward")
STATS_WINDOW = 1024  # scorable values per component behind the mean/std gauges


class AsyncReward(Protocol):
    """A reward that may do I/O (the judge): scores a whole group at once, one value per completion."""

    async def score_many(self, completions: Sequence[str], sample: catalogue.Sample, question: str) -> list[float]: ...


class PureReward:
    """A registered pure reward ``fn(completion, sample)`` as an ``AsyncReward``; it runs inline (its work is
    bounded by the registry's invariants), so it costs no thread hop."""

    def __init__(self, fn: catalogue.RewardFn):
        self.fn = fn

    async def score_many(self, completions: Sequence[str], sample: catalogue.Sample, question: str) -> list[float]:
        return [float(self.fn(c, sample)) for c in completions]


@dataclass(frozen=True)
class Component:
    key: str
    weight: float
    gate: str | None
    gate_min: float
    reward: AsyncReward


@dataclass(frozen=True)
class GroupScore:
    totals: list[float]                       # one per completion; NaN = unscorable
    components: dict[str, list[float]]        # component key -> one value per completion (after gating)
    weights: dict[str, float]                 # component key -> weight
    errors: list[str]                         # "<component>: <error>" for each component that raised


class ScoringMetrics:
    def __init__(self, registry: CollectorRegistry):
        label = ["component"]
        self.completions = Counter(check_name("videorl_reward_component_completions_total"),
                                   "completions scored by each component", label, registry=registry)
        self.seconds = Histogram(check_name("videorl_reward_component_seconds"),
                                 "time for one component to score one group", label, registry=registry,
                                 buckets=(1e-4, 5e-4, .001, .005, .01, .05, .1, .5, 1, 5, 30, 120))
        self.unscorable = Counter(check_name("videorl_reward_component_unscorable_total"),
                                  "completions a component scored NaN (unscorable)", label, registry=registry)
        self.gated = Counter(check_name("videorl_reward_component_gated_total"),
                             "completions a component was gated off for (value 0, not computed)", label,
                             registry=registry)
        self.errors = Counter(check_name("videorl_reward_component_errors_total"),
                              "groups a component raised on (all NaN)", label, registry=registry)
        self.mean = Gauge(check_name("videorl_reward_component_mean_value"),
                          f"mean of each component's last {STATS_WINDOW} scorable values", label, registry=registry)
        self.std = Gauge(check_name("videorl_reward_component_std_value"),
                         f"std of each component's last {STATS_WINDOW} scorable values", label, registry=registry)
        self._window: dict[str, deque[float]] = {}

    def declare(self, key: str) -> None:
        """Create a component's counters at 0, so a clean run shows 0 unscorable, not "no data"."""
        for counter in (self.completions, self.unscorable, self.gated, self.errors):
            counter.labels(key)

    def observe(self, key: str, values: list[float], gated: int, seconds: float) -> None:
        self.completions.labels(key).inc(len(values))
        self.seconds.labels(key).observe(seconds)
        if gated:
            self.gated.labels(key).inc(gated)
        window = self._window.setdefault(key, deque(maxlen=STATS_WINDOW))
        scorable = [v for v in values if not math.isnan(v)]
        if len(scorable) < len(values):
            self.unscorable.labels(key).inc(len(values) - len(scorable))
        if scorable:
            window.extend(scorable)
            mean = math.fsum(window) / len(window)
            self.mean.labels(key).set(mean)
            self.std.labels(key).set(math.sqrt(math.fsum((v - mean) ** 2 for v in window) / len(window)))


class Scorer:
    """Built once per service from `reward` config; `score` is called per group from the event loop."""

    def __init__(self, cfg: RewardConfig | Sequence[RewardComponentConfig], registry: CollectorRegistry | None = None,
                 judge: JudgeClient | None = None):
        if not isinstance(cfg, RewardConfig):
            cfg = RewardConfig(components=list(cfg))
        registry = registry or CollectorRegistry()
        self.metrics = ScoringMetrics(registry)
        uses_judge = any(c.name == "judge" for c in [*cfg.components, *(c for cs in cfg.tasks.values() for c in cs)])
        self.judge = judge or (JudgeClient(cfg.judge, registry) if uses_judge else None)
        self.default = self._build("reward.components", cfg.components)
        self.tasks = {task: self._build(f"reward.tasks.{task}", comps) for task, comps in cfg.tasks.items()}

    def _build(self, where: str, comps: list[RewardComponentConfig]) -> list[Component]:
        built = []
        for i, c in enumerate(comps):
            reward: AsyncReward
            if c.name == "judge":
                assert self.judge is not None and c.rubric is not None  # RewardConfig validated both
                reward = JudgeReward(self.judge, c.rubric)
            else:
                try:
                    reward = PureReward(catalogue.get(c.name))
                except KeyError as e:
                    raise ConfigError(f"{where}[{i}].name: {e.args[0]}") from None
            built.append(Component(c.key, c.weight, c.gate, c.gate_min, reward))
            self.metrics.declare(c.key)
        return built

    def components_for(self, task: str) -> list[Component]:
        return self.tasks.get(task, self.default)

    async def score(self, prompt: pb.Prompt, texts: list[str]) -> GroupScore:
        comps = self.components_for(prompt.task)
        per: dict[str, list[float]] = {}
        errors: list[str] = []
        try:  # checked when the dataset was read; checked again here, against a foreign writer of the stream
            truth = GroundTruth.from_proto(prompt.truth)
        except GroundTruthError as e:
            log.warning("prompt %s has unusable ground truth: %s", prompt.prompt_id, e)
            nan = [math.nan] * len(texts)
            for c in comps:
                self.metrics.errors.labels(c.key).inc()
                self.metrics.observe(c.key, nan, 0, 0.0)
            return GroupScore(list(nan), {c.key: list(nan) for c in comps}, {c.key: c.weight for c in comps},
                              [f"truth: {e}"])
        sample = catalogue.Sample(task=prompt.task, answer=prompt.answer, options=tuple(prompt.options),
                                  extra=truth.target())
        for comp in comps:
            t0 = time.perf_counter()
            per[comp.key], gated, error = await self._component(comp, per, sample, prompt.question, texts)
            if error:
                log.warning("reward %s cannot score prompt %s: %s", comp.key, prompt.prompt_id, error)
                errors.append(f"{comp.key}: {error}")
                self.metrics.errors.labels(comp.key).inc()
            elif unscorable := [i for i, v in enumerate(per[comp.key]) if math.isnan(v)]:
                # the reason was logged where it arose (the judge); this names the item it belongs to
                log.warning("reward %s: completions %s of prompt %s (row %s) are unscorable", comp.key, unscorable,
                            prompt.prompt_id, prompt.sample_id)
            self.metrics.observe(comp.key, per[comp.key], gated, time.perf_counter() - t0)
        counted = [c for c in comps if c.weight != 0]
        totals = [math.fsum(c.weight * per[c.key][i] for c in counted) for i in range(len(texts))]
        return GroupScore(totals, per, {c.key: c.weight for c in comps}, errors)

    @staticmethod
    async def _component(comp: Component, per: dict[str, list[float]], sample: catalogue.Sample, question: str,
                         texts: list[str]) -> tuple[list[float], int, str]:
        """(values, how many were gated off, error or '') of one component over the group."""
        values = [0.0] * len(texts)
        todo, gated = list(range(len(texts))), 0
        if comp.gate is not None:
            gate = per[comp.gate]
            values = [math.nan if math.isnan(g) else 0.0 for g in gate]
            todo = [i for i, g in enumerate(gate) if g >= comp.gate_min]  # NaN >= x is False
            gated = len(texts) - len(todo) - sum(1 for g in gate if math.isnan(g))
        if not todo:
            return values, gated, ""
        try:
            got = await comp.reward.score_many([texts[i] for i in todo], sample, question)
            if len(got) != len(todo):
                raise ValueError(f"returned {len(got)} values for {len(todo)} completions")
        except Exception as e:  # noqa: BLE001 - a bad row must not stop the stream: unscorable, counted
            return [math.nan] * len(texts), 0, f"{type(e).__name__}: {e}"
        for i, v in zip(todo, got, strict=True):
            values[i] = float(v)
        return values, gated, ""

    async def aclose(self) -> None:
        if self.judge is not None:
            await self.judge.aclose()
