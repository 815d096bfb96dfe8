"""Keeps what `LocalRun` launched alive, with one restart policy per role (the config's `supervisor` block).

LocalRun launches (Redis, Ray, the reward service, actors, the learner); the Supervisor watches them and decides.
A process that died (kill -9, out of memory: Ray reports a RayActorError) is replaced, since nothing it held is lost
(invariant 4 in docs/architecture.md), until its role's max_restarts is spent; then the run fails, saying which and
why. A process that failed with an error of its own (a bug, a reward service gone past
rollout.faults.reward_outage_s) fails the run at once: replacing it would only repeat the error.

- rollout actor: a new actor under a new id; the prompts the dead one held are handed to the live actors at once
  (ControlPlane.hand_over_prompts) instead of waiting out rollout.faults.reclaim_idle_s. An actor still loading its
  engine rollout.faults.start_timeout_s after Ray placed it is an error, not a wait; one that no node can take yet (its
  node was lost) waits, and rlctl/placement_watch.py says so. One Ray could not reach (ActorUnavailableError: its node
  may be going) is replaced only once Ray declares it dead, so that the replacement is not placed on that node.
- reward service: a new one on the same port; the actors reconnect and resend what it had not acked.
- learner: a new one resumed from the last checkpoint (learner.checkpoint_every): the groups the dead one had taken
  are trained first, and the ledger skips those it had trained. Without a checkpoint the run fails and says so.
- embedded Redis (redis.persistence): RedisKeeper, a thread, starts it again on the same port and data; the
  Supervisor fails the run when the keeper gave up.
All are counted in Redis (`actors_restarted`, `reward_restarted`, `learner_restarted`, `redis_restarted`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Protocol

from rlctl.cluster import ClusterTarget
from rlctl.placement_watch import PlacementWatch, demand
from services.common.config import RunConfig, SupervisorConfig
from services.common.control import ControlPlane
from services.common.records import StepRecord
from services.common.redis_server import RedisKeeper

log = logging.getLogger("videorl.rlctl")
ROLES = ("actor", "reward", "learner")
UNREACHABLE_S = 120.0   # an actor Ray cannot reach for this long is killed and replaced, dead or not


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0]


class Launcher(Protocol):
    """What the Supervisor sees of the run that launched the services (rlctl.local.LocalRun)."""

    cfg: RunConfig
    target: ClusterTarget
    control: ControlPlane
    redis_keeper: RedisKeeper | None
    reward_run: Any                    # the reward service's wait() ref: ready when it stopped
    reward_addr: str
    actors: dict[str, Any]             # live actor handles by id
    actor_runs: dict[str, Any]         # their run() refs: ready when they stopped
    learner_records: list[StepRecord]

    def start_reward(self, port: int | None = None) -> None: ...
    def next_actor_id(self) -> str: ...
    def add_actor(self, actor_id: str) -> None: ...
    def release(self, actor_id: str) -> None: ...
    def start_learner(self, resume: bool | None = None) -> None: ...


class Supervisor:
    def __init__(self, run: Launcher, policies: SupervisorConfig):
        self.run, self.policies = run, policies
        self.restarts = dict.fromkeys(ROLES, 0)
        self.placement = PlacementWatch()   # which actors Ray placed, and when; says while some cannot be
        self.unreachable: dict[str, tuple[Any, float, str]] = {}   # actor id -> (probe ref, since, why)

    def check(self) -> None:
        """One look at every service of the run (LocalRun.wait calls it between polls)."""
        keeper = self.run.redis_keeper
        if keeper is not None and keeper.error:
            raise RuntimeError(keeper.error)
        self._check_reward()
        self._check_actors()

    # -- reward ----------------------------------------------------------------------------------------------------
    def _check_reward(self) -> None:
        import ray

        run = self.run
        if run.reward_run is None or not ray.wait([run.reward_run], timeout=0)[0]:
            return
        try:
            ray.get(run.reward_run)
            why = "its server stopped"
        except ray.exceptions.RayActorError as e:
            why = f"its process died: {str(e).splitlines()[0]}"
        self._spend("reward", f"the reward service at {run.reward_addr} stopped ({why})")
        log.warning("the reward service at %s stopped (%s): starting another on the same port", run.reward_addr, why)
        run.start_reward(port=int(run.reward_addr.rsplit(":", 1)[1]))

    # -- actors ----------------------------------------------------------------------------------------------------
    def _check_actors(self) -> None:
        import ray

        run = self.run
        for a in [a for a, ref in run.actor_runs.items() if ray.wait([ref], timeout=0)[0]]:
            try:
                ray.get(run.actor_runs.pop(a))  # raises the actor's error; a clean return is a bug too
            except ray.exceptions.ActorUnavailableError as e:   # unreachable: dead, or its node is being lost
                self.unreachable[a] = (run.actors[a].__ray_ready__.remote(), time.monotonic(), _first_line(e))
                continue
            except ray.exceptions.RayActorError as e:   # the process died; RayTaskError (its own error) propagates
                self._replace_actor(a, _first_line(e))
                continue
            raise RuntimeError(f"rollout actor {a} stopped before the run finished")
        self._check_unreachable()
        self.placement.update(run.actors)
        if self.placement.due():
            self.placement.say(len(run.actors), demand(run.target.place("rollout", run.cfg)), ray.cluster_resources())
        # timed from placement: an actor waiting for a node is not loading its engine yet
        limit, now = run.cfg.rollout.faults.start_timeout_s, time.monotonic()
        late = {a for a, placed in self.placement.placed_at.items() if now - placed > limit}
        if late:
            stuck = [a.actor_id for a in run.control.actors() if a.actor_id in late and a.loaded_version < 0]
            if stuck:
                raise RuntimeError(f"rollout actors {', '.join(stuck)} still loading their engine after "
                                   f"{limit:.0f}s (rollout.faults.start_timeout_s); their logs are under "
                                   f"/tmp/videorl-ray/session_latest/logs (worker-*.err)")

    def _check_unreachable(self) -> None:
        """Replace an actor Ray could not reach once its death is certain. Until Ray has declared it dead, its node may
        still count as alive (the GCS notices a lost node after a few missed health checks): a replacement made now
        could be placed on that node and die with it, and a process only cut off could still ack the prompts that would
        be handed over. A probe (`__ray_ready__`) asks again each look; an actor reachable again has lost its run()
        call anyway, and one unreachable for UNREACHABLE_S is given up on: both are killed, then replaced."""
        import ray

        run = self.run
        for a, (probe, since, why) in list(self.unreachable.items()):
            if not ray.wait([probe], timeout=0)[0]:
                if time.monotonic() - since < UNREACHABLE_S:
                    continue
                why = f"{why}; unreachable for {UNREACHABLE_S:.0f}s"
            else:
                try:
                    ray.get(probe)
                    why = f"{why}; reachable again, but its run() call was lost"
                except ray.exceptions.ActorUnavailableError:
                    self.unreachable[a] = (run.actors[a].__ray_ready__.remote(), since, why)   # not dead yet: ask again
                    continue
                except ray.exceptions.RayActorError as e:
                    why = _first_line(e)   # dead for sure (its node too, if that was lost)
            del self.unreachable[a]
            ray.kill(run.actors[a])   # dead already, or made so: it can no longer ack what is handed over
            self._replace_actor(a, why)

    def _replace_actor(self, actor_id: str, why: str) -> None:
        run = self.run
        self._spend("actor", f"rollout actor {actor_id} died ({why})")
        run.actors.pop(actor_id, None)
        run.control.set_actor_state(actor_id, "dead")   # out of the next weight group, though its heartbeat is fresh
        run.release(actor_id)   # its placement group, if its engine spans GPUs
        handed = run.control.hand_over_prompts(actor_id)
        new = run.next_actor_id()
        log.warning("rollout actor %s died (%s): %s replaces it; the %d prompts it held went back to the live actors",
                    actor_id, why, new, handed)
        run.add_actor(new)

    # -- learner ---------------------------------------------------------------------------------------------------
    def learner_died(self, why: str) -> None:
        """Start a new learner that resumes from the dead one's last checkpoint (LearnerDriver._restore)."""
        from services.learner import checkpoint

        run, lc = self.run, self.run.cfg.learner
        if checkpoint.latest(Path(run.cfg.run_dir) / "checkpoints") is None:
            hint = ("learner.checkpoint_every is 0" if not lc.checkpoint_every else
                    f"it died before its first one, at step {lc.checkpoint_every} (learner.checkpoint_every)")
            raise RuntimeError(f"the learner died ({why}) and there is no checkpoint to resume from: {hint}")
        self._spend("learner", f"the learner died ({why})")
        run.learner_records = run.control.step_records()
        last = run.learner_records[-1].step if run.learner_records else 0
        log.warning("the learner died (%s) after step %d: a new one resumes from the last checkpoint", why, last)
        run.start_learner(resume=True)

    # -- policy ----------------------------------------------------------------------------------------------------
    def _spend(self, role: str, what: str) -> None:
        """Count one restart of `role`, in this process and in Redis, or fail the run when its policy is spent."""
        limit = getattr(self.policies, role).max_restarts
        if self.restarts[role] >= limit:
            raise RuntimeError(f"{what} and was already replaced {limit} times (supervisor.{role}.max_restarts)")
        self.restarts[role] += 1
        self.run.control.incr({"actor": "actors_restarted"}.get(role, f"{role}_restarted"))
