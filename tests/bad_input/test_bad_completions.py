"""Absurd completions (bad_corpus.BAD_COMPLETIONS): through every registered reward, through the scorer next
to a good completion, through the reward gRPC server into Redis, and through `rlctl rewards score` in a file
that mixes them with malformed lines. Nothing raises, every value is in [0, 1] or NaN, and the good
completion next to them still earns its reward."""

from __future__ import annotations

import asyncio
import json
import logging
import math

import grpc
import pytest
from bad_corpus import BAD_COMPLETIONS, BAD_TRUTH, GOOD_COMPLETION, NOT_UTF8, reward_samples
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from rlctl.rewards_cmd import rewards as rewards_cli
from services.common.control import GROUPS
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.common.pb.videorl.v1 import rollout_pb2_grpc as pb_grpc
from services.common.reward_config import RewardConfig
from services.reward import catalogue as rewards
from services.reward.scoring import Scorer
from services.reward.server import start_server

SAMPLES = reward_samples()
# mcq + format, as a route-free task would be configured; the format term is what tag soup must fail
CFG = RewardConfig.model_validate({"components": [{"name": "mcq"}, {"name": "format", "weight": 0.5}]})
PROMPT = pb.Prompt(prompt_id="p-bad", sample_id="row-bad", task="mcq", question="Which way?", answer="B",
                   options=["turn left", "turn right", "go straight", "stop"], video_uri="/v.mp4")


def test_every_reward_scores_every_bad_completion_in_range(summary):
    assert set(SAMPLES) == set(rewards.REGISTRY), "a new reward needs its sample in bad_corpus.reward_samples"
    nan = 0
    for cname, text in BAD_COMPLETIONS.items():
        for rname, fn in rewards.REGISTRY.items():
            value = fn(text, SAMPLES[rname])
            assert math.isnan(value) or 0.0 <= value <= 1.0, (cname, rname, value)
            nan += math.isnan(value)
    pairs = len(BAD_COMPLETIONS) * len(rewards.REGISTRY)
    summary(f"completions x rewards: {len(BAD_COMPLETIONS)} bad completions x {len(rewards.REGISTRY)} rewards = "
            f"{pairs} scores, 0 raised, all in [0, 1] ({nan} NaN = unscorable)")


def test_the_scorer_scores_a_group_of_bad_completions_and_the_good_one_next_to_them():
    texts = [GOOD_COMPLETION, *BAD_COMPLETIONS.values()]
    score = asyncio.run(Scorer(CFG).score(PROMPT, texts))
    assert score.errors == [] and len(score.totals) == len(texts)
    assert score.totals[0] == 1.5
    well_formed = {"one_mb_of_thinking", "nested_graph_json_50k"}  # absurd inside, but one think then one answer
    for (name, _), total, fmt in zip(BAD_COMPLETIONS.items(), score.totals[1:], score.components["format"][1:],
                                     strict=True):
        assert 0.0 <= total <= 1.5, name
        assert fmt == (1.0 if name in well_formed else 0.0), name
    # hostile text about the rubric is just a wrong answer to mcq
    assert score.components["mcq"][1 + list(BAD_COMPLETIONS).index("hostile_instructions")] == 0.0


@pytest.mark.parametrize("name", sorted(BAD_TRUTH))
def test_a_prompt_whose_ground_truth_breaks_the_rules_is_unscorable_naming_it(name, caplog):
    prompt = pb.Prompt()
    prompt.CopyFrom(PROMPT)
    prompt.truth.CopyFrom(BAD_TRUTH[name])
    with caplog.at_level(logging.WARNING, logger="videorl.reward"):
        score = asyncio.run(Scorer(CFG).score(prompt, [GOOD_COMPLETION, "B"]))
    assert all(math.isnan(t) for t in score.totals) and len(score.totals) == 2
    assert len(score.errors) == 1 and score.errors[0].startswith("truth: field ")
    assert any(f"prompt {prompt.prompt_id} has unusable ground truth" in r.getMessage() for r in caplog.records)


@pytest.mark.integration
def test_the_reward_server_writes_a_group_of_bad_completions_to_redis(control, summary):
    """A real grpc.aio reward server and a real Redis: one group of K = 1 good + the bad completions that can
    be sent at all (protobuf strings are UTF-8), then a normal group on the same stream."""
    bad = {k: v for k, v in BAD_COMPLETIONS.items() if k not in NOT_UTF8}
    texts = [GOOD_COMPLETION, *bad.values()]

    def group(prompt_id, texts):
        prompt = pb.Prompt()
        prompt.CopyFrom(PROMPT)
        prompt.prompt_id = prompt_id
        return [pb.Completion(run_id="r", prompt_id=prompt_id, group_id=f"{prompt_id}/v1", sample_index=i,
                              group_size=len(texts), policy_version=1, completion_token_ids=[1], logprobs=[-0.1],
                              text=t, actor_id="a0", prompt=prompt) for i, t in enumerate(texts)]

    broken = []
    for name, truth in BAD_TRUTH.items():
        broken += group(f"p-truth-{name}", [GOOD_COMPLETION, GOOD_COMPLETION])
        for c in broken[-2:]:
            c.prompt.truth.CopyFrom(truth)

    async def exchange():
        server, port = await start_server(control, Scorer(CFG), CollectorRegistry())
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                                 options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
                async def gen():
                    for c in group("p-bad", texts) + broken + group("p-next", [GOOD_COMPLETION, "<answer>A</answer>"]):
                        yield c
                return [a async for a in pb_grpc.RewardServiceStub(ch).StreamCompletions(gen())]
        finally:
            await server.stop(1)

    acks = asyncio.run(exchange())
    n = len(BAD_TRUTH)
    assert [a.status for a in acks] == [pb.GroupAck.SCORED] * (n + 2)
    assert acks[0].rewards[0] == 1.5 and all(0.0 <= r <= 1.5 for r in acks[0].rewards)
    assert all(math.isnan(r) for a in acks[1:-1] for r in a.rewards)  # unscorable, never 0
    assert list(acks[-1].rewards) == [1.5, 0.0]
    stored = [pb.ScoredGroup.FromString(p) for _, p in control.read_groups(GROUPS, "l", 20, 100)]
    assert [g.prompt_id for g in stored] == ["p-bad", *(f"p-truth-{k}" for k in BAD_TRUTH), "p-next"]
    assert [c.text for c in stored[0].completions] == texts  # the megabyte and the NULs arrive intact
    summary(f"completions through the reward server + Redis: 1 group of {len(texts)} (1 good, {len(bad)} bad; "
            f"{len(NOT_UTF8)} non-UTF-8 ones cannot be sent over protobuf) scored and written once, the good one "
            f"rewarded {acks[0].rewards[0]}; {n} groups whose ground truth breaks the rules written all-NaN; "
            "the next group on the stream scored normally")


def test_rlctl_rewards_score_reports_each_bad_line_and_scores_the_rest(tmp_path, summary):
    """A file of good lines, every bad completion, and lines that are not valid input at all."""
    good = [{"reward": "mcq", "completion": GOOD_COMPLETION, "target": {"answer": "B", "num_options": 4}},
            {"reward": "numeric_mra", "completion": "<answer>8</answer>", "target": {"answer": 10}}]
    bad_completions = [{"reward": "mcq", "completion": text, "target": {"answer": "B", "num_options": 4}}
                       for text in BAD_COMPLETIONS.values()]
    malformed: list[tuple[bytes, str]] = [
        (b'{"reward": "mcq", "completion": ', "not JSON"),
        (b"[" * 100_000, "not JSON"),
        (b"[1, 2]", "a line must be a JSON object"),
        (b'{"reward": "mcqq", "completion": "B", "target": {}}', "unknown reward 'mcqq'"),
        (b'{"reward": "mcq", "completion": 5}', "'completion' must be a string"),
        (b'{"reward": "mcq", "completion": "B", "target": []}', "'target' must be an object"),
        (b'{"reward": "mcq", "completion": "B", "target": {"answer": "Z", "num_options": 4}}', "ValueError"),
        (b'{"reward": "mcq", "completion": "B", "target": {"answer": "B", "num_options": 99}}', "ValueError"),
        (b'{"reward": "temporal_iou", "completion": "<answer>1-2</answer>", "target": {}}',
         "ValueError: temporal sample needs extra['segment']"),
        (b"\xff\xfe\x00binary\x00", "not JSON"),
        (b"   ", "empty line"),
    ]
    lines = [json.dumps(r).encode() for r in good] + [json.dumps(r).encode() for r in bad_completions]
    lines += [m for m, _ in malformed]
    path = tmp_path / "scores.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = CliRunner().invoke(rewards_cli, ["score", str(path)])
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(out) == len(lines)
    assert [o["reward"] for o in out[:2]] == [1.0, 0.6]
    for o in out[2 : 2 + len(bad_completions)]:
        assert o["error"] is None and o["reward"] in (0.0, 1.0)
    for o, (_, says) in zip(out[2 + len(bad_completions) :], malformed, strict=True):
        assert o["reward"] is None and says in o["error"], (o, says)
    assert f"scored {len(lines)} lines, {len(malformed)} with an error" in result.stderr
    summary(f"rlctl rewards score: {len(lines)} lines in, {len(out)} out in order; {len(good)} good + "
            f"{len(bad_completions)} bad completions scored, {len(malformed)} malformed lines each answered with "
            "its own error")
