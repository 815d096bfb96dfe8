"""`rlctl run`: the whole loop on one machine with real parts.

Story: control plane (Redis) -> assets (model, data) -> version 0 -> Ray -> reward server -> rollout
actors -> learner; then watch until the learner finishes, and stop everything by handle or pid, also
on Ctrl-C or an error, so no process is left behind.

While watching, rlctl/supervisor.py keeps every service alive with one restart policy per role (the config's
`supervisor` block): a process that died is replaced, since nothing it held is lost (invariant 4 in
docs/architecture.md); one that failed with an error of its own fails the run.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.console import Console

from rlctl.assets import prepare_assets
from rlctl.cluster import LOCAL_RAY_ENV, ClusterTarget  # noqa: F401 - importing rlctl.local sets Ray's environment
from rlctl.supervisor import Supervisor
from services.common.config import RunConfig
from services.common.control import ControlPlane
from services.common.records import ActorStats, RunSummary, StepRecord
from services.common.redis_server import EmbeddedRedis, RedisKeeper
from services.common.weights import manifest_for_dir, newest_version

if TYPE_CHECKING:
    from rlctl.api import ApiServer

log = logging.getLogger("videorl.rlctl")


def _ray_init(target: ClusterTarget) -> None:
    import ray
    from ray._private import ray_constants

    if target.ray_address is None and ray_constants.ENABLE_RAY_CLUSTER:
        raise RuntimeError("ray was imported before rlctl.local set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; "
                           "it would listen on non-loopback addresses")
    ray.init(**target.ray_init_kwargs())


def _pid(handle) -> int:
    import ray

    return ray.get(handle.__ray_call__.remote(lambda _self: os.getpid()), timeout=30)


class LocalRun:
    """Owns every process of a local run; `close()` stops them all."""

    def __init__(self, cfg: RunConfig, console: Console | None = None, resume: bool = False, learner: bool = True,
                 target: ClusterTarget | None = None):
        self.cfg, self.console, self.resume, self.with_learner = cfg, console or Console(), resume, learner
        self.target = target or ClusterTarget.from_env()
        self.redis: EmbeddedRedis | None = None
        # Ray actor handles and object refs are typed Any: Ray's stubs do not follow .options(...).remote(...).
        self.reward: Any = None
        self.actors: dict[str, Any] = {}               # live actors (not retiring)
        self.actor_runs: dict[str, Any] = {}
        self.retiring: dict[str, Any] = {}             # scaled down: asked to stop, finishing what they hold
        self.retired: list[ActorStats] = []            # totals of actors that stopped after a scale-down
        self.started_at: dict[str, float] = {}         # monotonic time each actor was asked to start
        self.next_index = 0
        self.pids: dict[str, int] = {}                 # service -> pid of its Ray worker (for `rlctl logs`)
        self.learner: Any = None                       # rank 0 (LearnerDriver)
        self.learner_run: Any = None
        self.learner_ranks: list[Any] = []             # ranks 1.. (LearnerRank)
        self.rank_lifetimes: list[Any] = []            # their lifetime() refs: ready when one stopped or died
        self.groups: dict[str, Any] = {}               # placement groups by actor id (GPU engines over several GPUs)
        self.ray_started = False
        self.reward_run: Any = None                    # the reward service's wait(): fails when its process dies
        self.judge_served = False                      # reward.judge.serve started (services/judge/serve.py)
        self.redis_keeper: RedisKeeper | None = None
        self.learner_records: list[StepRecord] = []    # steps recorded by learners that died (in Redis)
        self.supervisor = Supervisor(self, cfg.supervisor)
        self.launched = False                          # start() finished: later (re)starts update run.json
        self.api: ApiServer | None = None               # the run's control API (rlctl/api.py)

    def start(self) -> ControlPlane:
        cfg = self.cfg
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        if cfg.redis.url is None:
            data = Path(cfg.run_dir) / "redis"
            if not self.resume:   # a new run in a used run dir must not inherit its Redis state
                shutil.rmtree(data / "appendonlydir", ignore_errors=True)
            self.redis = EmbeddedRedis(data, appendonly=cfg.redis.persistence).start()
        self.url = cfg.redis.url or (self.redis.url if self.redis else "")
        self.control = ControlPlane(self.url, cfg.run_id, cfg.redis.reconnect_s)
        if self.redis is not None and cfg.redis.persistence:
            self.redis_keeper = RedisKeeper(self.redis, lambda: self.control.incr("redis_restarted"),
                                            limit=cfg.supervisor.redis.max_restarts).start()
        self.control.ensure_streams()
        self.control.clear_stop()
        from rlctl.api import ApiServer

        self.api = ApiServer(self.url, cfg.run_id, Path(cfg.run_dir))   # rlctl status|scale|stop talk to it
        self.assets = prepare_assets(cfg, self.console)
        if self.assets.skipped and not self.resume:
            self.control.incr("rows_skipped", len(self.assets.skipped))
        if self.resume:
            self._resume_version()
        if self.control.current_version() is None:
            self.control.publish_version(manifest_for_dir(self.assets.model_dir, version=0))
        with self.console.status("starting Ray" if self.target.ray_address is None else "joining the Ray cluster"):
            _ray_init(self.target)
            self.ray_started = True
        self._resolve_accelerator()
        if (serve := self.cfg.reward.judge.serve) is not None:   # the run's own judge, before the reward service
            from rlctl.assets import embedded_judge
            from services.judge.serve import serve_for_run

            model = serve.model or embedded_judge(self.cfg.seed, self.console)
            with self.console.status("starting the judge on Ray Serve"):
                self.cfg, self.judge_served = serve_for_run(self.cfg, model), True
        self.start_reward()
        self.control.set_desired_actors(cfg.rollout.num_actors)
        self.scale()
        if self.with_learner:
            self.start_learner()
        self._write_record()
        self.launched = True
        return self.control

    def _resolve_accelerator(self) -> None:
        """Every `auto` of the config made concrete for the accelerator the Ray cluster offers (or the one
        cluster.accelerator names): the services are given this config."""
        import ray

        from rlctl.cluster import accelerator_of

        found = accelerator_of(ray.cluster_resources())
        want = self.cfg.cluster.accelerator
        if want == "gpu" and found == "cpu":
            log.warning("cluster.accelerator is gpu but the Ray cluster offers no GPU yet: the actors and learner "
                        "ranks wait until nodes with GPUs join")
        self.cfg = self.cfg.on(found if want == "auto" else want)

    def _options(self, role: Literal["rollout", "learner"], key: str) -> dict:
        """Ray actor options for one process of `role`, reserving its placement group first when it spans GPUs
        (kept under `key` until release(key))."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        placement = self.target.place(role, self.cfg)
        if not placement.bundles:
            return placement.options
        self.release(key)
        group = self.groups[key] = ray.util.placement_group(placement.bundles, strategy="STRICT_PACK")
        return {**placement.options, "scheduling_strategy": PlacementGroupSchedulingStrategy(
            group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True)}

    def release(self, key: str) -> None:
        """Give back the placement group reserved under `key` (an actor that died or stopped), if any."""
        import ray

        if (group := self.groups.pop(key, None)) is not None:
            ray.util.remove_placement_group(group)

    def _write_record(self) -> None:
        """RUN_DIR/run.json, for `rlctl status|scale|logs` from another terminal (rlctl.operate)."""
        import ray

        from rlctl.operate import write_record

        write_record(Path(self.cfg.run_dir), run_id=self.cfg.run_id, redis_url=self.url, pid=os.getpid(),
                     started=time.time(), finished=None, heartbeat_s=self.cfg.rollout.heartbeat_s, pids=self.pids,
                     api=self.api.url if self.api else None,
                     ray_logs=ray._private.worker._global_node.get_logs_dir_path())  # type: ignore[attr-defined]

    def _resume_version(self) -> None:
        """Make the newest published version on disk current again (a fresh embedded Redis starts empty), so the
        actors serve the latest policy and new versions continue above it."""
        from services.learner import checkpoint

        run_dir = Path(self.cfg.run_dir)
        if checkpoint.latest(run_dir / "checkpoints") is None:
            raise FileNotFoundError(f"cannot resume: no checkpoint in {run_dir / 'checkpoints'}")
        newest = newest_version(run_dir / "weights")
        if newest and newest[0] > (self.control.current_version() or -1):
            self.control.publish_version(manifest_for_dir(newest[1], version=newest[0]))

    def start_reward(self, port: int | None = None) -> None:
        """Start the local reward service (on `port`, else reward.port: 0 picks a free one)."""
        if self.target.reward_address is not None:   # a cluster's reward Deployment
            self.reward_addr = self.target.reward_address
            return
        import ray

        from services.reward.server import RewardService

        cfg = self.cfg
        if port is not None:
            cfg = cfg.model_copy(update={"reward": cfg.reward.model_copy(update={"port": port})})
        n = self.supervisor.restarts["reward"]
        self.reward = ray.remote(num_cpus=0)(RewardService).options(
            name=f"{cfg.run_id}-reward" + (f"-{n}" if n else "")).remote(cfg, self.url)
        port = ray.get(self.reward.start.remote(), timeout=60)
        self.reward_run = self.reward.wait.remote()
        self.pids["reward"] = _pid(self.reward)
        self.reward_addr = f"127.0.0.1:{port}"
        if self.launched:
            self._write_record()

    def next_actor_id(self) -> str:
        """A new actor's id, `rollout-<n>`: never one an earlier actor of this run had (Redis keys are per id)."""
        self.next_index += 1
        return f"rollout-{self.next_index - 1}"

    def add_actor(self, actor_id: str) -> None:
        import ray

        from services.rollout.actor import RolloutActor

        handle = ray.remote(max_concurrency=64)(RolloutActor).options(  # type: ignore[call-overload]
            name=f"{self.cfg.run_id}-{actor_id}", **self._options("rollout", actor_id)).remote(
            self.cfg, self.url, self.reward_addr, actor_id, str(self.assets.model_dir))
        self.actors[actor_id] = handle
        self.actor_runs[actor_id] = handle.run.remote()
        self.started_at[actor_id] = time.monotonic()

    def scale(self) -> None:
        """Match the live actors to the desired count in Redis (`rlctl scale rollout N` sets it).

        Up: new actors `rollout-<next index>`; each loads the current version before it takes a prompt.
        Down: the newest actors are asked to stop; they take no new prompts, finish and send what they hold and
        wait for its acks, then exit (see RolloutActor.run), so no prompt is lost or generated twice. The learner
        is never paused: the other actors keep generating meanwhile."""
        import ray

        want = self.control.desired_actors()
        if want is None:
            return
        while len(self.actors) < want:
            self.add_actor(self.next_actor_id())
        for actor_id in sorted(self.actors, key=lambda a: self.started_at[a])[want:]:
            self.actors.pop(actor_id).stop.remote()
            self.retiring[actor_id] = self.actor_runs.pop(actor_id)
            log.info("scaling down: %s stops after the prompts it holds", actor_id)
        for actor_id, ref in list(self.retiring.items()):
            if ray.wait([ref], timeout=0)[0]:
                del self.retiring[actor_id]
                self.release(actor_id)
                self.retired.append(ray.get(ref))   # an actor that failed while stopping fails the run

    def start_learner(self, resume: bool | None = None) -> None:
        """The learner group: ranks 1.. (LearnerRank) first, then rank 0 (LearnerDriver), which forms the group."""
        import ray

        from rlctl.placement_watch import demand, wait_placed
        from services.learner.driver import LearnerDriver
        from services.learner.ranks import LearnerRank

        n = self.supervisor.restarts["learner"]
        name = f"{self.cfg.run_id}-learner" + (f"-{n}" if n else "")
        self.learner_ranks = [
            ray.remote(max_concurrency=2)(LearnerRank).options(  # type: ignore[call-overload]
                name=f"{name}-rank{r}", **self._options("learner", f"learner-{r}")).remote(
                self.cfg, str(self.assets.model_dir)) for r in range(1, self.cfg.learner.ranks)]
        self.rank_lifetimes = [h.lifetime.remote() for h in self.learner_ranks]
        for r, h in enumerate(self.learner_ranks, start=1):
            self.pids[f"learner-rank{r}"] = _pid(h)
        self.learner = ray.remote(max_concurrency=1)(LearnerDriver).options(  # type: ignore[call-overload]
            name=name, **self._options("learner", "learner-0")).remote(
            self.cfg, self.url, self.assets.model_dir, self.assets.train, self.assets.eval_rows,
            resume=self.resume if resume is None else resume, ranks=self.learner_ranks)
        wait_placed(self.learner, f"the learner's {self.cfg.learner.ranks} ranks", self.cfg.learner.ranks,
                    demand(self.target.place("learner", self.cfg)))   # in a cluster its node may still be joining
        self.pids["learner"] = _pid(self.learner)   # before run(): the driver serves one call at a time
        self.learner_run = self.learner.run.remote()
        if self.launched:
            self._write_record()

    def _learner_lost(self) -> str | None:
        """Why the learner group can no longer go on (rank 0's process died, or another rank's), else None. The
        group is then stopped whole, to be started again from its last checkpoint."""
        import ray

        from services.learner.ranks import LearnerRankLost

        why = None
        if ray.wait([self.learner_run], timeout=0)[0]:
            try:
                ray.get(self.learner_run)
            except ray.exceptions.RayActorError as e:   # the process died; its own error (RayTaskError) raises
                why = str(e).splitlines()[0]
            except ray.exceptions.RayTaskError as e:
                if not isinstance(e.cause, LearnerRankLost):
                    raise
                why = str(e.cause)
        for r, ref in enumerate(self.rank_lifetimes, start=1):
            if why is None and ray.wait([ref], timeout=0)[0]:
                why = f"learner rank {r} died"
        if why is not None:
            for h in [self.learner, *self.learner_ranks]:
                ray.kill(h)
        return why

    def wait(self, on_tick=None, tick_s: float = 0.5) -> list[StepRecord]:
        """Block until the learner finishes; returns the step records of every learner of the run (those of one
        that died first), re-raises a learner's own error. `on_tick()` runs between polls."""
        import ray

        while True:
            ready, _ = ray.wait([self.learner_run, *self.rank_lifetimes], timeout=tick_s)
            if on_tick:
                on_tick()
            if ready:
                if (why := self._learner_lost()) is not None:
                    self.supervisor.learner_died(why)
                    continue
                if ready[0] == self.learner_run:
                    records = ray.get(self.learner_run)
                    for h in self.learner_ranks:   # done: their memory is freed now, not at close()
                        ray.kill(h)
                    self.rank_lifetimes = []
                    return self.learner_records + records
            self.supervisor.check()
            self.scale()

    def wait_for_actors_at(self, version: int, timeout_s: float = 60.0) -> bool:
        """Let every live actor load `version` before the run stops, so the final policy is what they serve."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(a.loaded_version >= version for a in self.control.actors() if a.actor_id in self.actors):
                return True
            time.sleep(0.1)
        return False

    def stop_actors(self, timeout_s: float = 60.0) -> list[ActorStats]:
        import ray

        for h in self.actors.values():
            h.stop.remote()
        results, self.retired = self.retired, []
        for a, ref in {**self.actor_runs, **self.retiring}.items():
            try:
                results.append(ray.get(ref, timeout=timeout_s))
            except Exception as e:  # noqa: BLE001 - shutting down: report, then kill below
                log.warning("actor %s did not stop cleanly: %s", a, e)
        self.actor_runs.clear()
        self.retiring.clear()
        return results

    def close(self) -> None:
        """Stop everything this run started. Safe to call twice and after a partial start."""
        try:
            if self.ray_started:
                import ray

                if self.actor_runs or self.retiring:
                    self.stop_actors(timeout_s=30)
                if self.reward is not None:
                    try:
                        ray.get(self.reward.stop.remote(), timeout=10)
                    except Exception as e:  # noqa: BLE001
                        log.warning("reward service did not stop cleanly: %s", e)
                if self.judge_served:
                    from services.judge.serve import stop

                    stop()
                ray.shutdown()
                self.ray_started = False
        finally:
            if self.api is not None:
                self.api.stop()
                self.api = None
            if self.redis_keeper is not None:
                self.redis_keeper.stop()
            if self.redis is not None:
                self.redis.stop()
                self.redis = None
            if (Path(self.cfg.run_dir) / "run.json").exists():
                from rlctl.operate import write_record

                write_record(Path(self.cfg.run_dir), finished=time.time())


@dataclass(frozen=True)
class RunHooks:
    """Calls into a run at the end of its work, for tests and benchmarks that look at it while it is still up:
    `before_stop` once the learner finished (every service still running), `after_stop` once the actors stopped
    (Redis and the reward service still up, so the streams and counters can be read)."""

    before_stop: Callable[[LocalRun], None] | None = None
    after_stop: Callable[[LocalRun], None] | None = None


def run_local(cfg: RunConfig, console: Console | None = None, resume: bool = False,
              hooks: RunHooks = RunHooks()) -> RunSummary:
    from rlctl.progress import Progress

    console = console or Console()
    run = LocalRun(cfg, console, resume=resume)
    t0 = time.time()
    try:
        control = run.start()
        progress = Progress(control, cfg, console)
        with progress:
            records = run.wait(on_tick=progress.tick)
            progress.tick()
            final = control.current_version() or 0
            if not run.wait_for_actors_at(final):
                log.warning("not every actor loaded the final version %d before the run stopped", final)
        from rlctl.summary import reward_metrics as read_reward_metrics
        from rlctl.summary import version_lag

        swap_lag = version_lag(control, records, list(run.actors))
        reward_metrics = read_reward_metrics(control)
        if hooks.before_stop:
            hooks.before_stop(run)
        actor_stats = run.stop_actors()
        if hooks.after_stop:
            hooks.after_stop(run)
        return RunSummary(records=records, actors=actor_stats, counters=control.counters(),
                          reward_metrics=reward_metrics, swap_lag=swap_lag, seconds=time.time() - t0,
                          run_dir=str(cfg.run_dir))
    finally:
        run.close()
