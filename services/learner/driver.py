"""The learner's driver loop, read top to bottom: collect groups -> build batch -> GRPO step -> publish.

Invariants kept here:
- a group older than `max_staleness` versions is never trained on: it is dropped and counted;
- a group is acked in Redis only after the step that used it (or its drop), so a crash mid-step leaves
  it pending instead of lost;
- a version is published only after its files are written, fsynced and hashed (weights.write_version),
  and the version number continues from Redis, so it stays monotonic across learner restarts.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.config import RunConfig
from services.common.control import EVALS, GROUPS, ControlPlane
from services.common.dataset import Row
from services.common.metrics import check_name
from services.common.metrics import serve as serve_metrics
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.common.weights import write_version
from services.learner.feeder import PromptFeeder

log = logging.getLogger("videorl.learner")
CONSUMER = "learner-0"


class LearnerMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.phase = Histogram(check_name("videorl_learner_phase_seconds"), "time per learner phase", ["phase"],
                               registry=registry)
        self.steps = Counter(check_name("videorl_learner_steps_total"), "learner steps", registry=registry)
        self.dropped = Counter(check_name("videorl_learner_groups_dropped_total"), "groups not trained on",
                               ["reason"], registry=registry)
        self.version = Gauge(check_name("videorl_learner_policy_version"), "latest published version",
                             registry=registry)
        self.loss = Gauge(check_name("videorl_learner_loss_value"), "GRPO loss of the last step", registry=registry)
        self.reward = Gauge(check_name("videorl_learner_reward_mean_value"), "mean reward of the last step's groups",
                            registry=registry)


class LearnerDriver:
    def __init__(self, cfg: RunConfig, redis_url: str, model_dir: Path, train: list[Row], eval_rows: list[Row],
                 registry: CollectorRegistry | None = None):
        self.cfg, self.model_dir = cfg, Path(model_dir)
        self.control = ControlPlane(redis_url, cfg.run_id)
        self.feeder = PromptFeeder(self.control, train, eval_rows, cfg.learner.prefetch_prompts, cfg.data.seed)
        self.registry = registry or CollectorRegistry()
        self.metrics = LearnerMetrics(self.registry)
        self.stats_path = Path(cfg.run_dir) / "stats.jsonl"
        self.eval_rounds: dict[int, list[tuple[int, float]]] = defaultdict(list)  # round -> (version, accuracy)
        self.version = 0
        self.timings: dict[str, float] = {}

    @contextmanager
    def _phase(self, name: str):
        t0 = time.perf_counter()
        yield
        self.timings[name] = dt = time.perf_counter() - t0
        self.metrics.phase.labels(name).observe(dt)

    def run(self) -> list[dict]:
        from transformers import AutoProcessor

        from services.learner.batch import BatchBuilder
        from services.learner.engine import LearnerEngine

        lc, k = self.cfg.learner, self.cfg.rollout.group_size
        self.control.register_exporter("learner", f"127.0.0.1:{serve_metrics(self.registry)}")
        self.engine = LearnerEngine(self.model_dir, lc, batch_size=lc.groups_per_step * k)
        self.builder = BatchBuilder(AutoProcessor.from_pretrained(str(self.model_dir)), self.cfg.media)
        self.version = self.control.current_version() or 0
        self.stats_path.parent.mkdir(parents=True, exist_ok=True)
        records = []
        for step in range(1, lc.steps + 1):
            self.timings = {}
            with self._phase("wait"):
                groups = self._collect(lc.groups_per_step)
            with self._phase("prepare"):
                batch, mismatched = self.builder.build([g for _, g in groups])
            with self._phase("train"):
                m = self.engine.train_step(batch, k)
            for entry_id, _ in groups:
                self.control.ack_group(GROUPS, entry_id)
            if mismatched:
                self.metrics.dropped.labels("prompt_mismatch").inc(mismatched)
                self.control.incr("groups_dropped:prompt_mismatch", mismatched)
            published = None
            if step % lc.publish_every == 0 or step == lc.steps:
                with self._phase("publish"):
                    published = self._publish(step)
            if lc.eval_every and step % lc.eval_every == 0:
                self.feeder.feed_eval()
            records.append(self._record(step, groups, m, published))
        return records

    # -- phases ----------------------------------------------------------------------------------
    def _collect(self, n: int) -> list[tuple[str, pb.ScoredGroup]]:
        """Wait for n train groups no staler than max_staleness, dropping (and acking) older ones."""
        out: list[tuple[str, pb.ScoredGroup]] = []
        while len(out) < n:
            self.feeder.top_up()
            self._read_evals()
            for entry_id, payload in self.control.read_groups(GROUPS, CONSUMER, n - len(out), block_ms=200):
                g = pb.ScoredGroup.FromString(payload)
                if self.version - g.policy_version > self.cfg.learner.max_staleness:
                    self.metrics.dropped.labels("stale").inc()
                    self.control.incr("groups_dropped:stale")
                    self.control.ack_group(GROUPS, entry_id)
                    continue
                out.append((entry_id, g))
        return out

    def _publish(self, step: int) -> int:
        version = (self.control.current_version() or 0) + 1
        manifest = write_version(Path(self.cfg.run_dir) / "weights", version, step, self.engine.save_weights)
        self.control.publish_version(manifest)
        self.version = version
        self.metrics.version.set(version)
        log.info("published version %d at step %d (%d bytes)", version, step, manifest.bytes)
        return version

    def _read_evals(self) -> None:
        for entry_id, payload in self.control.read_groups(EVALS, CONSUMER, 64, block_ms=None):
            g = pb.ScoredGroup.FromString(payload)
            comps = {c.name: list(c.values) for c in g.components}
            values = comps.get("mcq", list(g.rewards))
            round_no = int(g.prompt_id.split("-")[1])
            self.eval_rounds[round_no].append((g.policy_version, sum(values) / len(values)))
            self.control.ack_group(EVALS, entry_id)

    def _record(self, step: int, groups, m: dict, published: int | None) -> dict:
        versions = [g.policy_version for _, g in groups]
        rec = {"step": step, "time": time.time(), "version": self.version, "published": published,
               "group_versions": versions, "staleness_max": self.version - min(versions),
               "actor_versions": {a.actor_id: a.loaded_version for a in self.control.actors()},
               "seconds": {k: round(v, 4) for k, v in self.timings.items()}, **{k: round(v, 5) for k, v in m.items()}}
        n_eval = len(self.feeder.eval_rows)
        done = [r for r, accs in self.eval_rounds.items() if len(accs) >= n_eval]
        if done:
            accs = self.eval_rounds[max(done)]
            rec["eval"] = {"round": max(done), "accuracy": round(sum(a for _, a in accs) / len(accs), 4),
                           "versions": sorted({v for v, _ in accs})}
        self.metrics.steps.inc()
        self.metrics.loss.set(m["loss"])
        self.metrics.reward.set(m["reward_mean"])
        with open(self.stats_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        self.control.record_step(rec)
        return rec
