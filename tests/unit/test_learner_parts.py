"""The learner's small parts: config knobs, micro-batch packing, zero-variance test, the group ledger in Redis,
the feeder's resumable cursor and atomic checkpoints."""

import json

import pytest

from rlctl.cli import DEFAULT_CONFIG
from services.common.config import ConfigError, LossConfig, load_config
from services.common.control import GROUPS
from services.common.dataset import Row
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.learner import checkpoint
from services.learner.batch import pack_micro_batches
from services.learner.driver import zero_variance
from services.learner.feeder import PromptFeeder


def test_clip_bounds_default_to_clip_eps():
    assert LossConfig().clip_bounds == (0.2, 0.2)
    assert LossConfig(clip_eps=0.1).clip_bounds == (0.1, 0.1)
    assert LossConfig(clip_eps=0.1, clip_high=0.28).clip_bounds == (0.1, 0.28)
    assert LossConfig(clip_low=0.0).clip_bounds == (0.0, 0.2)


def test_default_config_keeps_todays_learner():
    lc = load_config(DEFAULT_CONFIG).learner
    assert (lc.old_logp, lc.tis_cap, lc.filter_zero_variance, lc.micro_batch_tokens, lc.loss.kl_coef) == (
        "sampler", None, False, None, 0.0)
    assert (lc.grad_clip, lc.num_iterations, lc.checkpoint_every, lc.freeze_vision, lc.loss.agg) == (
        1.0, 1, 0, False, "token_mean")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("learner.tis_cap=2", "needs old_logp=learner"),
        ("learner.dynamic_sampling=true", "needs filter_zero_variance"),
        ("learner.loss.dual_clip=1.0", "greater than 1"),
        ("learner.advantage=rloo", "advantage"),
        ("learner.loss.agg=sum", "learner.loss.agg"),
        ("learner.loss.kl_type=k4", "kl_type"),
        ("learner.kl_coef=0.1", "learner.kl_coef: moved to learner.loss.kl_coef"),
        ("learner.num_iterations=0", "num_iterations"),
        ("learner.clipeps=0.1", "clipeps"),
    ],
)
def test_bad_learner_settings_fail_loudly(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_new_knobs_load():
    lc = load_config(None, ["learner.old_logp=learner", "learner.tis_cap=2", "learner.advantage=loo",
                            "learner.filter_zero_variance=true", "learner.dynamic_sampling=true"]).learner
    assert (lc.tis_cap, lc.advantage, lc.dynamic_sampling) == (2.0, "loo", True)


def test_pack_micro_batches():
    assert pack_micro_batches([10, 12, 30, 5, 5], None) == [[0, 1, 2, 3, 4]]
    # padded size = rows × longest: [10, 12] → 24 ≤ 30; adding 30 → 90; [30] alone; [5, 5] → 10
    assert pack_micro_batches([10, 12, 30, 5, 5], 30) == [[0, 1], [2], [3, 4]]
    assert pack_micro_batches([50, 50], 30) == [[0], [1]]  # over budget: one row each, never dropped
    assert pack_micro_batches([], 30) == []


def test_zero_variance():
    nan = float("nan")
    assert zero_variance([1.0, 1.0, 1.0], 0.0) and zero_variance([0.3, nan, 0.3], 0.0)
    assert zero_variance([nan, 2.0], 0.0) and zero_variance([nan, nan], 0.0)  # fewer than two: no baseline
    assert not zero_variance([0.5, 0.52], 0.01) and zero_variance([0.5, 0.52], 0.021)
    assert not zero_variance([0.0, 1.0, nan], 0.5)


def _write(control, prompt_id, version=0):
    g = pb.ScoredGroup(prompt_id=prompt_id, group_id=f"{prompt_id}/v{version}", policy_version=version)
    control.write_group(prompt_id, g.SerializeToString(), 2, held_out=False)
    return g.group_id


def test_ledger_marks_and_acks_in_one_step(control):
    ids = [_write(control, p) for p in ("a", "b", "c")]
    got = control.read_groups(GROUPS, "learner-0", 3, block_ms=None)
    assert control.mark_trained(GROUPS, [(e, gid) for (e, _), gid in zip(got[:2], ids[:2], strict=True)]) == 2
    assert control.trained(ids) == [True, True, False]
    assert control.r.xpending(control.key(GROUPS), "learner")["pending"] == 1
    # a restarted consumer of the same name gets back what it took and did not finish
    assert [e for e, _ in control.pending_groups(GROUPS, "learner-0", 10)] == [got[2][0]]
    assert control.pending_groups(GROUPS, "learner-1", 10) == []
    # a trained group delivered again (a new entry) is reported: 0 new; the same call replayed changes nothing
    again = control.r.xadd(control.key(GROUPS), {"group": got[0][1]}).decode()
    control.read_groups(GROUPS, "learner-0", 1, block_ms=None)
    assert control.mark_trained(GROUPS, [(again, ids[0])]) == 0
    assert control.mark_trained(GROUPS, [(got[0][0], ids[0])]) == 1
    control.restore_ledger(["z/v0"])
    assert control.ledger() == {ids[0], ids[1], "z/v0"}


def test_feeder_cursor_round_trips_and_prompt_ids_stay_unique(control):
    rows = [Row(f"r{i}", "/v.mp4", "mcq", "q", "A", ("x", "y")) for i in range(5)]
    a = PromptFeeder(control, rows, [], ahead=3, seed=1)
    a.top_up()
    saved = json.loads(json.dumps(a.state()))  # what a checkpoint keeps
    a_next = [a.train[i].id for i in reversed(a.order)]
    a_rng = a.rng.getstate()
    for entry_id, _ in control.take_prompts("x", 10, 10, 60_000):
        control.ack_prompt(entry_id)
    a.top_up()  # fed 3 more after the "checkpoint": ids train-3..5
    b = PromptFeeder(control, rows, [], ahead=3, seed=99)
    b.restore(saved)
    assert [b.train[i].id for i in reversed(b.order)] == a_next  # the same data cursor...
    assert b.fed == 6  # ...but ids continue after the last one Redis saw, so no prompt id is reused
    assert b.rng.getstate() == a_rng  # and the RNG of the next epoch's shuffle
    for entry_id, _ in control.take_prompts("x", 10, 10, 60_000):
        control.ack_prompt(entry_id)
    b.top_up()
    fed = [pb.Prompt.FromString(f[b"prompt"]).prompt_id for _, f in control.r.xrange(control.key("stream:prompts"))]
    assert len(fed) == len(set(fed)) == 9


def test_checkpoint_is_atomic_and_latest_moves_last(tmp_path):
    root = tmp_path / "checkpoints"
    assert checkpoint.latest(root) is None

    def write(d):
        d.mkdir()
        (d / "model.pt").write_bytes(b"x")

    checkpoint.save(root, 2, {"version": 1}, write)
    checkpoint.save(root, 4, {"version": 2}, write)
    assert checkpoint.load_state(checkpoint.latest(root)) == {"step": 4, "version": 2}

    def crash(d):
        d.mkdir()
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        checkpoint.save(root, 6, {"version": 3}, crash)
    assert checkpoint.latest(root).name == "step-000004"  # the half-written one never became current
    assert not (root / "step-000006").exists()
    checkpoint.save(root, 6, {"version": 3}, write)
    checkpoint.save(root, 8, {"version": 4}, write)
    assert sorted(p.name for p in root.glob("step-*")) == ["step-000006", "step-000008"]  # keeps the newest 2
