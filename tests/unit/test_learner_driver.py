"""The learner driver's collection phase against a real Redis: staleness drops, acks, feeder bounds."""

import time

from services.common.config import RunConfig
from services.common.control import GROUPS
from services.common.dataset import Row
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.learner.driver import LearnerDriver


def _driver(control, redis_server, tmp_path, **learner):
    cfg = RunConfig(run_id=control.run_id, run_dir=tmp_path, learner={"max_staleness": 2, "prefetch_prompts": 3,
                                                                     **learner})
    rows = [Row(f"r{i}", "/v.mp4", "mcq", "q", "A", ("x", "y")) for i in range(5)]
    return LearnerDriver(cfg, redis_server.url, tmp_path, rows, rows[:2])


def _write(control, prompt_id, version):
    g = pb.ScoredGroup(prompt_id=prompt_id, group_id=f"{prompt_id}/v{version}", policy_version=version)
    control.write_group(prompt_id, g.SerializeToString(), 2, held_out=False)


def test_groups_older_than_max_staleness_are_dropped_counted_and_acked(control, redis_server, tmp_path):
    d = _driver(control, redis_server, tmp_path)
    d.version = 5
    for pid, v in (("old", 2), ("edge", 3), ("new", 5)):
        _write(control, pid, v)
    got = d._collect(2)
    assert [g.prompt_id for _, g in got] == ["edge", "new"]         # 5 - 3 = 2 is allowed, 5 - 2 = 3 is not
    assert control.counters()["groups_dropped:stale"] == 1
    assert d.registry.get_sample_value("videorl_learner_groups_dropped_total", {"reason": "stale"}) == 1
    assert d.registry.get_sample_value("videorl_learner_group_staleness_versions_count") == 3   # dropped ones too
    assert d.registry.get_sample_value("videorl_learner_group_staleness_versions_sum") == 3 + 2 + 0
    pending = control.r.xpending(control.key(GROUPS), "learner")["pending"]
    assert pending == 2            # the dropped one is acked; the two taken stay pending until trained on
    for entry_id, _ in got:
        control.ack_group(GROUPS, entry_id)
    assert control.r.xpending(control.key(GROUPS), "learner")["pending"] == 0


def test_feeder_bounds_prompts_plus_unconsumed_groups(control, redis_server, tmp_path):
    d = _driver(control, redis_server, tmp_path)
    assert d.feeder.top_up() == 3
    assert d.feeder.top_up() == 0                     # 3 in flight already
    _write(control, "scored-but-unconsumed", 0)
    for entry_id, _ in control.take_prompts("a0", 3, 10, 60_000):
        control.ack_prompt(entry_id)                  # actors finished all three...
    assert d.feeder.top_up() == 2                     # ...but one group still waits for the learner
    assert d.feeder.feed_eval() == 2
    evals = [pb.Prompt.FromString(p) for _, p in control.take_prompts("a0", 10, 10, 60_000)]
    assert {p.split for p in evals if p.prompt_id.startswith("eval-")} == {"eval"}


def _write_rewards(control, prompt_id, rewards, version=0):
    g = pb.ScoredGroup(prompt_id=prompt_id, group_id=f"{prompt_id}/v{version}", policy_version=version,
                       rewards=rewards)
    control.write_group(prompt_id, g.SerializeToString(), len(rewards), held_out=False)


def test_zero_variance_groups_are_kept_by_default(control, redis_server, tmp_path):
    d = _driver(control, redis_server, tmp_path)
    _write_rewards(control, "flat", [1.0, 1.0])
    _write_rewards(control, "mixed", [0.0, 1.0])
    assert [g.prompt_id for _, g in d._collect(2)] == ["flat", "mixed"]


def test_zero_variance_filter_trains_on_the_informative_ones_among_n(control, redis_server, tmp_path):
    d = _driver(control, redis_server, tmp_path, filter_zero_variance=True, zero_variance_tol=0.05)
    _write_rewards(control, "flat", [0.5, 0.52, float("nan")])  # within the tolerance: no signal
    _write_rewards(control, "mixed", [0.0, 1.0, 1.0])
    _write_rewards(control, "later", [0.0, 1.0, 0.0])
    assert [g.prompt_id for _, g in d._collect(2)] == ["mixed"]  # 2 drawn, 1 informative: a smaller step
    assert control.counters()["groups_dropped:zero_variance"] == 1


def test_dynamic_sampling_draws_until_enough_informative_groups(control, redis_server, tmp_path):
    d = _driver(control, redis_server, tmp_path, filter_zero_variance=True, dynamic_sampling=True)
    for pid, rewards in (("f1", [1.0, 1.0]), ("m1", [0.0, 1.0]), ("f2", [0.0, 0.0]), ("f3", [0.2, 0.2]),
                         ("m2", [1.0, 0.0]), ("m3", [0.0, 1.0])):
        _write_rewards(control, pid, rewards)
    assert [g.prompt_id for _, g in d._collect(2)] == ["m1", "m2"]
    assert control.counters()["groups_dropped:zero_variance"] == 3
    assert [g.prompt_id for _, g in d._collect(1)] == ["m3"]


def test_a_restarted_learner_rereads_its_pending_groups_and_skips_trained_ones(control, redis_server, tmp_path):
    first = _driver(control, redis_server, tmp_path)
    for pid in ("a", "b", "c", "d"):
        _write(control, pid, 0)
    taken = first._collect(3)  # then it dies: a and b were trained (ledger + ack), c was not
    first._mark_trained(taken[:2])
    again = pb.ScoredGroup(prompt_id="a", group_id="a/v0", policy_version=0)  # a replay of a trained group
    control.r.xadd(control.key(GROUPS), {"group": again.SerializeToString()})
    _write(control, "e", 0)
    second = _driver(control, redis_server, tmp_path)
    got = second._collect(3)
    assert [g.prompt_id for _, g in got] == ["c", "d", "e"]  # c from its pending list first, then new ones
    assert control.counters()["groups_dropped:already_trained"] == 1
    second._mark_trained(got)
    assert control.ledger() == {"a/v0", "b/v0", "c/v0", "d/v0", "e/v0"}
    assert "groups_trained_twice" not in control.counters()
    assert control.r.xpending(control.key(GROUPS), "learner")["pending"] == 0


def _eval_group(control, round_no, row_id, task, mcq, version=3, synth=None):
    g = pb.ScoredGroup(prompt_id=f"eval-{round_no}-{row_id}", group_id=f"eval-{round_no}-{row_id}/g",
                       policy_version=version, rewards=[m + 0.1 for m in mcq],
                       prompt=pb.Prompt(sample_id=row_id, task=task, split="eval",
                                        truth=pb.GroundTruth(synth_task=synth or "")),
                       components=[pb.RewardComponent(name="mcq", weight=1.0, values=mcq),
                                   pb.RewardComponent(name="answer_format", weight=0.1, values=[1.0] * len(mcq))])
    control.write_group(g.prompt_id, g.SerializeToString(), len(mcq), held_out=True)


def test_held_out_round_is_reported_once_per_task_with_its_first_component_as_accuracy(control, redis_server,
                                                                                         tmp_path):
    d = _driver(control, redis_server, tmp_path)     # two held-out rows
    d._feed_eval(0)
    _eval_group(control, 0, "r0", "mcq", [1.0], synth="direction")
    d._read_evals()
    assert d._eval_summary() is None                  # round 0 is not complete yet
    _eval_group(control, 0, "r1", "mcq", [0.0, float("nan")], synth="order")  # NaN: unscorable, left out
    d._read_evals()
    s = d._eval_summary()
    assert s.round == 0 and s.fed_at_step == 0 and s.versions == [3]
    assert s.per_task == {"direction": 1.0, "order": 0.0} and s.accuracy == 0.5
    assert s.components["order"] == {"mcq": 0.0, "answer_format": 1.0}
    assert d._eval_summary() is None                  # reported once
    # Two rounds that finish between two records are both reported, oldest first, one per record.
    for r in (1, 2):
        d._feed_eval(r)
        _eval_group(control, r, "r0", "mcq", [1.0], synth="direction")
        _eval_group(control, r, "r1", "mcq", [1.0], synth="order")
    d._read_evals()
    assert [d._eval_summary().round, d._eval_summary().round, d._eval_summary()] == [1, 2, None]


def test_feeder_samples_by_difficulty_from_observed_pass_rates(control, redis_server, tmp_path):
    from services.learner.feeder import PromptFeeder

    rows = [Row(f"r{i}", "/v.mp4", "mcq", "q", "A", ("x", "y")) for i in range(4)]
    cfg = RunConfig(data={"sampling": {"type": "filter", "explore": 0.0}})
    f = PromptFeeder(control, rows, [], ahead=40, seed=0, sampling=cfg.data.sampling)
    f.observe("r0", [1.1, 1.1, 1.1, 1.1])            # solved: p = 1 > 0.7
    f.observe("r1", [0.1, 0.1, 0.1, 0.1])            # hopeless: p = 0
    f.observe("r2", [1.1, 0.1, 0.1, 0.1])            # p = 0.25: kept; r3 unseen: kept
    assert f.top_up() == 40
    fed = {pb.Prompt.FromString(p).sample_id for _, p in control.take_prompts("a0", 40, 10, 60_000)}
    assert fed == {"r2", "r3"}
    assert f.state()["pass_rate"] == {"r0": 1.0, "r1": 0.0, "r2": 0.25}


def test_only_the_newest_keep_versions_and_those_live_actors_serve_stay_on_disk(control, redis_server, tmp_path):
    d = _driver(control, redis_server, tmp_path, keep_versions=4)
    root = tmp_path / "weights"
    for v in range(1, 7):
        (root / f"v{v:06d}").mkdir(parents=True)
    (root / "vnotes").mkdir()                         # not a version: left alone
    control.heartbeat("slow", 1, "running")                 # a live actor still serving v1 keeps it on disk
    control.heartbeat("gone", 2, "stopped")                 # a stopped one does not
    control.heartbeat("dead", 2, "running")
    control.r.hset(control.key("actor:dead"), "heartbeat", time.time() - 60)   # silent for a minute: dead
    d._prune_versions(root, newest=6)
    assert sorted(p.name for p in root.iterdir()) == ["v000001", "v000003", "v000004", "v000005", "v000006", "vnotes"]
    control.heartbeat("slow", 6, "running")                 # it moved on: v1 goes at the next publication
    d._prune_versions(root, newest=6)
    assert sorted(p.name for p in root.iterdir()) == ["v000003", "v000004", "v000005", "v000006", "vnotes"]
