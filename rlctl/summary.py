"""The end-of-run report: where the time of a learner step went, per phase, per-actor throughput, how long each
version took to reach the actors, and the reward service's scoring metrics."""

from __future__ import annotations

import logging
import statistics
import urllib.request

from rich.table import Table

from services.common.control import ControlPlane
from services.common.records import ActorStats, StepRecord, SwapLag

log = logging.getLogger("videorl.rlctl")


def scrape(address: str, names: tuple[str, ...]) -> dict[str, float]:
    """Read a few samples from a Prometheus text endpoint (sum over label sets)."""
    out: dict[str, float] = {}
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            base = name.split("{", 1)[0]
            if base in names:
                out[base] = out.get(base, 0.0) + float(value)
    return out


def phase_table(records: list[StepRecord], actors: list[ActorStats], reward_metrics: dict[str, float]) -> Table:
    """Median seconds per phase. generate / score / swap are per group or per swap, measured where they happen."""
    t = Table(title="time per learner step, by phase (median over steps; s)", box=None)
    for col in ("phase", "seconds", "measured"):
        t.add_column(col)

    def med(key: str) -> float:
        vals = [r.seconds[key] for r in records[1:] if key in r.seconds] or [0.0]  # step 1 includes start-up
        return statistics.median(vals)

    gen = [a.gen_seconds / a.groups_sent for a in actors if a.groups_sent]
    swaps = [a.swap_seconds / a.swaps for a in actors if a.swaps]
    n_scored = reward_metrics.get("videorl_reward_score_seconds_count", 0)
    score = reward_metrics.get("videorl_reward_score_seconds_sum", 0) / n_scored if n_scored else 0.0
    t.add_row("generate", f"{statistics.mean(gen) if gen else 0:.3f}", "per group of K, in the actor")
    t.add_row("score", f"{score:.4f}", "per group, in the reward service")
    t.add_row("wait", f"{med('wait'):.3f}", "learner waiting for groups")
    t.add_row("prepare", f"{med('prepare'):.3f}", "decode + processor, in the learner")
    t.add_row("train", f"{med('train'):.3f}", "forward + backward + step")
    pub = [r.seconds["publish"] for r in records if "publish" in r.seconds]
    t.add_row("publish", f"{statistics.median(pub) if pub else 0:.3f}",
              "disk: write + fsync + hash; broadcast: gather + send; then Redis")
    t.add_row("swap", f"{statistics.mean(swaps) if swaps else 0:.3f}", "actor paused per weight swap")
    return t


def actor_table(actors: list[ActorStats]) -> Table:
    t = Table(title="rollout actors", box=None)
    for col in ("actor", "groups", "tokens", "tokens/s", "swaps", "final version"):
        t.add_column(col)
    for a in actors:
        t.add_row(a.actor_id, str(a.groups_sent), str(a.tokens), f"{a.tokens_per_s:.0f}", str(a.swaps),
                  str(a.loaded_version))
    return t


def version_lag(control: ControlPlane, records: list[StepRecord], actor_ids: list[str]) -> list[SwapLag]:
    """For each published version and actor: seconds from publication to the actor serving it, and in learner
    steps (0 = before the next step's record, 1 = before the one after, ...)."""
    step_times = [r.time for r in records]
    out = []
    for rec in records:
        v = rec.published
        if not v:
            continue
        manifest = control.manifest(v)
        if manifest is None:   # a published version always has one; a record from a reused run dir may not
            continue
        published_at = manifest.created_at
        for a in actor_ids:
            loaded = control.swaps(a).get(v)
            later = [t for t in step_times if t > rec.time]
            if loaded is None:
                out.append(SwapLag(version=v, actor=a, seconds=None, steps=None))
                continue
            out.append(SwapLag(version=v, actor=a, seconds=round(loaded - published_at, 3),
                               steps=sum(1 for t in later if t < loaded)))
    return out


def reward_metrics(control: ControlPlane) -> dict[str, float]:
    """The reward service's scoring time and completion count, from its exporter (empty where it cannot be read)."""
    address = control.exporters().get("reward")
    try:
        return scrape(address, ("videorl_reward_score_seconds_sum", "videorl_reward_score_seconds_count",
                                "videorl_reward_completions_total")) if address else {}
    except OSError as e:
        log.warning("cannot read the reward service's metrics at %s: %s", address, e)
        return {}
