"""Kill the learner mid-step and resume it from its last checkpoint, in-process against a real Redis, with a
fake rollout at the edge (prompts turned into made-up scored groups by the policy version current in Redis).

Asserted: the resumed learner continues the step counter from the checkpoint, publishes versions above every
version before the crash, first trains the groups the dead learner had taken but not finished (none is lost),
and the group ledger shows no group trained twice, also when an already-trained group is delivered again.
"""

import random

import pytest
from learner_fakes import fake_group, synth_rows, tiny_model

from services.common.config import RunConfig
from services.common.control import GROUPS
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.common.weights import manifest_for_dir
from services.learner import checkpoint
from services.learner.driver import LearnerDriver
from services.learner.engine import LearnerEngine

pytestmark = [pytest.mark.integration, pytest.mark.slow]
K = 2


class Crash(RuntimeError):
    pass


def _driver(cfg, redis_server, model, rows, resume=False):
    d = LearnerDriver(cfg, redis_server.url, model, rows, [], resume=resume)
    rng, real_top_up = random.Random(len(str(resume))), d.feeder.top_up

    def top_up_and_roll_out():  # the actors and the reward service, faked: every queued prompt becomes a group
        n = real_top_up()
        for entry_id, payload in d.control.take_prompts("fake-actor", 64, 1, 60_000):
            prompt = pb.Prompt.FromString(payload)
            g = fake_group(prompt, d.control.current_version() or 0, K, rng)
            d.control.write_group(prompt.prompt_id, g.SerializeToString(), K, held_out=False)
            d.control.ack_prompt(entry_id)
        return n

    d.feeder.top_up = top_up_and_roll_out
    return d


def test_kill_and_resume(control, redis_server, tmp_path, monkeypatch):
    model, rows = tiny_model(tmp_path / "model"), synth_rows(tmp_path / "synth", 8)
    cfg = RunConfig(run_id=control.run_id, run_dir=tmp_path / "run", group_size=K, rollout={"max_new_tokens": 8},
                    learner={"steps": 6, "groups_per_step": 2, "publish_every": 1, "checkpoint_every": 2,
                             "eval_every": 0, "prefetch_prompts": 3, "lr": 1e-3})
    control.publish_version(manifest_for_dir(model, 0))

    real_step, calls = LearnerEngine.train_step, []

    def dies_in_step_4(self, batch, group_size):
        calls.append(1)
        if len(calls) == 4:
            raise Crash("learner killed mid-step")
        return real_step(self, batch, group_size)

    monkeypatch.setattr(LearnerEngine, "train_step", dies_in_step_4)
    with pytest.raises(Crash):
        _driver(cfg, redis_server, model, rows).run()
    records = control.step_records()
    assert [r.step for r in records] == [1, 2, 3] and control.current_version() == 3
    assert checkpoint.load_state(checkpoint.latest(tmp_path / "run" / "checkpoints"))["step"] == 2
    pending = [pb.ScoredGroup.FromString(p).group_id for _, p in control.pending_groups(GROUPS, "learner-0", 100)]
    assert len(pending) == 2  # step 4's groups: taken, never trained, never acked
    trained_before = [gid for r in records for gid in r.group_ids]
    [(_, first_group)] = control.r.xrange(control.key(GROUPS), count=1)
    control.r.xadd(control.key(GROUPS), first_group)  # an already-trained group delivered again

    monkeypatch.setattr(LearnerEngine, "train_step", real_step)
    second = _driver(cfg, redis_server, model, rows, resume=True)
    resumed = second.run()
    assert [r.step for r in resumed] == [3, 4, 5, 6]  # continues after the checkpoint's step 2
    assert [r.published for r in resumed] == [4, 5, 6, 7]  # above every version published before the crash
    assert set(pending) <= set(resumed[0].group_ids)  # the dead learner's unfinished groups come first
    trained = trained_before + [gid for r in resumed for gid in r.group_ids]
    assert len(trained) == len(set(trained)) == len(control.ledger())  # no group trained twice
    counters = control.counters()
    assert "groups_trained_twice" not in counters and counters["groups_dropped:already_trained"] >= 1
    state = checkpoint.load_state(checkpoint.latest(tmp_path / "run" / "checkpoints"))
    assert (state["step"], state["version"]) == (6, 7) and set(state["ledger"]) == control.ledger()
    # prompt ids stay unique across the restart even though the data cursor went back to step 2's
    prompt_ids = [pb.Prompt.FromString(f[b"prompt"]).prompt_id
                  for _, f in control.r.xrange(control.key("stream:prompts"))]
    assert len(prompt_ids) == len(set(prompt_ids))
