"""The actor's stream to the reward service survives the service's death and restart: real Redis, real grpc.aio
servers on loopback (stopped and started again on the same port), only the engine is a double."""

import asyncio
import socket
import time

import pytest
from actor_runs import stop_actor, wait_for
from prometheus_client import CollectorRegistry
from test_rollout_actor import FakeEngine, _video  # the engine double and a test video, as there

from services.common.config import RunConfig
from services.common.control import GROUPS
from services.common.dataset import Row
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.reward.scoring import Scorer
from services.reward.server import start_server
from services.rollout import actor as actor_mod
from services.rollout.reward_link import RewardLink, RewardUnreachable


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group(prompt_id, k=2):
    prompt = pb.Prompt(prompt_id=prompt_id, task="mcq", question="q", options=["up", "down"], answer="B",
                       split="train", video_uri="/v.mp4")
    return [pb.Completion(run_id="r", prompt_id=prompt_id, group_id=f"{prompt_id}/v0", sample_index=i, group_size=k,
                          completion_token_ids=[1], logprobs=[-0.1], text="<answer>B</answer>", actor_id="a0",
                          prompt=prompt) for i in range(k)]


def test_held_groups_are_resent_when_the_service_comes_back_and_a_duplicate_counts_as_done(control):
    cfg = RunConfig(run_id=control.run_id, rollout={"faults": {"reconnect_max_s": 0.2}})
    port = _free_port()
    scorer = Scorer(cfg.reward.components)
    control.write_group("p-old", b"scored before the service died", 2, held_out=False)
    acks = []

    async def on_ack(ack, entry_id):
        acks.append((ack.prompt_id, pb.GroupAck.Status.Name(ack.status), entry_id))

    async def scenario():
        link = RewardLink(cfg, f"127.0.0.1:{port}", on_ack)
        # Sent to a service that died before acking: one it had written, one it had not.
        await link.send("p-old/v0", "1-0", _group("p-old"))
        await link.send("p-new/v0", "2-0", _group("p-new"))
        task = asyncio.create_task(link.run())
        await asyncio.sleep(0.6)                      # nobody listens: it backs off and keeps both groups
        assert not task.done() and link.reconnects >= 2 and len(link.held) == 2
        server, _ = await start_server(control, scorer, CollectorRegistry(), port=port)
        try:
            assert await link.wait_up(5)
            await wait_for(lambda: not link.held, 4)
            await link.close(task)
        finally:
            await server.stop(1)
        return link

    link = asyncio.run(scenario())
    assert sorted(acks) == [("p-new", "SCORED", "2-0"), ("p-old", "DUPLICATE", "1-0")]
    assert link.resent == 2 and not link.held
    (_, last), = control.r.xrevrange(control.key(GROUPS), count=1)
    assert control.stream_len(GROUPS) == 2 and pb.ScoredGroup.FromString(last[b"group"]).prompt_id == "p-new"


def test_a_service_gone_longer_than_the_outage_limit_fails_with_its_address(control):
    cfg = RunConfig(run_id=control.run_id, rollout={"faults": {"reconnect_max_s": 0.1, "reward_outage_s": 0.5}})
    address = f"127.0.0.1:{_free_port()}"

    async def scenario():
        link = RewardLink(cfg, address, lambda ack, entry_id: asyncio.sleep(0))
        await link.send("p/v0", "1-0", _group("p"))
        t0 = time.monotonic()
        with pytest.raises(RewardUnreachable, match=rf"reward service at {address} unreachable .*reward_outage_s"):
            await asyncio.wait_for(link.run(), 10)
        return time.monotonic() - t0

    assert asyncio.run(scenario()) >= 0.5


def test_actor_survives_a_reward_service_restart_and_scores_every_prompt_once(control, redis_server, tmp_path,
                                                                               monkeypatch):
    fake = FakeEngine()
    cfg = RunConfig(run_id=control.run_id, group_size=2,
                    rollout={"prompts_per_batch": 2, "faults": {"reconnect_max_s": 0.2}})
    good = _video(tmp_path)
    rows = [Row(f"r{i}", str(good), "mcq", "Which way?", "B", ("up", "down")) for i in range(12)]
    for i, row in enumerate(rows[:6]):
        control.add_prompt(row.to_prompt(f"p{i}").SerializeToString())
    port = _free_port()
    scorer = Scorer(cfg.reward.components)

    async def scenario():
        server, _ = await start_server(control, scorer, CollectorRegistry(), port=port)
        a = actor_mod.RolloutActor(cfg, redis_server.url, f"127.0.0.1:{port}", "a0", "/unused",
                                   engine_factory=lambda *_: fake)
        task = asyncio.create_task(a.run())
        await wait_for(lambda: control.stream_len(GROUPS) >= 2, 6)
        await server.stop(0)                              # the service goes away mid-stream
        for i, row in enumerate(rows[6:], start=6):       # work keeps arriving while it is down
            control.add_prompt(row.to_prompt(f"p{i}").SerializeToString())
        await asyncio.sleep(0.5)
        assert not task.done()
        server, _ = await start_server(control, scorer, CollectorRegistry(), port=port)
        await wait_for(lambda: control.prompts_queued() == 0, 10)
        return await stop_actor(a, task, server)

    stats = asyncio.run(scenario())
    ids = [pb.ScoredGroup.FromString(f[b"group"]).prompt_id for _, f in control.r.xrange(control.key(GROUPS))]
    assert sorted(ids) == sorted(f"p{i}" for i in range(12))      # each once: none lost, none written twice
    assert control.prompts_queued() == 0
    assert stats.reconnects >= 1
    c = control.counters()
    assert c["groups_written"] == stats.groups_sent == 12
    assert c.get("groups_duplicate", 0) <= stats.groups_resent   # resent after the service had written them
