"""A learner of `learner.ranks` processes: Ray actors forming one torch.distributed group under DeepSpeed ZeRO.

Rank 0 is the LearnerDriver's own process: it collects a step's groups, builds the batch and hands every rank a
share of whole groups (`split_groups`) with the one `StepPlan` they all follow. Ranks 1.. (`LearnerRank`) only
train, write their checkpoint shards and take part in publishing (ZeRO-3 gathers collectively); they never touch
Redis. `RankGroup` is what the driver trains through, with one rank as with many.

Invariants kept here:
- every call into the group runs on every rank at once, rank 0's own included, so their collectives meet;
- the ranks' gradients add up to the whole batch's (engine.StepPlan), so N ranks train what one would;
- a rank that dies fails the whole group with `LearnerRankLost` (the supervisor then restarts the group from its
  last checkpoint): a group missing a rank can only hang or fail in its next collective.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from services.common.config import RunConfig
from services.common.processes import free_port
from services.common.records import TrainStats
from services.learner.batch import Batch
from services.learner.ds_model import GroupSpec
from services.learner.engine import LearnerEngine, StepPlan, batch_totals, train_stats

log = logging.getLogger("videorl.learner")


class LearnerRankLost(RuntimeError):
    """A rank of the learner group died; the group cannot go on without it."""


def split_groups(n_rows: int, group_size: int, world_size: int) -> list[list[int]]:
    """The rows of each rank: whole groups, in order, as evenly as they go (a rank may get none).

    >>> split_groups(8, 2, 2), split_groups(6, 2, 2), split_groups(2, 2, 2)
    ([[0, 1, 2, 3], [4, 5, 6, 7]], [[0, 1, 2, 3], [4, 5]], [[0, 1], []])
    """
    groups = n_rows // group_size
    per, extra = divmod(groups, world_size)
    out, g = [], 0
    for r in range(world_size):
        take = per + (r < extra)
        out.append(list(range(g * group_size, (g + take) * group_size)))
        g += take
    return out


def node_address() -> str:
    import ray

    return ray.util.get_node_ip_address()


class LearnerRank:
    """Rank 1.. of a learner group, as a Ray actor: rank 0 calls each method on every rank at once."""

    def __init__(self, cfg: RunConfig, model_dir: str):
        self.cfg, self.model_dir = cfg, Path(model_dir)
        self.engine: LearnerEngine | None = None
        self._stopped = threading.Event()

    def setup(self, group: GroupSpec, batch_size: int) -> None:
        """Join the group (rank 0 does at the same time) and build this rank's engine."""
        self.engine = LearnerEngine(self.model_dir, self.cfg.learner, batch_size=batch_size,
                                    max_len=self.cfg.rollout.max_new_tokens,
                                    group=replace(group, own_addr=node_address()))

    def _engine(self) -> LearnerEngine:
        if self.engine is None:
            raise RuntimeError("learner rank used before setup()")
        return self.engine

    def train(self, batch: Batch, group_size: int, plan: StepPlan) -> dict[str, float]:
        return self._engine().train_shard(batch, group_size, plan)

    def save_weights(self, out_dir: str) -> None:
        self._engine().save_weights(Path(out_dir))

    def save_checkpoint(self, directory: str) -> None:
        self._engine().save_checkpoint(Path(directory), {})

    def load_checkpoint(self, directory: str) -> None:
        self._engine().load_checkpoint(Path(directory))

    def gather_weights(self) -> None:
        """Take part in rank 0's full_state_dict (ZeRO-3 gathers collectively); keep nothing."""
        self._engine().full_state_dict(keep=False)

    def lifetime(self) -> None:
        """Returns when the rank is told to stop; fails with RayActorError when its process dies (LocalRun waits
        on it to notice a dead rank between steps)."""
        self._stopped.wait()

    def stop(self) -> None:
        self._stopped.set()


def together(pending: list, own_call: Callable[[], Any]) -> Any:
    """Run rank 0's part (`own_call`) while the other ranks run theirs (`pending`, their refs) and wait for all;
    a rank that died fails the group with LearnerRankLost, also when rank 0's part failed because of it."""
    if not pending:   # one rank: no Ray call at all (ray.wait would start a Ray of its own outside a run)
        return own_call()
    try:
        result = own_call()
    except Exception:
        _raise_if_lost(pending, timeout_s=30.0)   # a peer's death surfaces in rank 0 as a failed collective
        raise
    _raise_if_lost(pending, timeout_s=None)
    return result


def _raise_if_lost(pending: list, timeout_s: float | None) -> None:
    import ray

    done, _ = ray.wait(pending, num_returns=len(pending), timeout=timeout_s)
    for r, ref in enumerate(pending, start=1):
        if ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as e:
                raise LearnerRankLost(f"learner rank {r} died: {str(e).splitlines()[0]}") from None


class RankGroup:
    """The learner's DeepSpeed engine over all its ranks, as rank 0 (the driver) sees it: LearnerEngine's calls."""

    def __init__(self, own: LearnerEngine, others: list[Any]):
        self.own, self.others = own, others
        self.cfg = own.cfg
        self.save_seconds = 0.0

    @classmethod
    def form(cls, model_dir: Path, cfg: RunConfig, others: list[Any], batch_size: int) -> RankGroup:
        """Rank 0 (this process) and `others` (LearnerRank handles, ranks 1..) form one group and build their
        engines together (DeepSpeed's initialize is collective). Without others, a one-rank group."""
        if not others:
            return cls(LearnerEngine(model_dir, cfg.learner, batch_size, cfg.rollout.max_new_tokens), [])
        addr, world = node_address(), len(others) + 1
        spec = GroupSpec(rank=0, world_size=world, master_addr=addr, master_port=free_port(), own_addr=addr)
        log.info("forming a learner group of %d ranks at %s:%d", world, addr, spec.master_port)
        pending = [h.setup.remote(replace(spec, rank=r), batch_size) for r, h in enumerate(others, start=1)]
        own = together(pending, lambda: LearnerEngine(model_dir, cfg.learner, batch_size, cfg.rollout.max_new_tokens,
                                                      group=spec))
        return cls(own, others)

    def _all(self, method: str, *args: Any, own_call: Callable[[], Any]) -> Any:
        return together([getattr(h, method).remote(*args) for h in self.others], own_call)

    # -- LearnerEngine's calls, on every rank ---------------------------------------------------------------------
    def train_step(self, batch: Batch, group_size: int) -> TrainStats:
        """One step on the batch's groups, split over the ranks; the metrics of the whole batch."""
        import ray

        if not self.others:
            return self.own.train_step(batch, group_size)
        world = len(self.others) + 1
        rows = split_groups(len(batch.rewards), group_size, world)
        shards = [batch.select(r or rows[0]) for r in rows]   # a rank without a group trains a copy, weighted 0
        micro = max(len(self.own.micro_batches(s)) for s in shards)
        plans = [StepPlan(batch_totals(batch), micro, world, weight=1.0 if r else 0.0) for r in rows]
        pending = [h.train.remote(shards[r], group_size, plans[r]) for r, h in enumerate(self.others, start=1)]
        sums = dict(together(pending, lambda: self.own.train_shard(shards[0], group_size, plans[0])))
        for part in ray.get(pending):
            for k, v in part.items():
                sums[k] = sums.get(k, 0.0) + v
        return train_stats(batch, group_size, self.cfg.advantage, sums, micro)

    def save_weights(self, out_dir: Path) -> None:
        self._all("save_weights", str(out_dir), own_call=lambda: self.own.save_weights(out_dir))
        self.save_seconds = self.own.save_seconds

    def save_checkpoint(self, directory: Path, client_state: dict) -> None:
        self._all("save_checkpoint", str(directory), own_call=lambda: self.own.save_checkpoint(directory, client_state))

    def load_checkpoint(self, directory: Path) -> dict:
        return self._all("load_checkpoint", str(directory), own_call=lambda: self.own.load_checkpoint(directory))

    def save_state(self, state: dict, out_dir: Path) -> None:
        """Write a full_state_dict taken earlier (rank 0 holds it; no other rank takes part)."""
        self.own.save_state(state, out_dir)

    def full_state_dict(self) -> dict:
        """Every weight on rank 0 (the others take part in ZeRO-3's gathering and keep nothing)."""
        return self._all("gather_weights", own_call=self.own.full_state_dict)
