"""The reward service over a real grpc.aio server on loopback, writing to a real Redis."""

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from services.common.config import RewardConfig
from services.common.control import EVALS, GROUPS
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.common.pb.videorl.v1 import rollout_pb2_grpc as pb_grpc
from services.reward.scoring import Scorer
from services.reward.server import start_server

K = 4


def _group(prompt_id, texts, version=1, split="train", answer="B", group_id=None):
    prompt = pb.Prompt(prompt_id=prompt_id, task="mcq", question="q", options=["up", "down", "left", "right"],
                       answer=answer, split=split, video_uri="/v.mp4")
    return [pb.Completion(run_id="r", prompt_id=prompt_id, group_id=group_id or f"{prompt_id}/v{version}",
                          sample_index=i, group_size=len(texts), policy_version=version, completion_token_ids=[1, 2],
                          logprobs=[-0.1, -0.2], text=t, actor_id="a0", prompt=prompt) for i, t in enumerate(texts)]


async def _exchange(control, messages):
    server, port = await start_server(control, Scorer(RewardConfig().components), CollectorRegistry())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="videorl.v1.RewardService"))
            assert health.status == health_pb2.HealthCheckResponse.SERVING

            async def gen():
                for m in messages:
                    yield m
            return [a async for a in pb_grpc.RewardServiceStub(ch).StreamCompletions(gen())]
    finally:
        await server.stop(1)


def test_groups_are_scored_written_once_and_counted(control):
    right = ["<answer>B</answer>", "<answer>A</answer>", "B", "Direction: left"]
    msgs = _group("p1", right) + _group("p1", right, group_id="p1/resent") + _group("e1", right, split="eval")
    acks = asyncio.run(_exchange(control, msgs))
    assert [a.status for a in acks] == [pb.GroupAck.SCORED, pb.GroupAck.DUPLICATE, pb.GroupAck.SCORED]
    # mcq 1.0 + answer_format 0.1: right+formatted, wrong+formatted, right bare, trap (not D)
    assert [round(r, 3) for r in acks[0].rewards] == [1.1, 0.1, 1.0, 0.0]
    assert control.stream_len(GROUPS) == 1 and control.stream_len(EVALS) == 1
    (_, payload), = control.read_groups(GROUPS, "l", 5, 10)
    g = pb.ScoredGroup.FromString(payload)
    assert g.policy_version == 1 and len(g.completions) == K and g.prompt.answer == "B"
    assert {c.name for c in g.components} == {"mcq", "answer_format"}
    c = control.counters()
    assert c["completions_received"] == c["completions_scored"] == 3 * K
    assert c["groups_written"] + c["eval_groups_written"] + c["groups_duplicate"] == 3


def test_mixed_versions_and_malformed_messages_are_rejected_with_reasons(control):
    mixed = _group("p2", ["B"] * K)
    mixed[1].policy_version = 2
    bad_index = _group("p3", ["B"] * 2)
    bad_index[1].sample_index = 7
    acks = asyncio.run(_exchange(control, mixed + bad_index))
    assert [a.status for a in acks] == [pb.GroupAck.REJECTED, pb.GroupAck.REJECTED]
    assert "mixes versions" in acks[0].reason and "sample_index 7" in acks[1].reason
    assert control.stream_len(GROUPS) == 0


def test_a_malformed_row_is_unscorable_not_fatal(control):
    """An answer that is not an option letter is a data bug: NaN (unscorable), counted, stream goes on."""
    acks = asyncio.run(_exchange(control, _group("p4", ["B"] * K, answer="Z") + _group("p5", ["B"] * K)))
    assert [a.status for a in acks] == [pb.GroupAck.SCORED, pb.GroupAck.SCORED]
    assert all(r != r for r in acks[0].rewards)        # NaN
    assert list(acks[1].rewards) == [1.0] * K
    assert control.counters()["reward_errors"] == 1
