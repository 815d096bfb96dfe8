"""The reward service over a real grpc.aio server on loopback, writing to a real Redis."""

import asyncio
import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from services.common.config import ConfigError, load_config
from services.common.control import EVALS, GROUPS
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.common.pb.videorl.v1 import rollout_pb2_grpc as pb_grpc
from services.common.reward_config import RewardConfig
from services.reward.judge import JudgeClient
from services.reward.scoring import GroupScore, Scorer
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


class CrashesOn(Scorer):
    """A scorer with a bug that one input triggers."""

    def __init__(self, prompt_id: str):
        super().__init__(RewardConfig().components)
        self.prompt_id = prompt_id

    async def score(self, prompt, texts):
        if prompt.prompt_id == self.prompt_id:
            raise KeyError("a scorer bug")
        return await super().score(prompt, texts)


def test_a_scorer_that_raises_rejects_that_group_naming_why_and_the_stream_goes_on(control):
    """Not an aborted stream (the actor would resend the same group forever): a REJECTED ack with the reason."""
    msgs = _group("p7", ["B"] * K) + _group("p8", ["B"] * K)
    acks = asyncio.run(_exchange(control, msgs, CrashesOn("p7")))
    assert [a.status for a in acks] == [pb.GroupAck.REJECTED, pb.GroupAck.SCORED]
    assert acks[0].reason == "scoring failed: KeyError: 'a scorer bug'" and acks[0].group_id == "p7/v1"
    assert control.stream_len(GROUPS) == 1 and control.counters()["groups_scoring_failed"] == 1


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


# ----------------------------------------------------------------------------- bounds on held work (backpressure)


class GatedScorer:
    """A scorer double that scores nothing until `gate` is set: work piles up as behind a slow judge."""

    def __init__(self):
        self.gate = asyncio.Event()

    async def score(self, prompt, texts):
        await self.gate.wait()
        return GroupScore([1.0] * len(texts), {"fixed": [1.0] * len(texts)}, {"fixed": 1.0}, [])


def _value(registry, name, **labels):
    return registry.get_sample_value(name, labels or None)


async def _until(condition, what, timeout_s=10.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


class Client:
    """One stream: `send` writes completions (blocking when the server stops reading), acks are collected."""

    def __init__(self, channel):
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.acks: list[pb.GroupAck] = []

        async def requests():
            while (m := await self.outbox.get()) is not None:
                yield m
        self.call = pb_grpc.RewardServiceStub(channel).StreamCompletions(requests())
        self.reader = asyncio.create_task(self._read())

    async def _read(self):
        async for ack in self.call:
            self.acks.append(ack)

    def send(self, completions):
        for c in completions:
            self.outbox.put_nowait(c)

    async def end(self):
        self.outbox.put_nowait(None)
        await self.reader


async def _serve(control, scorer, registry, **limits):
    return await start_server(control, scorer, registry, limits=RewardConfig(**limits))


def test_held_completions_never_exceed_the_cap_and_full_streams_pause(control):
    """12 streams x 3 groups of 4 against a cap of 16 completions (4 groups) while scoring is stalled: the service
    holds 16, pauses the rest, and once scoring resumes every group is written exactly once."""
    async def main():
        registry, scorer = CollectorRegistry(), GatedScorer()
        server, port = await _serve(control, scorer, registry, max_held_completions=16)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                clients = [Client(ch) for _ in range(12)]
                for s, client in enumerate(clients):
                    for g in range(3):
                        client.send(_group(f"s{s}g{g}", ["B"] * K))
                # 16 slots hold 4 groups, so at most one stream (3 groups) can be read to its end: 11 or 12 wait
                await _until(lambda: _value(registry, "videorl_reward_streams_paused_count", limit="service") >= 11,
                             "11 streams waiting for room")
                assert _value(registry, "videorl_reward_held_completions_count") == 16
                assert _value(registry, "videorl_reward_streams_open_count") == 12
                scorer.gate.set()
                for client in clients:
                    await client.end()
            assert [[a.status for a in c.acks] for c in clients] == [[pb.GroupAck.SCORED] * 3] * 12
            assert [[a.prompt_id for a in c.acks] for c in clients] == [
                [f"s{s}g{g}" for g in range(3)] for s in range(12)]
            assert control.stream_len(GROUPS) == 36
            assert _value(registry, "videorl_reward_held_completions_peak_count") == 16
            assert _value(registry, "videorl_reward_held_completions_limit_count") == 16
            assert _value(registry, "videorl_reward_backpressure_pauses_total", limit="service") >= 11
            assert _value(registry, "videorl_reward_backpressure_seconds_total", limit="service") > 0
            for gauge in ("held_completions", "streams_open", "open_groups"):
                assert _value(registry, f"videorl_reward_{gauge}_count") == 0, gauge
        finally:
            await server.stop(1)

    asyncio.run(main())


def test_a_stream_that_leaves_groups_unfinished_is_bounded_and_told_why(control):
    """Groups opened and never finished: beyond max_open_groups_per_stream the oldest is rejected with the reason,
    so the stream holds at most 3; its finished groups are still scored, and nothing is held once it ends."""
    async def main():
        registry = CollectorRegistry()
        server, port = await _serve(control, Scorer(RewardConfig().components), registry, max_open_groups_per_stream=3)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                client = Client(ch)
                for i in range(6):
                    client.send(_group(f"u{i}", ["B"] * K)[:2])   # half of each group
                client.send(_group("whole", ["B"] * K))
                await _until(lambda: len(client.acks) == 5, "4 rejections and 1 group scored")
                assert _value(registry, "videorl_reward_open_groups_count") == 2      # u4, u5 ("whole" evicted u3)
                assert _value(registry, "videorl_reward_held_completions_count") == 2 * K
                await client.end()
            assert [(a.prompt_id, a.status) for a in client.acks] == [
                ("u0", pb.GroupAck.REJECTED), ("u1", pb.GroupAck.REJECTED), ("u2", pb.GroupAck.REJECTED),
                ("u3", pb.GroupAck.REJECTED), ("whole", pb.GroupAck.SCORED)]
            assert "reward.max_open_groups_per_stream" in client.acks[0].reason
            assert control.stream_len(GROUPS) == 1
            for gauge in ("held_completions", "open_groups"):
                assert _value(registry, f"videorl_reward_{gauge}_count") == 0, gauge
        finally:
            await server.stop(1)

    asyncio.run(main())


def test_a_stream_that_must_wait_for_room_first_drops_its_unfinished_groups(control):
    """Cap 8. The stream holds a whole group of 4 (scoring stalled) and half of a second, then opens a group of 8:
    it must wait, so the half group is rejected (its missing completions lie behind the waiting read: holding it
    while waiting could deadlock); once scoring resumes the group of 8 gets its room and is scored."""
    async def main():
        registry, scorer = CollectorRegistry(), GatedScorer()
        server, port = await _serve(control, scorer, registry, max_held_completions=8)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                client = Client(ch)
                client.send(_group("w1", ["B"] * K) + _group("half", ["B"] * K)[:2] + _group("w2", ["B"] * 8))
                await _until(lambda: _value(registry, "videorl_reward_streams_paused_count", limit="service") == 1,
                             "the stream waiting for room")
                assert _value(registry, "videorl_reward_held_completions_count") == K   # w1 only: half dropped
                scorer.gate.set()
                await client.end()
            assert [(a.prompt_id, a.status) for a in client.acks] == [
                ("w1", pb.GroupAck.SCORED), ("half", pb.GroupAck.REJECTED), ("w2", pb.GroupAck.SCORED)]
            assert "reward.max_held_completions=8" in client.acks[1].reason
            assert _value(registry, "videorl_reward_held_completions_peak_count") <= 8
        finally:
            await server.stop(1)

    asyncio.run(main())


def test_a_stream_that_goes_away_while_waiting_gives_back_everything(control):
    """A client cancelled while its stream waits for room (and another holds it): no slot, stream or open group is
    left counted, and the stream behind it in line is served."""
    async def main():
        registry, scorer = CollectorRegistry(), GatedScorer()
        server, port = await _serve(control, scorer, registry, max_held_completions=K)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                holder, leaver, patient = Client(ch), Client(ch), Client(ch)
                holder.send(_group("h", ["B"] * K))
                await _until(lambda: _value(registry, "videorl_reward_held_completions_count") == K, "h held")
                leaver.send(_group("l", ["B"] * K))
                await _until(lambda: _value(registry, "videorl_reward_streams_paused_count", limit="service") == 1,
                             "the leaver waiting")
                patient.send(_group("p", ["B"] * K))
                await _until(lambda: _value(registry, "videorl_reward_streams_paused_count", limit="service") == 2,
                             "the patient one waiting")
                leaver.call.cancel()
                await _until(lambda: _value(registry, "videorl_reward_streams_open_count") == 2, "the leaver gone")
                scorer.gate.set()
                await holder.end()
                await patient.end()
            assert [a.prompt_id for a in holder.acks + patient.acks] == ["h", "p"]
            await _until(lambda: _value(registry, "videorl_reward_streams_open_count") == 0, "every stream closed")
            for gauge in ("held_completions", "open_groups"):
                assert _value(registry, f"videorl_reward_{gauge}_count") == 0, gauge
            assert _value(registry, "videorl_reward_streams_paused_count", limit="service") == 0
        finally:
            await server.stop(1)

    asyncio.run(main())


def test_a_group_whose_size_changes_is_rejected_and_its_room_given_back(control):
    changed = _group("z", ["B"] * K)
    changed[2].group_size = 3
    acks = asyncio.run(_exchange(control, changed + _group("ok", ["B"] * K)))
    assert [(a.prompt_id, a.status) for a in acks][:2] == [("z", pb.GroupAck.REJECTED), ("ok", pb.GroupAck.SCORED)]
    assert "group_size 3 differs from 4" in acks[0].reason


def test_the_bounds_are_validated_naming_the_field():
    for field, bad in (("max_held_completions", 0), ("max_open_groups_per_stream", 0)):
        with pytest.raises(ConfigError, match=f"reward.{field}"):
            load_config(None, [f"reward.{field}={bad}"])
    assert RewardConfig().max_held_completions >= 1024   # a whole group of the largest size fits the default
