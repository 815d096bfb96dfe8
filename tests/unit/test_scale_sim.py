"""RolloutActor's engine_factory hook and the timed engine bench/scale_sim_bench.py plugs into it, with real Redis and
a real reward gRPC server: if either drifts from the actor's engine protocol, the scale simulation breaks here."""

import asyncio
from pathlib import Path

import numpy as np
import pytest
from actor_runs import stop_actor, wait_for
from prometheus_client import CollectorRegistry

from services.common.config import RunConfig
from services.common.control import GROUPS
from services.common.dataset import Row
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.common.weights import write_version
from services.embedded.synth import encode_mp4
from services.reward.scoring import Scorer
from services.reward.server import start_server
from services.rollout.actor import RolloutActor


def _bench():
    from bench import scale_sim_bench

    return scale_sim_bench


def test_actor_builds_its_engine_with_the_factory_and_the_timed_engine_serves_it(control, redis_server, tmp_path):
    bench = _bench()
    cfg = RunConfig(run_id=control.run_id, group_size=4, rollout={"prompts_per_batch": 2, "max_new_tokens": 3})
    frames = np.zeros((16, 64, 64, 3), np.uint8)
    encode_mp4(frames, tmp_path / "v.mp4")
    row = Row("r", str(tmp_path / "v.mp4"), "mcq", "Which way?", "B", ("up", "down", "left", "right"))
    for i in range(3):
        control.add_prompt(row.to_prompt(f"p{i}").SerializeToString())
    v1 = write_version(tmp_path / "w", 1, 1, bench.TinyWeights().save_weights)
    built = []

    def factory(model_dir, run_cfg):
        built.append((model_dir, run_cfg))
        built.append(bench.TimedEngine(bench.Costs(prefill_s=0.01, token_s=0.001, load_s=0.01), speedup=1.0))
        return built[-1]

    async def scenario():
        server, port = await start_server(control, Scorer(cfg.reward.components), CollectorRegistry())
        a = RolloutActor(cfg, redis_server.url, f"127.0.0.1:{port}", "a0", "/simulated", engine_factory=factory)
        task = asyncio.create_task(a.run())
        await wait_for(lambda: control.stream_len(GROUPS) >= 1, 5)
        control.publish_version(v1)
        await wait_for(lambda: control.prompts_queued() == 0 and a.loaded_version == 1, 5)
        return await stop_actor(a, task, server)

    stats = asyncio.run(scenario())
    assert built[0] == (Path("/simulated"), cfg) and len(built) == 2   # built once, as configured
    engine = built[1]
    groups = [pb.ScoredGroup.FromString(f[b"group"]) for _, f in control.r.xrange(control.key(GROUPS))]
    assert sorted(g.prompt_id for g in groups) == ["p0", "p1", "p2"]
    # one correct letter in K: mcq 1 + format 0.1 for it, format 0.1 for the others
    assert all(sorted(g.rewards) == pytest.approx([0.1, 0.1, 0.1, 1.1]) for g in groups)
    assert all(len(c.completion_token_ids) == 3 for g in groups for c in g.completions)
    assert engine.loads == 1 and stats.loaded_version == 1 and control.prompts_queued() == 0


def test_timed_engine_sleeps_its_cost_and_returns_none_when_aborted():
    bench = _bench()
    costs = bench.Costs(prefill_s=0.02, token_s=0.001, tokens=5, load_s=0.0)
    assert costs.group_s(4, 24) == pytest.approx(0.04) and costs.group_s(4, 2) == pytest.approx(0.028)

    async def scenario():
        engine = bench.TimedEngine(bench.Costs(prefill_s=30.0), speedup=1.0)
        slow = asyncio.create_task(engine.generate("r1", "p", None, 4, 8, 1.0))
        await asyncio.sleep(0.05)
        await engine.abort(["r1", "unknown"])
        fast = bench.TimedEngine(costs, speedup=2.0)
        samples = await fast.generate("r2", "p", None, 4, 8, 1.0)
        return await asyncio.wait_for(slow, 5), samples, engine

    aborted, samples, engine = asyncio.run(scenario())
    assert aborted is None and len(engine.aborted) == 1
    assert len(samples) == 4 and all(len(s.token_ids) == len(s.logprobs) == 5 for s in samples)   # min(tokens, 8)
