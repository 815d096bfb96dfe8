"""Multi-node Ray, for real, on one machine: the run as the RayJob runs it (tests/cluster_run.py) on three Ray nodes on
loopback, each a raylet of its own (tests/ray_nodes.py): a head with no work resources, a rollout node offering
`videorl_rollout: 2` and a learner node offering `videorl_learner: 2`, as the KubeRay worker groups do; Redis with a
password, the reward service as its own process.

Asserted: from Ray's state API, each rollout actor ran on the rollout node and both learner ranks (LearnerDriver,
rank 0, and LearnerRank) on the learner node, none on the head, and they are the processes that reported to Redis;
every version the learner published was loaded by the rollout node's actors and generated groups; the chaos suite's
exactly-once checks hold (tests/chaos/ledger_checks.py); the password appears in no log.
"""

import pytest
from chaos.ledger_checks import assert_exactly_once, scored_groups
from cluster_run import PASSWORD, ClusterRun, actors_by_class, run_config
from ray_nodes import RayCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STEPS = 6
RUN_S = 900   # rlctl run, start to end, on 2 cores shared with the rest of the suite


def test_rollout_and_learner_ranks_run_on_their_own_nodes_and_weights_cross_between_them(tiny_assets, tmp_path):
    # weights.shared_memory off: these nodes share one machine, which would hand versions over in /dev/shm; a real
    # second node gets them over the gloo group, and that is what this test is for
    cfg = run_config(tmp_path, STEPS, weights={"shared_memory": False})
    with RayCluster(tmp_path / "logs") as cluster:
        rollout = cluster.launch("rollout", {"videorl_rollout": 2})
        learner = cluster.launch("learner", {"videorl_learner": 2})
        head = cluster.nodes[0]
        with ClusterRun(cluster, tmp_path, cfg) as run:
            control = run.start_services()   # while the worker nodes start
            cluster.joined(rollout, learner)
            run.start_run()
            run.wait(RUN_S)
            actors = actors_by_class(cluster, cfg["run_id"])
            records = control.step_records()
            registry = {a.actor_id: a for a in control.actors()}
            counts = assert_exactly_once(control, records)
            groups = scored_groups(control)
            published = [r.published for r in records if r.published]
            swaps = {a: control.swaps(a) for a in registry}
            manifests = {v: control.manifest(v) for v in published}

    assert [r.step for r in records] == list(range(1, STEPS + 1))
    # Placement, as Ray saw it: 2 rollout actors on the rollout node, rank 0 and rank 1 on the learner node.
    assert sorted(actors) == ["LearnerDriver", "LearnerRank", "RolloutActor"], actors
    assert {a["node_id"] for a in actors["RolloutActor"]} == {rollout.node_id}
    assert len(actors["LearnerDriver"]) == len(actors["LearnerRank"]) == 1
    assert {a["node_id"] for a in actors["LearnerDriver"] + actors["LearnerRank"]} == {learner.node_id}
    assert head.node_id not in {a["node_id"] for group in actors.values() for a in group}
    # The actors that reported to Redis are those Ray placed on the rollout node (same pids).
    by_name = {a["name"]: a for a in actors["RolloutActor"]}
    assert set(registry) == {"rollout-0", "rollout-1"}
    for a, info in registry.items():
        assert int(info.fields["pid"]) == by_name[f"{cfg['run_id']}-{a}"]["pid"], a
    # Weights crossed nodes: every version published on the learner node was loaded by the rollout node's actors and
    # generated groups there; every actor serves the last one. On CPU they go over the broadcast transport: a weight
    # group from the learner node's address to the rollout node's workers (a version it failed goes as a disk copy).
    assert published == [2 // 2, 4 // 2, 6 // 2]
    assert all(m is not None and (m.epoch if m.transport == "broadcast" else m.sha256) for m in manifests.values())
    assert [m.transport for m in manifests.values()].count("broadcast") >= 2, manifests
    assert {info.loaded_version for info in registry.values()} == {published[-1]}
    loaded = set().union(*(set(s) for s in swaps.values()))
    assert loaded == set(published), swaps
    assert {g.policy_version for g in groups} - {0}, "no group was generated with published weights"
    assert {g.actor_id for g in groups} == {"rollout-0", "rollout-1"}
    assert PASSWORD not in run.output() and PASSWORD not in (tmp_path / "reward.log").read_text()
    print(f"\nmulti-node: {counts.line()}; published {published}, loaded by actor "
          f"{ {a: sorted(s) for a, s in swaps.items()} }, groups by version "
          f"{ {v: sum(g.policy_version == v for g in groups) for v in sorted({g.policy_version for g in groups})} }")
