"""The real loop on loopback: embedded Redis, Ray, gRPC reward server, 2 vLLM actors, DeepSpeed learner.

Asserted from Redis: each group comes from one actor and one version; completions counted into the reward
service equal completions scored and groups written; versions are published and reach every actor.
"""

from pathlib import Path

import pytest
from rich.console import Console

from rlctl.local import RunHooks, run_local
from services.common.config import load_config
from services.common.control import EVALS, GROUPS, ControlPlane
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from tests import tracker_readers

pytestmark = pytest.mark.integration


def _listening_addresses():
    """(ip, port, process name) of every TCP listener owned by this process or its descendants."""
    import psutil

    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    out = []
    for p in procs:
        try:
            for c in p.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN:
                    out.append((c.laddr.ip, c.laddr.port, p.name()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


@pytest.fixture(scope="module")
def loop(tiny_assets, tmp_path_factory):
    """(config, summary, what was seen while the services were up) of one 6-step run with 2 actors, reporting to
    every experiment tracker (W&B offline)."""
    run_dir = tmp_path_factory.mktemp("loop") / "run"
    cfg = load_config(None, ["learner.steps=6", "learner.publish_every=2", "learner.eval_every=3",
                             "rollout.num_actors=2", f"run_dir={run_dir}", "data.synth_eval=4",
                             "tracking.backends=[tensorboard,wandb,mlflow]", "tracking.samples_every=3",
                             "tracking.tags=[loop-test]", "tracking.wandb_mode=offline"])
    seen: dict = {}

    # Every socket while every service is up; the streams once the actors stopped, before the run's Redis goes away.
    def before_stop(run):
        seen["listening"] = _listening_addresses()

    def after_stop(run):
        cp = ControlPlane(run.url, cfg.run_id)
        seen["groups"] = [pb.ScoredGroup.FromString(f[b"group"]) for _, f in cp.r.xrange(cp.key(GROUPS))]
        seen["evals"] = [pb.ScoredGroup.FromString(f[b"group"]) for _, f in cp.r.xrange(cp.key(EVALS))]
        seen["counters"] = cp.counters()
        seen["version"] = cp.current_version()
        seen["actors"] = cp.actors()

    summary = run_local(cfg, Console(quiet=True), hooks=RunHooks(before_stop, after_stop))
    return cfg, summary, seen


def test_two_actors_full_loop(loop):
    cfg, summary, seen = loop
    loopback = ("127.", "::ffff:127.", "::1")
    off_loopback = [a for a in seen["listening"] if not a[0].startswith(loopback)]
    assert not off_loopback, f"processes of the run listen beyond loopback: {off_loopback}"
    recs = summary.records
    assert [r.step for r in recs] == list(range(1, 7))
    assert [r.published for r in recs if r.published] == [1, 2, 3]
    assert seen["version"] == 3
    k = cfg.group_size
    for g in seen["groups"] + seen["evals"]:
        assert len(g.completions) == (k if g.prompt.split == "train" else cfg.rollout.eval_samples)
        assert {c.actor_id for c in g.completions} == {g.actor_id}
        assert {c.policy_version for c in g.completions} == {g.policy_version}
        assert len(g.rewards) == len(g.completions)
        assert all(len(c.logprobs) == len(c.completion_token_ids) for c in g.completions)
    assert {g.actor_id for g in seen["groups"]} == {"rollout-0", "rollout-1"}, "both actors contributed"
    c = seen["counters"]
    written = k * c.get("groups_written", 0) + cfg.rollout.eval_samples * c.get("eval_groups_written", 0)
    assert c["completions_received"] == c["completions_scored"]
    assert written <= c["completions_received"] <= written + k * c.get("groups_duplicate", 0)
    assert len(seen["groups"]) == c["groups_written"] and len(seen["evals"]) == c.get("eval_groups_written", 0)
    # the learner recomputes the sampled tokens' log-probs as vLLM reported them: a misaligned batch
    # (off-by-one, wrong prompt tokens, missing M-RoPE types) would differ by nats, not hundredths. Only step 1 is
    # exact (both hold version 0); later steps also see the policy move since the sampling version.
    diffs = [round(r.train.logp_diff_vs_behaviour, 4) for r in recs]
    assert diffs[0] < 0.01 and all(d < 1.0 for d in diffs), diffs
    # no group older than max_staleness was trained on
    assert all(r.staleness_max <= cfg.learner.max_staleness for r in recs)
    # every actor reached the last version before being stopped
    assert {a.loaded_version for a in seen["actors"]} == {3}
    assert (Path(cfg.run_dir) / "stats.jsonl").read_text().count("\n") == 6
    evals = [r.eval for r in recs if r.eval]
    assert evals and evals[0].round == 0 and evals[0].fed_at_step == 0      # the curve starts before step 1
    assert set(evals[0].per_task) == {"direction"} and 0.0 <= evals[0].accuracy <= 1.0
    assert evals[0].groups == 4


@pytest.mark.parametrize("reader", [tracker_readers.tensorboard, tracker_readers.mlflow, tracker_readers.wandb],
                         ids=["tensorboard", "mlflow", "wandb"])
def test_every_tracker_holds_the_steps_the_held_out_curve_and_the_samples(loop, reader):
    cfg, summary, _ = loop
    recs, k = summary.records, cfg.group_size
    got = reader(Path(cfg.run_dir))
    assert got.finished
    loss = got.scalars["train/loss"]
    assert sorted(loss) == [1, 2, 3, 4, 5, 6]
    assert [loss[r.step] for r in recs] == pytest.approx([r.train.loss for r in recs], rel=1e-6)
    for key in ("reward/mcq", "reward/answer_format", "train/kl_mean", "train/clip_frac", "train/adv_std",
                "staleness/max", "drops/stale", "time/train", "actors/version/rollout-0"):
        assert sorted(got.scalars[key]) == [1, 2, 3, 4, 5, 6], key
    evals = {r.step: r.eval.per_task["direction"] for r in recs if r.eval}
    assert evals and got.scalars["eval/direction/accuracy"] == pytest.approx(evals)
    assert sorted(got.samples) == [3, 6]
    for step, rows in got.samples.items():   # samples_prompts (2) prompts with their K completions each
        assert len(rows) == 2 * k and {str(r["step"]) for r in rows} == {str(step)}
        assert {"completion", "reward", "video", "reward/mcq"} <= set(rows[0])
        assert all(Path(r["video"]).suffix == ".mp4" for r in rows)
    learner = got.config.get("learner.steps") or got.config["learner"]["steps"]   # flat in MLflow, nested elsewhere
    assert str(learner) == "6"


def test_rlctl_eval_scores_every_held_out_row_once_through_the_actors(tiny_assets, tmp_path):
    from rlctl.evaluate import run_eval

    cfg = load_config(None, ["rollout.num_actors=1", f"run_dir={tmp_path / 'eval'}", "data.synth_eval=4"])
    summary = run_eval(cfg, Console(quiet=True), timeout_s=300)
    assert summary.rows == summary.groups == 4 and summary.quarantined == 0
    assert summary.versions == [0] and set(summary.per_task) == {"direction"}
    assert set(summary.components["direction"]) == {"mcq", "answer_format"}
