"""A learner step record with everything a test does not care about filled in (services/common/records.py)."""

from __future__ import annotations

import time

from services.common.records import StepRecord, TrainStats

_TRAIN = dict.fromkeys(("loss", "pg_loss", "kl_mean", "ratio_mean", "clip_frac", "clip_frac_low", "clip_frac_high",
                        "dual_clip_frac", "tokens", "adv_abs_mean", "adv_std", "adv_min", "adv_max", "micro_batches"),
                       0.0)


def step_record(step: int, reward_mean: float = 0.0, **fields) -> StepRecord:
    base = {"step": step, "time": time.time(), "version": 0, "group_ids": [], "group_versions": [],
            "staleness_max": 0, "actor_versions": {}, "seconds": {},
            "train": TrainStats(**_TRAIN, reward_mean=reward_mean)}
    return StepRecord(**(base | fields))
