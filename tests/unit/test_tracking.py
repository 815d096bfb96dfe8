"""Experiment trackers (services/learner/tracking.py): what a step becomes, and a slow or failing tracker never
holding training up. The backends themselves meet their own readers in tests/integration (a real run)."""

from __future__ import annotations

import doctest
import logging
import math
import threading

import pytest
from pydantic import ValidationError

from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.common.records import EvalSummary
from services.common.tracking_config import TrackingConfig
from services.learner import tracking_records
from services.learner.tracking import Tracker
from services.learner.tracking_records import RunInfo, Samples, sample_table, step_scalars
from tests.step_records import step_record


def _group(prompt_id: str, version: int, mcq: list[float], fmt: list[float]) -> pb.ScoredGroup:
    total = [m + 0.1 * f for m, f in zip(mcq, fmt, strict=True)]
    return pb.ScoredGroup(
        prompt_id=prompt_id, group_id=f"{prompt_id}/v{version}", policy_version=version, rewards=total,
        prompt=pb.Prompt(prompt_id=prompt_id, task="direction", video_uri=f"/videos/{prompt_id}.mp4",
                         question="Which way?", answer="B"),
        completions=[pb.Completion(text=f"<answer>{'AB'[i % 2]}</answer>", sample_index=i) for i in range(len(mcq))],
        components=[pb.RewardComponent(name="mcq", weight=1.0, values=mcq),
                    pb.RewardComponent(name="answer_format", weight=0.1, values=fmt)])


def test_a_step_becomes_scalars_per_reward_component_phase_actor_drop_and_eval():
    groups = [_group("p1", 3, [1.0, 0.0], [1.0, 1.0]), _group("p2", 2, [float("nan"), 1.0], [0.0, 1.0])]
    ev = EvalSummary(accuracy=0.75, per_task={"direction": 0.75}, components={"direction": {"mcq": 0.75}},
                     groups=4, versions=[3], round=1)
    rec = step_record(7, version=4, group_ids=["p1/v3", "p2/v2"], group_versions=[3, 2], staleness_max=2,
                      actor_versions={"rollout-0": 4, "rollout-1": 3}, seconds={"wait": 0.5, "train": 1.25},
                      eval=ev, time=110.0)
    s = step_scalars(rec, groups, {"stale": 2, "zero_variance": 0}, since=100.0)
    assert s["reward/mcq"] == pytest.approx(2 / 3)                # the unscorable (NaN) completion is left out
    assert s["reward/answer_format"] == pytest.approx(0.75)
    assert math.isnan(groups[1].rewards[0]) and s["reward/total"] == pytest.approx((1.1 + 0.1 + 1.1) / 3)
    assert s["staleness/max"] == 2 and s["staleness/mean"] == pytest.approx(1.5)
    assert s["drops/stale"] == 2 and s["drops/zero_variance"] == 0
    assert s["time/wait"] == 0.5 and s["time/train"] == 1.25
    assert s["actors/version/rollout-1"] == 3 and s["version"] == 4
    assert s["eval/direction/accuracy"] == 0.75 and s["eval/direction/reward/mcq"] == 0.75 and s["eval/round"] == 1
    assert s["throughput/groups_per_s"] == pytest.approx(0.2) and s["train/loss"] == 0.0
    assert not [(a, b) for a in s for b in s if b.startswith(a + "/")]   # no key is another's folder (MLflow)
    plain = step_scalars(step_record(1), [], {}, since=None)
    assert not any(k.startswith(("eval/", "throughput/", "reward/")) for k in plain)


def test_the_samples_table_holds_every_completion_of_the_first_prompts_with_its_rewards():
    groups = [_group(f"p{i}", 1, [1.0, 0.0, 1.0], [1.0, 0.0, 1.0]) for i in range(3)]
    t = sample_table(5, groups, prompts=2)
    assert t.columns[-2:] == ["reward/answer_format", "reward/mcq"]
    assert len(t.rows) == 6 and {r[1] for r in t.rows} == {"p0", "p1"}
    row = dict(zip(t.columns, t.rows[1], strict=True))
    assert row == {"step": 5, "prompt_id": "p0", "task": "direction", "video": "/videos/p0.mp4",
                   "question": "Which way?", "answer": "B", "policy_version": 1, "sample": 1,
                   "completion": "<answer>B</answer>", "reward": 0.0, "reward/answer_format": 0.0,
                   "reward/mcq": 0.0}


class _Recorder:
    """A backend that keeps what it is given; `gate` holds it inside `start` until set."""

    def __init__(self, name="recorder", gate: threading.Event | None = None, fail_on: int | None = None):
        self.name, self.gate, self.fail_on = name, gate, fail_on
        self.got: list = []
        self.closed = False

    def start(self, tc, run):
        if self.gate is not None:
            self.gate.wait()
        return f"{self.name}-id"

    def scalars(self, step, values):
        if step == self.fail_on:
            raise ConnectionError("tracking server went away")
        self.got.append((step, values))

    def samples(self, table):
        self.got.append(table)

    def close(self):
        self.closed = True

    def where(self):
        return "memory"


def _tracker(tmp_path, *backends, **tc) -> Tracker:
    return Tracker(TrackingConfig(**tc), RunInfo(tmp_path, "run", {}), list(backends))


def test_a_failing_tracker_is_logged_once_and_the_others_get_everything(tmp_path, caplog):
    bad, good = _Recorder("bad", fail_on=2), _Recorder("good")
    t = _tracker(tmp_path, bad, good)
    with caplog.at_level(logging.WARNING, "videorl.tracking"):
        for step in range(1, 6):
            t.scalars(step, {"train/loss": 1.0 / step, "reward/mcq": float("nan")})
        t.samples(Samples(5, ["step"], [[5]]))
        problems = t.close()
    assert problems == {"bad": "ConnectionError: tracking server went away"}
    assert [s for s, _ in bad.got] == [1] and not bad.closed
    assert [s for s, _ in good.got[:-1]] == [1, 2, 3, 4, 5] and good.closed
    assert good.got[0][1] == {"train/loss": 1.0}                # NaN is not sent: trackers plot it as a gap
    assert isinstance(good.got[-1], Samples)
    failed = [r for r in caplog.records if "bad failed" in r.getMessage()]
    assert len(failed) == 1 and "training goes on" in failed[0].getMessage()
    assert (tmp_path / "tracking.json").exists()                 # the run ids a resumed learner reuses


def test_a_tracker_that_falls_behind_drops_its_oldest_records_and_never_blocks_the_step(tmp_path):
    gate = threading.Event()
    slow = _Recorder("slow", gate=gate)
    t = _tracker(tmp_path, slow, queue=3, close_timeout_s=10)
    for step in range(1, 11):        # returns while the backend is held inside start(): nothing waits for it
        t.scalars(step, {"x": step})
    gate.set()
    problems = t.close()
    assert [s for s, _ in slow.got] == [8, 9, 10]
    assert problems == {"slow": "7 records dropped while it fell behind"}


def test_a_tracker_that_never_starts_is_reported_and_close_returns(tmp_path):
    stuck = _Recorder("stuck", gate=threading.Event())       # never set: an unreachable server's endless retries
    t = _tracker(tmp_path, stuck, close_timeout_s=0.2)
    t.scalars(1, {"x": 1.0})
    assert t.close() == {"stuck": "could not start in the whole run (unreachable?): nothing was written"}


def test_a_resumed_run_reuses_the_trackers_run_ids(tmp_path):
    (tmp_path / "tracking.json").write_text('{"wandb": "abc123"}')
    t = Tracker.open(TrackingConfig(), tmp_path, "local", {}, resume=True)
    assert t.run.ids == {"wandb": "abc123"} and t.workers == []
    assert Tracker.open(TrackingConfig(), tmp_path, "local", {}).run.ids == {}   # a new run starts new ones


def test_tracking_config_refuses_unknown_and_repeated_backends():
    with pytest.raises(ValidationError, match="comet"):
        TrackingConfig(backends=["comet"])
    with pytest.raises(ValidationError, match="named twice"):
        TrackingConfig(backends=["wandb", "wandb"])


def test_a_wandb_mode_other_than_online_or_offline_fails_that_tracker_naming_the_variable(tmp_path, monkeypatch):
    from services.learner.tracking_backends import WandB

    monkeypatch.setenv("WANDB_MODE", "dryrun")
    with pytest.raises(ValueError, match="WANDB_MODE='dryrun'"):
        WandB().start(TrackingConfig(backends=["wandb"]), RunInfo(tmp_path, "run", {}))


def test_doctests():
    assert doctest.testmod(tracking_records).failed == 0


def test_wandb_goes_online_only_with_a_key_or_when_told(monkeypatch, tmp_path):
    from services.learner.tracking_records import look_at, wandb_mode

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    tc = TrackingConfig(backends=["wandb"])
    assert wandb_mode(tc) == "offline" and "wandb sync" in look_at(tc, tmp_path)[0]
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_mode(tc) == "online" and "online" in look_at(tc, tmp_path)[0]
    assert wandb_mode(TrackingConfig(backends=["wandb"], wandb_mode="offline")) == "offline"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode(tc) == "offline"
