"""rlctl/placement_watch.py and the supervisor's use of it, without starting Ray (ray.wait and ray.cluster_resources
stand in): rollout actors no node can take are waited for and said so, at most once per SAY_EVERY_S, and
rollout.faults.start_timeout_s is timed from placement, never over the wait for a node."""

import logging
import time
from types import SimpleNamespace

import pytest

from rlctl.cluster import ClusterTarget
from rlctl.local import LocalRun
from rlctl.placement_watch import PlacementWatch, capacity, demand, wait_placed
from services.common.config import RunConfig
from services.common.control import ActorInfo

CLUSTER = ClusterTarget("127.0.0.2:6379", "127.0.0.1:50051")


class Handle:
    """An actor handle whose `__ray_ready__.remote()` gives a ref of its own."""

    def __init__(self):
        self.ref = object()
        self.__ray_ready__ = SimpleNamespace(remote=lambda: self.ref)


@pytest.fixture
def fake_ray(monkeypatch):
    """ray.wait answers from `ready` (the refs whose actor runs); ray.cluster_resources from `total`."""
    import ray

    state = SimpleNamespace(ready=set(), total={})
    monkeypatch.setattr(ray, "wait", lambda refs, num_returns=1, timeout=None: (
        [r for r in refs if r in state.ready], [r for r in refs if r not in state.ready]))
    monkeypatch.setattr(ray, "cluster_resources", lambda: dict(state.total))
    return state


def test_demand_is_what_one_actor_asks_of_the_cluster():
    cpu, gpu = RunConfig().on("cpu"), RunConfig().on("gpu")
    assert demand(ClusterTarget().place("rollout", cpu)) == {}                       # local CPU: asks for nothing
    assert demand(CLUSTER.place("rollout", cpu)) == {"videorl_rollout": 1}
    assert demand(CLUSTER.place("rollout", gpu)) == {"videorl_rollout": 1, "GPU": 1}
    tp2 = gpu.model_copy(update={"rollout": gpu.rollout.model_copy(update={
        "engine": gpu.rollout.engine.model_copy(update={"tensor_parallel_size": 2})})})
    assert demand(CLUSTER.place("rollout", tp2)) == {"videorl_rollout": 1, "GPU": 2, "CPU": 2}   # its bundles
    assert capacity({}, {}) is None and capacity({"videorl_rollout": 1}, {"CPU": 2.0}) == 0
    assert capacity({"GPU": 2, "videorl_rollout": 1}, {"GPU": 5.0, "videorl_rollout": 4.0}) == 2


def test_actors_no_node_can_take_are_said_to_wait_until_they_are_placed(fake_ray, caplog):
    watch, need = PlacementWatch(), {"videorl_rollout": 1}
    actors = {"rollout-2": Handle(), "rollout-3": Handle()}
    watch.update(actors)
    assert set(watch.pending) == {"rollout-2", "rollout-3"} and watch.placed_at == {}
    assert watch.due()
    with caplog.at_level(logging.WARNING, "videorl.rlctl"):
        line = watch.say(2, need, {"CPU": 1.0})    # the rollout node was lost: nothing offers videorl_rollout
    assert line == ("waiting for a node offering videorl_rollout: 2 rollout actors cannot be placed "
                    "(pending: rollout-2, rollout-3; the cluster offers videorl_rollout 0 of the 2 they need)")
    assert caplog.messages == [line]
    assert not watch.due()                       # once per SAY_EVERY_S
    # a node offering one joined: one of the two can be placed, the other still cannot
    watch.last_said = watch.last_looked = float("-inf")
    assert watch.say(2, need, {"videorl_rollout": 1.0}).startswith(
        "waiting for a node offering videorl_rollout: 1 rollout actor cannot be placed")
    # a node offering both joined: Ray places them; nothing to say while they start
    watch.last_said = watch.last_looked = float("-inf")
    assert watch.say(2, need, {"videorl_rollout": 2.0}) is None
    fake_ray.ready.add(actors["rollout-2"].ref)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "videorl.rlctl"):
        watch.update(actors)
    assert set(watch.pending) == {"rollout-3"} and set(watch.placed_at) == {"rollout-2"}
    assert caplog.messages and caplog.messages[0].startswith("rollout actor rollout-2 was placed after waiting")
    del actors["rollout-3"]                       # died while pending: forgotten
    watch.update(actors)
    assert watch.pending == {} and not watch.due()


def test_actors_that_can_be_placed_are_not_said_to_wait(fake_ray):
    watch = PlacementWatch()
    watch.update({"rollout-0": Handle()})
    assert watch.say(1, {}, {}) is None                       # a local run asks for nothing: always placeable
    assert watch.say(1, {"videorl_rollout": 1}, {"videorl_rollout": 1.0}) is None   # placed, its process starting


def test_the_learner_waits_for_a_node_that_can_take_its_ranks_and_says_so(fake_ray, monkeypatch, caplog):
    import ray

    rank0, looks = Handle(), []

    def resources():   # the learner node joins at the third look (with room for both ranks), Ray places rank 0
        looks.append(1)
        if len(looks) == 3:
            fake_ray.ready.add(rank0.ref)
            return {"videorl_learner": 2.0}
        return {"CPU": 2.0}

    monkeypatch.setattr(ray, "cluster_resources", resources)
    with caplog.at_level(logging.WARNING, "videorl.rlctl"):
        wait_placed(rank0, "the learner's 2 ranks", 2, {"videorl_learner": 1}, say_every_s=0)
    assert caplog.messages == ["waiting for a node offering videorl_learner: the learner's 2 ranks cannot be placed "
                               "(the cluster offers videorl_learner 0 of the 2 needed)"] * 2


class _Control:
    def __init__(self):
        self.registered: list[ActorInfo] = []
        self.states: dict[str, str] = {}

    def set_actor_state(self, actor_id: str, state: str) -> None:
        self.states[actor_id] = state

    def actors(self):
        return self.registered


def test_the_start_timeout_counts_from_placement_not_from_the_wait_for_a_node(fake_ray, caplog):
    run = LocalRun(RunConfig(rollout={"faults": {"start_timeout_s": 60}}), target=CLUSTER)
    run.cfg = run.cfg.on("cpu")
    run.control, run.actors = _Control(), {"rollout-2": Handle()}
    with caplog.at_level(logging.WARNING, "videorl.rlctl"):
        run.supervisor.check()
    assert [m for m in caplog.messages if m.startswith("waiting for a node offering videorl_rollout: 1 rollout")]
    watch = run.supervisor.placement
    watch.pending["rollout-2"] = (watch.pending["rollout-2"][0], time.monotonic() - 600)  # waited 10 minutes
    run.supervisor.check()                                     # waiting for a node is not loading: no error
    fake_ray.ready.add(run.actors["rollout-2"].ref)
    run.control.registered = [ActorInfo("rollout-2", -1, time.time(), "loading", {})]
    run.supervisor.check()                                     # placed just now: loading within the timeout
    assert set(watch.placed_at) == {"rollout-2"}
    watch.placed_at["rollout-2"] = time.monotonic() - 61
    with pytest.raises(RuntimeError, match=r"rollout-2 still loading .* 60s \(rollout.faults.start_timeout_s\)"):
        run.supervisor.check()


class _Launcher:
    """What the Supervisor sees of a run (rlctl.supervisor.Launcher): two actors whose run() refs are `runs`."""

    def __init__(self):
        self.cfg, self.target, self.control = RunConfig().on("cpu"), ClusterTarget(), _Control()
        self.redis_keeper, self.reward_run, self.reward_addr, self.learner_records = None, None, "", []
        self.actors = {"rollout-0": Handle(), "rollout-1": Handle()}
        self.actor_runs = {a: object() for a in self.actors}
        self.added: list[str] = []

    def next_actor_id(self) -> str:
        return f"rollout-{len(self.added) + 2}"

    def add_actor(self, actor_id: str) -> None:
        self.actors[actor_id] = Handle()
        self.actor_runs[actor_id] = object()
        self.added.append(actor_id)

    def release(self, actor_id: str) -> None:
        pass


def test_an_unreachable_actor_is_replaced_once_ray_declares_it_dead_not_before(monkeypatch):
    """A lost node's actors are first only unreachable: replaced then, their replacements could land on the node the
    GCS still counts as alive, and die with it."""
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    from rlctl.supervisor import Supervisor

    run = _Launcher()
    run.control.hand_over_prompts = lambda actor_id: 1
    run.control.incr = lambda name: None
    sup = Supervisor(run, run.cfg.supervisor)
    sup.placement.placed_at = {a: time.monotonic() for a in run.actors}
    outcomes, killed = {run.actor_runs["rollout-0"]: ActorUnavailableError("Socket closed", None)}, []

    def get(ref):
        if isinstance(outcomes[ref], Exception):
            raise outcomes[ref]
        return outcomes[ref]

    monkeypatch.setattr(ray, "wait", lambda refs, num_returns=1, timeout=None: (
        [r for r in refs if r in outcomes], [r for r in refs if r not in outcomes]))
    monkeypatch.setattr(ray, "get", get)
    monkeypatch.setattr(ray, "kill", killed.append)
    monkeypatch.setattr(ray, "cluster_resources", dict)
    lost = run.actors["rollout-0"]
    sup.check()                                     # unreachable: probed, not replaced
    assert set(sup.unreachable) == {"rollout-0"} and run.added == [] and "rollout-0" in run.actors
    outcomes[lost.ref] = ActorUnavailableError("Socket closed", None)
    sup.check()                                     # still only unreachable: probed again
    assert run.added == [] and sup.restarts["actor"] == 0
    outcomes[lost.ref] = ActorDiedError()           # the GCS noticed the node is gone
    sup.check()
    assert run.added == ["rollout-2"] and "rollout-0" not in run.actors and killed == [lost]
    assert sup.unreachable == {} and sup.restarts["actor"] == 1
    assert run.control.states == {"rollout-0": "dead"}, "marked dead: it must not be named in the next weight group"


def test_an_actor_reachable_again_after_losing_its_run_call_is_killed_and_replaced(monkeypatch):
    import ray
    from ray.exceptions import ActorUnavailableError

    from rlctl.supervisor import Supervisor

    run = _Launcher()
    run.control.hand_over_prompts = lambda actor_id: 0
    run.control.incr = lambda name: None
    sup = Supervisor(run, run.cfg.supervisor)
    sup.placement.placed_at = {a: time.monotonic() for a in run.actors}
    cut_off = run.actors["rollout-1"]
    outcomes = {run.actor_runs["rollout-1"]: ActorUnavailableError("Socket closed", None), cut_off.ref: None}
    killed: list = []

    def get(ref):
        if isinstance(outcomes[ref], Exception):
            raise outcomes[ref]
        return outcomes[ref]

    monkeypatch.setattr(ray, "wait", lambda refs, num_returns=1, timeout=None: (
        [r for r in refs if r in outcomes], [r for r in refs if r not in outcomes]))
    monkeypatch.setattr(ray, "get", get)
    monkeypatch.setattr(ray, "kill", killed.append)
    monkeypatch.setattr(ray, "cluster_resources", dict)
    sup.check()   # its run() call failed, then its probe came back: alive, but no longer serving
    assert killed == [cut_off] and run.added == ["rollout-2"] and "rollout-1" not in run.actors
