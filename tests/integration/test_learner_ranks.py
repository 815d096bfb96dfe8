"""The learner as a group of Ray actors (services/learner/ranks.py), as `rlctl run` forms it with learner.ranks=2.

Asserted: one batch trained by one rank and by a group of two (each rank a Ray actor; gloo; ZeRO-2 with micro-batches,
ZeRO-3 with the KL reference partitioned) gives the same weights to 1e-5, the same gradient norm (so the ranks' loss
scaling adds up to the whole batch's, which Adam's scale invariance would hide in the weights) and the same metrics;
an odd number of groups leaves one rank with fewer micro-batches (padded with weight 0) and, with a single group,
one rank with none; the published directory (ZeRO-3: gathered module by module) holds the trained weights; and a
rank that dies fails the group with LearnerRankLost instead of hanging.
"""

import os
import sys

import pytest
import torch
from learner_fakes import fake_batch, synth_rows, tiny_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Rank0:
    """Rank 0's process, as the LearnerDriver holds it (the driver's Redis duties left out)."""

    def __init__(self, model_dir, cfg, others, batch_size):
        from services.learner.ranks import RankGroup

        torch.manual_seed(0)
        self.group = RankGroup.form(model_dir, cfg, others, batch_size)

    def train(self, batch, k, steps):
        out = []
        for _ in range(steps):
            m = self.group.train_step(batch, k)
            out.append((m, float(self.group.own.engine.get_global_grad_norm())))
        return out

    def weights(self):
        return self.group.full_state_dict()

    def publish(self, out_dir):
        self.group.save_weights(out_dir)


@pytest.fixture(scope="module")
def ray_local():
    import ray
    from ray import cloudpickle

    from rlctl.cluster import ClusterTarget
    from rlctl.local import _ray_init

    cloudpickle.register_pickle_by_value(sys.modules[__name__])   # Ray workers cannot import test modules
    import learner_fakes
    cloudpickle.register_pickle_by_value(learner_fakes)
    _ray_init(ClusterTarget())
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("rank-assets")
    model = tiny_model(d / "model")
    rows = synth_rows(d / "synth", 3)
    return model, fake_batch(model, rows, 2, seed=0)   # 3 groups of K=2


def _cfg(**learner):
    from services.common.config import RunConfig

    return RunConfig(group_size=2, rollout={"max_new_tokens": 8},
                     learner={"lr": 1e-3, "groups_per_step": 3, **learner}).on("cpu")


def _load(model_dir):
    """A model directory's weights in the module's own names (HF renames some tensors on save)."""
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32).state_dict()


def _train(ray, model, cfg, batch, ranks, steps=2):
    from services.learner.ranks import LearnerRank

    env = {"env_vars": {"OMP_NUM_THREADS": "1"}}
    others = [ray.remote(max_concurrency=2)(LearnerRank).options(num_cpus=0, runtime_env=env).remote(cfg, str(model))
              for _ in range(ranks - 1)]
    rank0 = ray.remote(Rank0).options(num_cpus=0, runtime_env=env).remote(model, cfg, others, len(batch))
    return rank0, others, ray.get(rank0.train.remote(batch, 2, steps), timeout=600)


@pytest.mark.parametrize("learner", [
    {"zero_stage": 2, "micro_batch_tokens": 1},                         # one sequence per micro-batch: 4 vs 2, padded
    {"zero_stage": 3, "loss": {"kl_coef": 0.1}},                        # the reference partitioned too
], ids=["zero2-micro", "zero3-kl"])
def test_two_ranks_train_what_one_rank_trains(ray_local, assets, tmp_path, learner):
    ray, (model, batch) = ray_local, assets
    cfg = _cfg(**learner)
    one, _, stats1 = _train(ray, model, cfg, batch, ranks=1)
    two, others, stats2 = _train(ray, model, cfg, batch, ranks=2)
    w1, w2 = ray.get(one.weights.remote()), ray.get(two.weights.remote())
    assert w1.keys() == w2.keys()
    worst = max(float((w1[n] - w2[n]).abs().max()) for n in w1)
    assert worst <= 1e-5, worst
    for (m1, g1), (m2, g2) in zip(stats1, stats2, strict=True):
        assert g1 == pytest.approx(g2, rel=1e-5), "gradient norms: the ranks' losses do not add up to the batch's"
        for k in ("loss", "pg_loss", "kl_mean", "tokens", "clip_frac", "reward_mean", "adv_std"):
            assert getattr(m1, k) == pytest.approx(getattr(m2, k), rel=1e-5, abs=1e-7), k
    assert stats2[0][0].micro_batches == (4 if "micro_batch_tokens" in learner else 1)   # rank 0: 2 groups
    initial = _load(model)
    moved = [n for n in w1 if not torch.equal(w1[n], initial[n])]
    assert len(moved) > len(w1) // 2, "training moved most tensors"

    out = tmp_path / "published"
    ray.get(two.publish.remote(out))   # every rank takes part; rank 0 writes
    published = _load(out)
    assert published.keys() == w2.keys()
    for n, w in published.items():
        assert torch.equal(w, w2[n]), n
    for h in [one, two, *others]:
        ray.kill(h)


def test_one_group_leaves_a_rank_without_one_and_still_matches(ray_local, assets):
    ray, (model, batch) = ray_local, assets
    from services.learner.ranks import split_groups

    single = batch.select([0, 1])
    assert split_groups(2, 2, 2) == [[0, 1], []]
    cfg = _cfg(zero_stage=2)
    one, _, s1 = _train(ray, model, cfg, single, ranks=1, steps=1)
    two, others, s2 = _train(ray, model, cfg, single, ranks=2, steps=1)
    w1, w2 = ray.get(one.weights.remote()), ray.get(two.weights.remote())
    assert max(float((w1[n] - w2[n]).abs().max()) for n in w1) <= 1e-5
    assert s1[0][1] == pytest.approx(s2[0][1], rel=1e-5)
    for h in [one, two, *others]:
        ray.kill(h)


def test_a_rank_that_dies_fails_the_group_with_learner_rank_lost(ray_local, assets):
    ray, (model, batch) = ray_local, assets
    from services.learner.ranks import LearnerRankLost

    two, others, _ = _train(ray, model, _cfg(zero_stage=2), batch, ranks=2, steps=1)
    pid = ray.get(others[0].__ray_call__.remote(lambda _self: os.getpid()))
    os.kill(pid, 9)
    with pytest.raises(ray.exceptions.RayTaskError) as e:
        ray.get(two.train.remote(batch, 2, 1), timeout=300)
    assert isinstance(e.value.cause, LearnerRankLost), e.value
    assert "learner rank 1 died" in str(e.value.cause)
    ray.kill(two)
