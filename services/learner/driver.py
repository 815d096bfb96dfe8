"""The learner's driver loop, read top to bottom: collect groups -> build batch -> GRPO step -> publish.

Invariants kept here:
- a group older than `max_staleness` versions is never trained on: it is dropped and counted; so is a
  zero-variance group when `filter_zero_variance` is set (it carries no signal);
- a group is acked in Redis only after the step that used it (or its drop), in the same transaction that
  adds it to the group ledger, so a crash mid-step leaves it pending (a restarted learner reads its own
  pending groups first) instead of lost, and a group in the ledger is never trained on again;
- a version is published only after its files are written, fsynced and hashed (weights.write_version),
  and the version number continues from Redis and the weights on disk, so it stays monotonic across
  learner restarts;
- a checkpoint holds only steps whose groups are in the ledger, and a resumed run continues its step
  counter from the checkpoint.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.config import RunConfig
from services.common.control import EVALS, GROUPS, ControlPlane
from services.common.dataset import Row
from services.common.metrics import ControlPlaneCollector, check_name, exporter_address
from services.common.metrics import serve as serve_metrics
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.common.records import EvalSummary, StepRecord, TrainStats
from services.common.weights import list_versions, write_version
from services.learner import checkpoint
from services.learner.evaluation import EvalGroup, summarise_eval
from services.learner.feeder import PromptFeeder

if TYPE_CHECKING:
    from services.learner.publish import BroadcastPublisher
    from services.learner.tracking import Tracker

log = logging.getLogger("videorl.learner")
CONSUMER = "learner-0"
DROP_REASONS = ("stale", "already_trained", "zero_variance", "prompt_mismatch")
PHASES = ("wait", "prepare", "train", "publish", "checkpoint")   # each timed by LearnerDriver._phase


def zero_variance(rewards: list[float], tol: float) -> bool:
    """True when the finite rewards of a group are all within `tol` of each other (fewer than two: no signal).

    >>> zero_variance([1.0, 1.0, float("nan")], 0.0), zero_variance([0.5, 0.52], 0.05), zero_variance([0, 1], 0.5)
    (True, True, False)
    """
    finite = [r for r in rewards if math.isfinite(r)]
    return len(finite) < 2 or max(finite) - min(finite) <= tol


class LearnerMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.phase = Histogram(check_name("videorl_learner_phase_seconds"), "time per learner phase", ["phase"],
                               registry=registry)
        self.steps = Counter(check_name("videorl_learner_steps_total"), "learner steps", registry=registry)
        self.dropped = Counter(check_name("videorl_learner_groups_dropped_total"), "groups not trained on",
                               ["reason"], registry=registry)
        self.corrected = Counter(check_name("videorl_learner_groups_corrected_total"),
                                 "stale groups trained with truncated importance sampling", registry=registry)
        self.version = Gauge(check_name("videorl_learner_policy_version"), "latest published version",
                             registry=registry)
        self.eval_accuracy = Gauge(check_name("videorl_learner_eval_accuracy_ratio"),
                                   "held-out accuracy of the newest complete evaluation round", ["task"],
                                   registry=registry)
        self.loss = Gauge(check_name("videorl_learner_loss_value"), "GRPO loss of the last step", registry=registry)
        self.reward = Gauge(check_name("videorl_learner_reward_mean_value"), "mean reward of the last step's groups",
                            registry=registry)
        self.kl = Gauge(check_name("videorl_learner_kl_value"), "mean per-token KL to the reference of the last step",
                        registry=registry)
        self.clip = Gauge(check_name("videorl_learner_clip_fraction_ratio"),
                          "fraction of the last step's tokens whose ratio was clipped", registry=registry)
        self.advantage = Gauge(check_name("videorl_learner_advantage_value"),
                               "advantages of the last step's completions (abs_mean, std, min, max)", ["stat"],
                               registry=registry)
        self.staleness = Histogram(check_name("videorl_learner_group_staleness_versions"),
                                   "versions between the learner's policy and a group's, for every group read",
                                   registry=registry, buckets=(0, 1, 2, 3, 4, 6, 8, 12, 16))
        for reason in DROP_REASONS:  # 0 from the start: a clean run shows no drops, not "no data"
            self.dropped.labels(reason)
        for phase in PHASES:  # from the first scrape too: steps that all fall between two scrapes still have a rate
            self.phase.labels(phase)

    def step(self, m: TrainStats) -> None:
        """The last step's training statistics."""
        self.steps.inc()
        self.loss.set(m.loss)
        self.reward.set(m.reward_mean)
        self.kl.set(m.kl_mean)
        self.clip.set(m.clip_frac)
        for stat, value in (("abs_mean", m.adv_abs_mean), ("std", m.adv_std), ("min", m.adv_min), ("max", m.adv_max)):
            self.advantage.labels(stat).set(value)


class LearnerDriver:
    def __init__(self, cfg: RunConfig, redis_url: str, model_dir: Path, train: list[Row], eval_rows: list[Row],
                 registry: CollectorRegistry | None = None, resume: bool = False, ranks: list | None = None):
        """`ranks`: handles of the learner group's other ranks (services/learner/ranks.py LearnerRank), 1.. in order;
        this process is rank 0."""
        self.cfg, self.model_dir, self.resume, self.ranks = cfg, Path(model_dir), resume, list(ranks or [])
        self.control = ControlPlane(redis_url, cfg.run_id, cfg.redis.reconnect_s)
        self.feeder = PromptFeeder(self.control, train, eval_rows, cfg.learner.prefetch_prompts, cfg.seed,
                                   sampling=cfg.data.sampling)
        self.registry = registry or CollectorRegistry()
        self.metrics = LearnerMetrics(self.registry)
        # The control plane's gauges live here: one learner driver exists in every kind of run (metrics.py).
        self.registry.register(ControlPlaneCollector(self.control, live_timeout_s=5 * cfg.rollout.heartbeat_s))
        self.stats_path = Path(cfg.run_dir) / "stats.jsonl"
        self.eval_rounds: dict[int, list[EvalGroup]] = defaultdict(list)
        self.eval_fed: dict[int, tuple[int, float]] = {}                 # round -> (step fed after, time)
        self.eval_reported: set[int] = set()
        self.version = 0
        self.timings: dict[str, float] = {}
        self.checkpoints = Path(cfg.run_dir) / "checkpoints"
        self._pending: list[tuple[str, bytes]] | None = None  # this consumer's unacked groups, read once a step
        self.weights_root = Path(cfg.run_dir) / "weights"
        self.publisher: BroadcastPublisher | None = None   # weights.transport broadcast
        self.tracker: Tracker | None = None                # tracking.backends
        self.drops = dict.fromkeys(DROP_REASONS, 0)        # groups not trained on, by reason, by this process
        self._last_record_time: float | None = None

    @contextmanager
    def _phase(self, name: str):
        t0 = time.perf_counter()
        yield
        self.timings[name] = dt = time.perf_counter() - t0
        self.metrics.phase.labels(name).observe(dt)

    def run(self) -> list[StepRecord]:
        from transformers import AutoProcessor

        from services.learner.batch import BatchBuilder
        from services.learner.ranks import RankGroup

        lc, k = self.cfg.learner, self.cfg.group_size
        self.control.register_exporter("learner", exporter_address(serve_metrics(self.registry)))
        self.engine = RankGroup.form(self.model_dir, self.cfg, self.ranks, batch_size=lc.groups_per_step * k)
        if self.cfg.weights.transport == "broadcast":
            from services.learner.publish import BroadcastPublisher

            self.publisher = BroadcastPublisher(self.cfg, self.control, self.engine, self.weights_root, self.registry)
        self.builder = BatchBuilder(AutoProcessor.from_pretrained(str(self.model_dir)), self.cfg.media)
        first = self._restore() + 1 if self.resume else 1
        self.version = self.control.current_version() or 0
        self.stats_path.parent.mkdir(parents=True, exist_ok=True)
        records: list[StepRecord] = []
        if self.cfg.tracking.backends:
            from services.learner.tracking import Tracker

            self.tracker = Tracker.open(self.cfg.tracking, Path(self.cfg.run_dir), self.cfg.run_id,
                                        self.cfg.model_dump(mode="json"), resume=self.resume)
        if lc.eval_every and not self.resume:
            self._feed_eval(0)  # the starting point of the held-out curve
        try:
            for step in range(first, lc.steps + 1):
                records.append(self._step(step))
                if step < lc.steps and self.control.stop_requested() is not None:
                    self._stop_early(step)
                    break
        finally:
            if self.publisher is not None:
                self.publisher.wait_copy()
                self.publisher.close()
            if self.tracker is not None:
                self.tracker.close()
        return records

    def _step(self, step: int) -> StepRecord:
        lc, k = self.cfg.learner, self.cfg.group_size
        self.timings = {}
        # Between steps this learner holds no group unacked (each was trained and acked, or dropped and acked),
        # so any pending under its name was delivered and never seen: left by a learner that died, or a
        # delivery whose reply a Redis restart lost. Those are read first.
        self._pending = None
        self._read_evals(orphans=True)
        with self._phase("wait"):
            groups = self._collect(lc.groups_per_step)
        with self._phase("prepare"):
            batch, mismatched = self.builder.build([g for _, g in groups])
        with self._phase("train"):
            m = self.engine.train_step(batch, k)
        self._mark_trained(groups)
        if mismatched:
            self.drops["prompt_mismatch"] += mismatched
            self.metrics.dropped.labels("prompt_mismatch").inc(mismatched)
            self.control.incr("groups_dropped:prompt_mismatch", mismatched)
        published = None
        if step % lc.publish_every == 0 or step == lc.steps:
            with self._phase("publish"):
                published = self._publish(step)
        if lc.eval_every and step % lc.eval_every == 0:
            self._feed_eval(step)
        if lc.checkpoint_every and (step % lc.checkpoint_every == 0 or step == lc.steps):
            with self._phase("checkpoint"):
                self._checkpoint(step)
        return self._record(step, groups, m, published)

    def _stop_early(self, step: int) -> None:
        """An operator asked the run to stop (`rlctl stop`, POST /v1/stop): checkpoint this step (unless it just
        was), so `rlctl run --resume` continues from it, and end."""
        lc = self.cfg.learner
        log.info("stop requested: ending after step %d of %d", step, lc.steps)
        if not (lc.checkpoint_every and step % lc.checkpoint_every == 0):
            self._checkpoint(step)

    # -- phases ----------------------------------------------------------------------------------
    def _collect(self, n: int) -> list[tuple[str, pb.ScoredGroup]]:
        """Wait for n fresh train groups, dropping (and acking) stale ones, ones already trained on, and, with
        filter_zero_variance, ones without signal. Without dynamic_sampling a step trains on the informative
        ones among n fresh groups (at least one); with it, draws on until n are informative."""
        lc = self.cfg.learner
        need = n if lc.dynamic_sampling else 1
        out: list[tuple[str, pb.ScoredGroup]] = []
        fresh = 0
        while fresh < n or len(out) < need:
            self.feeder.top_up()
            if self.publisher is not None:
                self.publisher.serve_joiners()
            self._read_evals()
            entries = self._next_groups(max(n - fresh, need - len(out)))
            groups = [pb.ScoredGroup.FromString(payload) for _, payload in entries]
            for g in groups:
                self.feeder.observe(g.prompt.sample_id, list(g.rewards))
            seen = self.control.trained([g.group_id for g in groups])
            for g, trained in zip(groups, seen, strict=True):
                if not trained:
                    self.metrics.staleness.observe(self.version - g.policy_version)
            for (entry_id, _), g, trained in zip(entries, groups, seen, strict=True):
                if trained:
                    self._drop(entry_id, "already_trained")
                elif self.version - g.policy_version > lc.max_staleness:
                    self._drop(entry_id, "stale")
                else:
                    fresh += 1
                    if lc.filter_zero_variance and zero_variance(list(g.rewards), lc.zero_variance_tol):
                        self._drop(entry_id, "zero_variance")
                        if fresh == 8 * n and len(out) < need:  # unbounded on purpose, but never silent
                            log.warning("dynamic sampling: %d of %d groups drawn this step had no reward variance",
                                        fresh - len(out), fresh)
                    else:
                        out.append((entry_id, g))
        return out

    def _next_groups(self, count: int) -> list[tuple[str, bytes]]:
        """This consumer's pending groups first (left by a crashed run under the same name), then new ones."""
        if self._pending is None:
            self._pending = self.control.pending_groups(GROUPS, CONSUMER, 10_000)
            if self._pending:
                log.info("re-reading %d groups taken under this learner's name and never finished (a learner that "
                         "died, or a reply lost to a Redis restart)", len(self._pending))
        if self._pending:
            taken, self._pending = self._pending[:count], self._pending[count:]
            return taken
        return self.control.read_groups(GROUPS, CONSUMER, count, block_ms=200)

    def _drop(self, entry_id: str, reason: str) -> None:
        self.drops[reason] += 1
        self.metrics.dropped.labels(reason).inc()
        self.control.incr(f"groups_dropped:{reason}")
        self.control.ack_group(GROUPS, entry_id)

    def _mark_trained(self, groups: list[tuple[str, pb.ScoredGroup]]) -> None:
        """Ledger + ack in one transaction; a group the ledger already held is a bug upstream, counted loudly."""
        new = self.control.mark_trained(GROUPS, [(entry_id, g.group_id) for entry_id, g in groups])
        if new < len(groups):
            log.error("%d groups of this step were already in the ledger", len(groups) - new)
            self.control.incr("groups_trained_twice", len(groups) - new)
        if self.cfg.learner.tis_cap is not None:
            stale = sum(1 for _, g in groups if g.policy_version < self.version)
            self.metrics.corrected.inc(stale)
            if stale:
                self.control.incr("groups_corrected:tis", stale)

    def _publish(self, step: int) -> int:
        root = self.weights_root
        on_disk = max((v for v, _ in list_versions(root)), default=0)
        version = max(self.control.current_version() or 0, on_disk) + 1
        if self.publisher is not None:
            manifest = self.publisher.publish(version, step)
        else:
            manifest = write_version(root, version, step, self.engine.save_weights)
            self.control.publish_version(manifest)
        self.version = version
        self.metrics.version.set(version)
        log.info("published version %d at step %d (%d bytes)", version, step, manifest.bytes)
        self._prune_versions(root, version)
        return version

    def _prune_versions(self, root: Path, newest: int) -> None:
        """Delete versions older than the newest `keep_versions` that no live actor reports as loaded (invariant 6):
        an actor that serves an old version (its swap failed, or it is slow) keeps its files until it moves on. Live:
        not stopped, and a heartbeat within the last 5 periods (a dead actor's record would pin its version). The newest
        folder stays too: under the broadcast transport it is the disk copy late joiners start from."""
        import shutil

        now, silent_s = time.time(), 5 * self.cfg.rollout.heartbeat_s
        in_use = {a.loaded_version for a in self.control.actors()
                  if a.state != "stopped" and now - a.heartbeat <= silent_s}
        for version, path in list_versions(root)[:-1]:
            if version <= newest - self.cfg.learner.keep_versions and version not in in_use:
                shutil.rmtree(path, ignore_errors=True)

    def _checkpoint(self, step: int) -> None:
        import torch

        state = {"version": self.version, "feeder": self.feeder.state(), "ledger": sorted(self.control.ledger()),
                 "torch_rng": checkpoint.encode_bytes(torch.get_rng_state().numpy().tobytes()),
                 "time": time.time()}
        path = checkpoint.save(self.checkpoints, step, state, lambda d: self.engine.save_checkpoint(d, {}))
        log.info("checkpoint of step %d in %s", step, path)

    def _restore(self) -> int:
        """Load the latest checkpoint into the engine, feeder, RNG and ledger; returns its step."""
        import numpy as np
        import torch

        path = checkpoint.latest(self.checkpoints)
        if path is None:
            raise FileNotFoundError(f"nothing to resume: no checkpoint in {self.checkpoints}")
        state = checkpoint.load_state(path)
        self.engine.load_checkpoint(path / "ds")
        self.feeder.restore(state["feeder"])
        rng = np.frombuffer(checkpoint.decode_bytes(state["torch_rng"]), dtype=np.uint8).copy()
        torch.set_rng_state(torch.from_numpy(rng))
        self.control.restore_ledger(state["ledger"])
        log.info("resumed from %s: step %d, version %d", path, state["step"], state["version"])
        return int(state["step"])

    def _feed_eval(self, step: int) -> None:
        self.eval_fed[self.feeder.eval_rounds] = (step, time.time())
        self.feeder.feed_eval()

    def _read_evals(self, orphans: bool = False) -> None:
        """New held-out groups (acked as read); with `orphans`, those delivered and never seen (see _collect)."""
        entries = (self.control.pending_groups(EVALS, CONSUMER, 10_000) if orphans else
                   self.control.read_groups(EVALS, CONSUMER, 64, block_ms=None))
        for entry_id, payload in entries:
            g = pb.ScoredGroup.FromString(payload)
            round_no = int(g.prompt_id.split("-")[1])  # held-out prompt ids are eval-<round>-<row id>
            self.eval_rounds[round_no].append(EvalGroup.of(g))
            self.control.ack_group(EVALS, entry_id)

    def _eval_summary(self) -> EvalSummary | None:
        """The oldest evaluation round whose every held-out prompt is scored and that no record reported yet:
        accuracy per task (the mean of each task's first reward component, e.g. mcq) and the mean of every
        component per task. Oldest first, one per record, so a round that finishes late is still a point of the
        curve (round 0 included)."""
        n_eval = len(self.feeder.eval_rows)
        done = [r for r, groups in self.eval_rounds.items() if len(groups) >= n_eval and r not in self.eval_reported]
        if not done:
            return None
        round_no = min(done)
        self.eval_reported.add(round_no)
        fed_step, fed_time = self.eval_fed.get(round_no, (None, None))
        summary = summarise_eval(self.eval_rounds[round_no]).model_copy(
            update={"round": round_no, "fed_at_step": fed_step, "fed_at": fed_time, "done_at": time.time()})
        for task, acc in summary.per_task.items():
            self.metrics.eval_accuracy.labels(task).set(acc)
        log.info("held-out round %d (fed after step %s, versions %s): %s", round_no, fed_step, summary.versions,
                 summary.per_task)
        return summary

    def _record(self, step: int, groups, m: TrainStats, published: int | None) -> StepRecord:
        versions = [g.policy_version for _, g in groups]
        rec = StepRecord(step=step, time=time.time(), version=self.version, published=published,
                         group_ids=[g.group_id for _, g in groups], group_versions=versions,
                         staleness_max=self.version - min(versions),
                         actor_versions={a.actor_id: a.loaded_version for a in self.control.actors()},
                         seconds={k: round(v, 4) for k, v in self.timings.items()}, train=m,
                         eval=self._eval_summary())
        self.metrics.step(m)
        with open(self.stats_path, "a") as f:
            f.write(rec.model_dump_json() + "\n")
        self.control.record_step(rec)
        if self.tracker is not None:
            self._track(rec, [g for _, g in groups])
        return rec

    def _track(self, rec: StepRecord, groups: list[pb.ScoredGroup]) -> None:
        """The step to the experiment trackers (queued: a slow or failed tracker never holds the step up)."""
        from services.learner.tracking_records import sample_table, step_scalars

        tc = self.cfg.tracking
        assert self.tracker is not None
        self.tracker.scalars(rec.step, step_scalars(rec, groups, self.drops, self._last_record_time))
        self._last_record_time = rec.time
        if tc.samples_every and rec.step % tc.samples_every == 0:
            self.tracker.samples(sample_table(rec.step, groups, tc.samples_prompts))
