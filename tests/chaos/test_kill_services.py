"""Chaos on a real local run (embedded Redis, Ray, gRPC reward service, 2 vLLM actors, DeepSpeed learner): a service
is killed with SIGKILL mid-run and the run must finish losing nothing (invariant 4 of the design, docs/architecture.md).

a. a rollout actor dies mid-generation: LocalRun replaces it, the prompts it held are reclaimed by the others after
   rollout.faults.reclaim_idle_s and scored once;
b. the reward service dies: LocalRun starts another on the same port, the actors reconnect and resend what was not
   acked (a group the dead one had written comes back DUPLICATE and counts as done);
c. the learner dies: LocalRun starts another that resumes from the last checkpoint; it trains the groups the dead
   one had taken first and skips, by the ledger, those it had trained after the checkpoint; with learner.ranks=2,
   a rank that only trains (not the driver) dies: the whole group is replaced, resumed the same way;
d. Redis dies (persistence on: append-only file, fsync always): LocalRun starts it again on its port and data,
   every service retries its commands meanwhile, nothing acknowledged before the crash is missing after it, and a
   prompt whose delivery reply the crash lost is found by its actor (no waiting for rollout.faults.reclaim_idle_s).

Each asserts from Redis, after the actors stopped: every prompt delivered was scored exactly once, none is pending,
no group is in the ledger twice, and the learner ran all its steps. Each prints the counts it asserted.
"""

import os
import signal
import time
from dataclasses import dataclass

import pytest
from ledger_checks import Counts, assert_exactly_once, pending, scored_groups, scored_ids
from rich.console import Console

from rlctl.local import LocalRun
from rlctl.summary import scrape
from services.common.config import load_config
from services.common.records import StepRecord

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STEPS = 30
IN_FLIGHT = "videorl_rollout_requests_inflight_count"
# Every actor must have stopped before Redis is read: a replacement still loading its engine on a loaded machine
# (2 shared cores) can take longer than stop_actors' default minute, and one still working holds prompts.
STOP_S = 300


def _config(tmp_path, *extra):
    return load_config(None, [f"learner.steps={STEPS}", "learner.publish_every=5", "learner.eval_every=10",
                              "data.synth_eval=4", "rollout.num_actors=2", f"run_dir={tmp_path / 'run'}", *extra])


def _steps(control):
    return len(control.step_records())


@dataclass
class Outcome:
    """What a scenario's run left, read from Redis once the learner finished and every actor stopped."""
    run: LocalRun
    records: list[StepRecord]
    counts: Counts
    groups: list
    counters: dict[str, int]
    ledger: set[str]
    actors: dict[str, dict[str, str]]     # actor id -> its registry fields
    redis_pid: int | None                 # the embedded Redis serving at the end


def _run_with_fault(cfg, fault, **checks) -> Outcome:
    """Run `cfg` locally, calling `fault(run, control)` every 0.2 s (it kills something once), then stop the actors
    and assert the exactly-once checks (`checks`: assert_exactly_once's allowances) before everything stops."""
    run = LocalRun(cfg, Console(quiet=True))
    try:
        control = run.start()
        records = run.wait(on_tick=lambda: fault(run, control), tick_s=0.2)
        run.stop_actors(timeout_s=STOP_S)
        return Outcome(run, records, assert_exactly_once(control, records, **checks), scored_groups(control),
                       control.counters(), control.ledger(), {a.actor_id: a.fields for a in control.actors()},
                       run.redis.proc.pid if run.redis else None)
    finally:
        run.close()


def test_kill_9_a_rollout_actor_mid_generation(tiny_assets, tmp_path):
    cfg = _config(tmp_path)   # the default reclaim_idle_s (300 s): the supervisor hands the prompts over at once
    state = {}

    def tick(run, control):
        if "killed" in state or _steps(control) < 6:
            return
        # Mid-generation: rollout-0's engine is sampling, for prompts whose groups are not scored yet.
        sampling = scrape(control.exporters()["rollout:rollout-0"], (IN_FLIGHT,)).get(IN_FLIGHT, 0)
        held = pending(control, "rollout-0")
        if not sampling or not [p for _, p in held if p not in scored_ids(control)]:
            return
        (info,) = [a for a in control.actors() if a.actor_id == "rollout-0"]
        os.kill(int(info.fields["pid"]), signal.SIGKILL)
        state.update(killed=time.time(), step=_steps(control), held=[p for _, p in held])

    out = _run_with_fault(cfg, tick)
    run, records, counts, groups, counters = out.run, out.records, out.counts, out.groups, out.counters
    assert "killed" in state, "the run ended before rollout-0 was caught mid-generation"
    assert [r.step for r in records] == list(range(1, STEPS + 1))      # the run finished
    assert run.supervisor.restarts == {"actor": 1, "reward": 0, "learner": 0} and counters["actors_restarted"] == 1
    assert counters["prompts_handed_over"] >= 1   # the prompts it held went back to the live actors at once
    by_prompt = {g.prompt_id: g for g in groups}
    held = state["held"]
    assert set(held) <= set(by_prompt), "a prompt the dead actor held was never scored"
    reclaimed = [p for p in held if by_prompt[p].actor_id != "rollout-0"]
    assert reclaimed, "no prompt the dead actor held was scored by another actor"
    # The survivor kept generating after the kill (and the replacement, rollout-2, joined once its engine loaded).
    after = {g.actor_id for g in groups if g.scored_at > state["killed"] + 1}
    assert "rollout-1" in after and "rollout-0" not in after
    print(f"\nkill -9 rollout-0 at step {state['step']}: {counts.line()}; held by the dead actor {len(held)}, "
          f"handed over {counters['prompts_handed_over']}, scored by others {len(reclaimed)}, "
          f"actors restarted {counters['actors_restarted']}, groups by actor after the kill {sorted(after)}, "
          f"steps {len(records)}")


def test_kill_9_the_reward_service_and_restart_it(tiny_assets, tmp_path):
    cfg = _config(tmp_path, "rollout.faults.reconnect_max_s=1")
    state = {}

    def tick(run, control):
        if "killed" not in state and _steps(control) >= 6:
            state.update(killed=time.time(), step=_steps(control), old_pid=run.pids["reward"],
                         written=len(scored_ids(control)))
            os.kill(run.pids["reward"], signal.SIGKILL)

    out = _run_with_fault(cfg, tick)
    run, records, counts, groups, counters, actors = (out.run, out.records, out.counts, out.groups, out.counters,
                                                      out.actors)

    assert "killed" in state
    assert [r.step for r in records] == list(range(1, STEPS + 1))      # the run finished
    assert run.supervisor.restarts == {"actor": 0, "reward": 1, "learner": 0} and counters["reward_restarted"] == 1
    assert run.pids["reward"] != state["old_pid"]
    # Both actors lived through it: they reconnected to the new service and both scored groups after the kill.
    assert set(actors) == {"rollout-0", "rollout-1"}
    assert all(int(f["reconnects"]) >= 1 for f in actors.values()), actors
    assert {g.actor_id for g in groups if g.scored_at > state["killed"]} == {"rollout-0", "rollout-1"}
    resent = sum(int(f["groups_resent"]) for f in actors.values())
    print(f"\nkill -9 the reward service at step {state['step']} ({state['written']} groups written before): "
          f"{counts.line()}; reward restarted {counters['reward_restarted']}, reconnects "
          f"{ {a: int(f['reconnects']) for a, f in actors.items()} }, groups resent {resent}, steps {len(records)}")


def _scored_between(groups, t0: float, t1: float) -> dict[str, int]:
    out: dict[str, int] = {}
    for g in groups:
        if t0 < g.scored_at <= t1:
            out[g.actor_id] = out.get(g.actor_id, 0) + 1
    return out


def test_kill_9_the_learner_and_resume_it_from_its_checkpoint(tiny_assets, tmp_path):
    cfg = _config(tmp_path, "learner.checkpoint_every=5")
    state = {}

    def tick(run, control):
        # Killed while prompts wait for the actors (queued or being generated), so there is work to go on with:
        # the learner feeds none while it is down.
        if "killed" not in state and _steps(control) >= 8 and control.prompts_queued() >= 2:
            state.update(killed=time.time(), step=_steps(control), old_pid=run.pids["learner"])
            os.kill(run.pids["learner"], signal.SIGKILL)

    out = _run_with_fault(cfg, tick, unrecorded=cfg.learner.groups_per_step)
    run, records, counts, groups, counters = out.run, out.records, out.counts, out.groups, out.counters

    assert "killed" in state
    assert run.supervisor.restarts == {"actor": 0, "reward": 0, "learner": 1} and counters["learner_restarted"] == 1
    assert run.pids["learner"] != state["old_pid"]
    steps = [r.step for r in records]
    first_resumed = len(run.learner_records)    # the dead learner's records come first
    resumed = steps[first_resumed:]
    # The new learner continued after the checkpoint (step 5 or 10), not from scratch, and finished the run.
    assert resumed == list(range(resumed[0], STEPS + 1)) and 5 < resumed[0] <= state["step"] + 1
    assert steps[:first_resumed] == list(range(1, first_resumed + 1))
    # The actors kept serving while the learner was down: groups were scored between the kill and the new learner's
    # first step, and both actors scored groups after the kill.
    back = records[first_resumed].time
    during = _scored_between(groups, state["killed"], back)
    assert sum(during.values()) >= 1, "no group was scored while the learner was down"
    assert set(_scored_between(groups, state["killed"], float("inf"))) == {"rollout-0", "rollout-1"}
    print(f"\nkill -9 the learner after step {state['step']}: {counts.line()}; learner restarted "
          f"{counters['learner_restarted']}, resumed at step {resumed[0]} (checkpoints every 5), steps run "
          f"{len(steps)} (repeated after the checkpoint {len(steps) - STEPS}), groups scored while it was down "
          f"{during}, dropped as already trained {counters.get('groups_dropped:already_trained', 0)}, "
          f"down {back - state['killed']:.1f} s")


def test_kill_9_a_learner_rank_restarts_the_whole_group_from_its_checkpoint(tiny_assets, tmp_path):
    cfg = _config(tmp_path, "learner.checkpoint_every=5", "learner.ranks=2")
    state = {}

    def tick(run, control):
        if "killed" not in state and _steps(control) >= 8:
            state.update(killed=time.time(), step=_steps(control), pids=dict(run.pids))
            os.kill(run.pids["learner-rank1"], signal.SIGKILL)   # not the driver: a rank that only trains

    out = _run_with_fault(cfg, tick, unrecorded=cfg.learner.groups_per_step)
    run, records, counts = out.run, out.records, out.counts

    assert "killed" in state
    assert run.supervisor.restarts == {"actor": 0, "reward": 0, "learner": 1}
    # The whole group was replaced: rank 0 too, though its process was alive.
    assert run.pids["learner"] != state["pids"]["learner"]
    assert run.pids["learner-rank1"] != state["pids"]["learner-rank1"]
    steps = [r.step for r in records]
    resumed = steps[len(run.learner_records):]
    assert resumed == list(range(resumed[0], STEPS + 1)) and 5 < resumed[0] <= state["step"] + 1
    print(f"\nkill -9 learner rank 1 (of 2) after step {state['step']}: {counts.line()}; the group restarted, "
          f"resumed at step {resumed[0]}, steps run {len(steps)}")


def test_kill_9_redis_and_restart_it_on_its_persisted_data(tiny_assets, tmp_path):
    # A prompt delivered by a command whose reply the crash lost stays pending under its actor, unseen: the actor
    # finds it among its pending entries (services/rollout/actor.py, ORPHAN_CHECK_S). reclaim_idle_s stays at its
    # 300 s default, so a prompt left to the reclaim would still be pending at the end, which the checks refuse.
    cfg = _config(tmp_path)
    state = {}

    def tick(run, control):
        if "killed" not in state and _steps(control) >= 6:
            c = control.counters()
            state.update(killed=time.time(), step=_steps(control), pid=run.redis.proc.pid,
                         written=c["groups_written"], fed=c["prompts_fed"], ledger=control.ledger(),
                         version=control.current_version())
            os.kill(run.redis.proc.pid, signal.SIGKILL)

    out = _run_with_fault(cfg, tick, replays=True)
    run, records, counts, groups, counters, ledger = (out.run, out.records, out.counts, out.groups, out.counters,
                                                      out.ledger)

    assert "killed" in state
    assert [r.step for r in records] == list(range(1, STEPS + 1))      # the run finished
    assert run.redis_keeper.restarts == 1 and counters["redis_restarted"] == 1
    assert run.supervisor.restarts == {"actor": 0, "reward": 0, "learner": 0}    # every service rode it out
    assert out.redis_pid not in (None, state["pid"])
    # What was acknowledged before the crash is still there after it (append-only file, fsync always).
    assert counters["groups_written"] >= state["written"] and counters["prompts_fed"] >= state["fed"]
    assert state["ledger"] <= ledger
    after = [r.published for r in records if r.published and r.time > state["killed"]]
    assert after and min(after) > state["version"], "a version published after the crash is not above the last one"
    # Both actors worked on after Redis came back.
    assert set(_scored_between(groups, state["killed"], float("inf"))) == {"rollout-0", "rollout-1"}
    print(f"\nkill -9 Redis at step {state['step']} ({state['written']} groups written, {len(state['ledger'])} "
          f"trained before): {counts.line()}; redis restarted {counters['redis_restarted']}, "
          f"prompts found orphaned by their actor {counters.get('prompts_orphaned', 0)}, steps {len(records)}")



@pytest.mark.parametrize("shared", [False, True], ids=["over-gloo", "in-shared-memory"])
def test_kill_9_a_rollout_actor_during_a_weight_broadcast(tiny_assets, tmp_path, shared):
    """e. weights.transport broadcast: rollout-0 is killed the moment the learner offers a version to the weight group
    (the bytes are on their way). The learner's send fails within weights.timeout_s instead of hanging, the version
    goes out as a disk copy that the survivor loads, the replacement loads the current version before it generates
    and is in the group of a later version, and nothing is lost or trained twice. A tiny model's learner would finish
    before the replacement's engine has started, so the test holds the learner (SIGSTOP) from the version's
    publication until the replacement reports. Over gloo (as between machines) the send fails when the peer's socket
    closes; in shared memory (the default on one machine) the learner stops waiting for the dead actor's
    acknowledgement once the supervisor marks it dead."""
    import threading

    from services.common.weight_plane import WeightPlane

    steps = 40
    cfg = _config(tmp_path, "weights.transport=broadcast", "weights.timeout_s=15", "weights.checksum_every=1",
                  f"learner.steps={steps}", f"weights.shared_memory={str(shared).lower()}")
    state: dict = {}

    def kill_on_offer(control) -> None:
        ps = control.subscribe_versions()
        while "killed" not in state:
            msg = ps.get_message(timeout=0.05)
            if msg and msg["data"].startswith(b"offer:"):
                (info,) = [a for a in control.actors() if a.actor_id == "rollout-0"]
                os.kill(int(info.fields["pid"]), signal.SIGKILL)
                state.update(killed=time.time(), version=int(msg["data"].split(b":")[1]), step=_steps(control))
        ps.close()

    def tick(run, control):
        if "watcher" not in state:
            state["watcher"] = threading.Thread(target=kill_on_offer, args=(control,), daemon=True)
            state["watcher"].start()
        if "killed" in state and "current_at" not in state and (control.current_version() or 0) >= state["version"]:
            state["current_at"] = time.time()
            os.kill(run.pids["learner"], signal.SIGSTOP)
        if "current_at" in state and "resumed" not in state and any(
                a.actor_id == "rollout-2" and a.state in ("waiting", "running") for a in control.actors()):
            os.kill(run.pids["learner"], signal.SIGCONT)
            state["resumed"] = time.time()
        if "killed" in state and "manifests" not in state and _steps(control) == steps:
            plane = WeightPlane(control)
            state["manifests"] = {v: control.manifest(v) for v in range(1, control.current_version() + 1)}
            state.update(group=plane.group(), swaps={a: control.swaps(a) for a in ("rollout-1", "rollout-2")},
                         sums={v: plane.checksums(v) for v in state["manifests"]},
                         acked=plane.received(state["version"]))

    out = _run_with_fault(cfg, tick)
    assert "killed" in state, "no version was offered"
    v, manifests = state["version"], state["manifests"]
    assert [r.step for r in out.records] == list(range(1, steps + 1))
    assert out.run.supervisor.restarts["actor"] == 1
    failed = out.counters.get("weight_broadcasts_failed", 0)
    if shared and not failed:
        # Mapping the file and acknowledging it takes rollout-0 a millisecond or two after the offer: the kill can
        # land after that, and then the hand-over rightly succeeded (over gloo the send takes longer than the kill).
        assert "rollout-0" in state["acked"] and manifests[v].transport == "broadcast", state
    else:
        assert failed >= 1 and manifests[v].on_disk and manifests[v].transport == "disk", "no disk copy"
    assert state["current_at"] - state["killed"] < 15 + 10, "the learner waited past weights.timeout_s"
    assert v in state["swaps"]["rollout-1"], "the survivor loaded the version the broadcast did not finish"
    later = [m for m in manifests.values() if m.version > v and m.transport == "broadcast"]
    assert later and "rollout-2" in state["group"].members, (
        f"the replacement never joined a later weight group: {state['group']}, swaps {state['swaps']}")
    assert min(state["swaps"]["rollout-2"]) >= v, "the replacement served a version older than the current one"
    # every broadcast version each actor got: vLLM's checksums of its weights equal every other actor's
    compared = state["sums"].values()
    assert any(len(d) >= 2 for d in compared) and all(len(set(d.values())) <= 1 for d in compared), state["sums"]
    assert "weight_checksum_mismatch" not in out.counters
    print(f"\nkill -9 rollout-0 during the broadcast of v{v} (step {state['step']}): {out.counts.line()}; current "
          f"{state['current_at'] - state['killed']:.1f}s after the kill, broadcasts failed {failed}, later versions "
          f"broadcast {[m.version for m in later]}, final group {sorted(state['group'].members)}")
