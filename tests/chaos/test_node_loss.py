"""Node loss: the rollout node of a multi-node run (the cluster and run of tests/integration/test_multinode.py) is lost
mid-run, its raylet and every process under it killed at once (SIGKILL, as a pod or machine that vanishes), after a
version was published, while steps remain and the actors hold prompts.

The run must wait and say so: the supervisor replaces the dead actors (RayActorError), Ray keeps the replacements
pending as no node offers `videorl_rollout`, and rlctl prints "waiting for a node offering videorl_rollout: 2 rollout
actors cannot be placed ..." (rlctl/placement_watch.py), without failing them as "still loading their engine"
(rollout.faults.start_timeout_s counts from placement). Then a new rollout node joins, Ray places the replacements
there, and the run finishes.

Asserted: the replacements were pending (state API) until the new node joined and then ran on it, every actor that
ran before the loss ran on the lost node, the waiting line was printed, the replacements loaded the current version,
every step ran once, and the chaos suite's exactly-once checks hold (nothing lost, nothing trained twice).
"""

import time

import psutil
import pytest
from cluster_run import ClusterRun, actors_by_class, run_config
from ledger_checks import assert_exactly_once, pending, scored_groups
from ray_nodes import RayCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STEPS = 12   # the steps after the first version go fast (~0.7 s each): 8 left too short a window to catch it
RUN_S = 900
WAITING = "waiting for a node offering videorl_rollout: 2 rollout actors cannot be placed"


def _poll(what: str, check, run: ClusterRun, timeout_s: float, every_s: float = 0.5):
    """check() every `every_s` until it returns something true, while `rlctl run` is alive; fails naming `what`."""
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert run.proc is not None and run.proc.poll() is None, f"rlctl run exited:\n{run.output()[-6000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout_s:.0f}s:\n{run.output()[-6000:]}"
        time.sleep(every_s)
    return found


def test_losing_the_rollout_node_mid_run_waits_for_a_new_one_and_loses_nothing(tiny_assets, tmp_path):
    cfg = run_config(tmp_path, STEPS, supervisor={"actor": {"max_restarts": 4}})
    run_id = cfg["run_id"]
    with RayCluster(tmp_path / "logs") as cluster:
        lost = cluster.launch("rollout", {"videorl_rollout": 2})
        learner = cluster.launch("learner", {"videorl_learner": 2})
        with ClusterRun(cluster, tmp_path, cfg) as run:
            control = run.start_services()   # while the worker nodes start
            cluster.joined(lost, learner)
            run.start_run()
            # after a published version, with steps left, while the actors hold prompts (taken, not yet scored)
            _poll("published version and prompts held", lambda: any(r.published for r in control.step_records())
                  and pending(control), run, RUN_S, every_s=0.1)
            at_step, at_version = len(control.step_records()), control.current_version()
            lost_processes = lost.processes()
            lost.kill()
            lost_at = time.monotonic()
            _poll("waiting line", lambda: WAITING in run.output(), run, 120)
            pending_replacements = _poll("pending replacements", lambda: [
                a for a in actors_by_class(cluster, run_id).get("RolloutActor", [])
                if a["state"] == "PENDING_CREATION"], run, 60)
            assert run.proc.poll() is None   # waiting, not failed
            new = cluster.add("rollout-new", {"videorl_rollout": 2})
            waited = time.monotonic() - lost_at
            run.wait(RUN_S)
            actors = actors_by_class(cluster, run_id)
            records = control.step_records()
            counts = assert_exactly_once(control, records)
            groups, counters = scored_groups(control), control.counters()
            registry = {a.actor_id: a for a in control.actors()}
            swaps = {a: control.swaps(a) for a in registry}

    assert at_step < STEPS, "the run ended before the node was lost"
    assert [r.step for r in records] == list(range(1, STEPS + 1))      # the run finished, every step once
    assert not [p for p in lost_processes if _alive(p)], "a process of the lost node survived it"
    # The dead actors were replaced once each; the replacements waited for a node, then ran on the new one.
    rollout = {a["name"].removeprefix(f"{run_id}-"): a for a in actors["RolloutActor"]}
    assert sorted(rollout) == ["rollout-0", "rollout-1", "rollout-2", "rollout-3"], sorted(rollout)
    assert {rollout[a]["node_id"] for a in ("rollout-0", "rollout-1")} == {lost.node_id}
    assert {rollout[a]["node_id"] for a in ("rollout-2", "rollout-3")} == {new.node_id}
    assert {a["name"] for a in pending_replacements} == {f"{run_id}-rollout-2", f"{run_id}-rollout-3"}
    assert counters["actors_restarted"] == 2 and counters["prompts_handed_over"] >= 1   # once each, with their prompts
    assert {a["node_id"] for a in actors["LearnerDriver"] + actors["LearnerRank"]} == {learner.node_id}
    out = run.output()
    assert "still loading" not in out
    assert "rollout actor rollout-2 was placed after waiting" in out and "rollout-3 was placed after waiting" in out
    # The replacements served the current version from their start and scored groups after the loss.
    assert {registry[a].loaded_version for a in ("rollout-2", "rollout-3")} == {control_version(records)}
    assert all(min(swaps[a]) >= at_version for a in ("rollout-2", "rollout-3")), swaps
    by_actor = {a: sum(g.actor_id == a for g in groups) for a in sorted(registry)}
    assert by_actor["rollout-2"] + by_actor["rollout-3"] >= 1
    print(f"\nrollout node lost after step {at_step} (version {at_version}): {counts.line()}; actors restarted "
          f"{counters['actors_restarted']}, prompts handed over {counters.get('prompts_handed_over', 0)}, new node "
          f"after {waited:.0f}s, groups by actor {by_actor}")


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE   # killed, not reaped yet: gone
    except psutil.NoSuchProcess:
        return False


def control_version(records) -> int:
    """The last version the learner published."""
    return [r.published for r in records if r.published][-1]
