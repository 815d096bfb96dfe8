"""The reward service over a real grpc.aio server on loopback, writing to a real Redis."""

import asyncio
import json

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from services.common.config import RewardConfig
from services.common.control import EVALS, GROUPS
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.common.pb.videorl.v1 import rollout_pb2_grpc as pb_grpc
from services.reward.judge import JudgeClient
from services.reward.scoring import Scorer
from services.reward.server import start_server

K = 4


def _group(prompt_id, texts, version=1, split="train", answer="B", group_id=None, task="mcq"):
    prompt = pb.Prompt(prompt_id=prompt_id, task=task, question="q", options=["up", "down", "left", "right"],
                       answer=answer, split=split, video_uri="/v.mp4")
    return [pb.Completion(run_id="r", prompt_id=prompt_id, group_id=group_id or f"{prompt_id}/v{version}",
                          sample_index=i, group_size=len(texts), policy_version=version, completion_token_ids=[1, 2],
                          logprobs=[-0.1, -0.2], text=t, actor_id="a0", prompt=prompt) for i, t in enumerate(texts)]


async def _exchange(control, messages, scorer=None):
    server, port = await start_server(control, scorer or Scorer(RewardConfig().components), CollectorRegistry())
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


def test_task_components_and_weights_are_recorded_in_the_scored_group(control):
    cfg = RewardConfig.model_validate({"tasks": {"strict": [{"name": "mcq", "weight": 0},
                                                            {"name": "format", "gate": "mcq", "label": "fmt"}]}})
    texts = ["<think>t</think><answer>B</answer>", "<think>t</think><answer>A</answer>", "B", "x"]
    acks = asyncio.run(_exchange(control, _group("p6", texts, task="strict"), Scorer(cfg)))
    assert list(acks[0].rewards) == [1.0, 0.0, 0.0, 0.0]
    (_, payload), = control.read_groups(GROUPS, "l", 5, 10)
    g = pb.ScoredGroup.FromString(payload)
    assert [(c.name, c.weight, list(c.values)) for c in g.components] == [
        ("mcq", 0.0, [1.0, 0.0, 1.0, 0.0]), ("fmt", 1.0, [1.0, 0.0, 0.0, 0.0])]


def test_groups_of_one_stream_are_scored_concurrently_and_acked_in_order(control):
    """The judge double answers only once requests of 3 different groups wait at the same time; were the
    stream's groups scored one after another it would time out and every reward would be NaN."""
    waiting: set[str] = set()

    async def post(url, data, headers):
        waiting.add(json.loads(data)["messages"][1]["content"].split("QUESTION:\n", 1)[1].split("\n", 1)[0])
        while len(waiting) < 3:
            await asyncio.sleep(0.001)
        return 200, json.dumps({"choices": [{"message": {"content": '{"score": 5}'}}]}).encode()

    cfg = RewardConfig.model_validate({"components": [{"name": "judge", "rubric": "reference"}],
                                       "judge": {"model": "m", "timeout_s": 10, "retries": 0}})
    scorer = Scorer(cfg, judge=JudgeClient(cfg.judge, post=post))
    msgs = []
    for i in range(3):
        group = _group(f"c{i}", ["<answer>up</answer>", "<answer>down</answer>"])
        for c in group:
            c.prompt.question = f"question {i}"
        msgs += group
    acks = asyncio.run(_exchange(control, msgs, scorer))
    assert [a.prompt_id for a in acks] == ["c0", "c1", "c2"]
    assert [list(a.rewards) for a in acks] == [[0.5, 0.5]] * 3
