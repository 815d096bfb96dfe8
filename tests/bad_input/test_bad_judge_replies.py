"""Judge replies that are malformed, slow, failing or hostile (bad_corpus.BAD_REPLIES): each answer whose
reply is bad is unscorable (NaN, never 0), counted by reason, logged with the prompt it belongs to, and the
answers of the same group whose replies are good still score. Over real HTTP on loopback, a reply larger than
judge.MAX_REPLY_BYTES is refused after that many bytes instead of being read whole."""

from __future__ import annotations

import asyncio
import logging
import math

import pytest
from aiohttp import web
from bad_corpus import BAD_COMPLETIONS, BAD_REPLIES, GOOD_REPLY, JUDGE_TIMEOUT_S, MB, ScriptedJudge, wire_body
from prometheus_client import CollectorRegistry

from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.common.reward_config import JudgeConfig, RewardConfig
from services.reward import judge
from services.reward.judge import ROUTE, JudgeClient
from services.reward.scoring import Scorer

CFG = JudgeConfig(model="judge-model", timeout_s=JUDGE_TIMEOUT_S, retries=1, backoff_s=0.0, max_concurrency=8)
RETRIED = {"error", "timeout"}  # 429, 5xx and timeouts are asked again; a 400 is not


def _unscorable(registry: CollectorRegistry) -> dict[str, float]:
    return {r: registry.get_sample_value("videorl_reward_judge_unscorable_total", {"reason": r})
            for r in ("timeout", "error", "unparseable")}


@pytest.mark.parametrize("name", sorted(BAD_REPLIES))
def test_a_bad_reply_is_unscorable_and_counted_by_reason(name):
    reply, post, registry = BAD_REPLIES[name], ScriptedJudge(), CollectorRegistry()
    client = JudgeClient(CFG, registry, post=post)
    (value,) = asyncio.run(client.score(ROUTE, "Route back?", "left at the door", [f"<answer>case:{name}</answer>"]))
    assert math.isnan(value)
    assert _unscorable(registry) == {r: float(r == reply.reason) for r in ("timeout", "error", "unparseable")}
    retried = reply.reason in RETRIED and reply.status != 400
    assert post.calls == {name: CFG.retries + 1 if retried else 1}


def test_a_group_with_every_bad_reply_scores_its_good_answers(caplog, summary):
    """The route task through the scorer: format gate, then the judge. One group holds an answer per bad reply,
    two good answers (one hostile to the judge, whose double is not fooled by text), and an empty answer."""
    cfg = RewardConfig.model_validate({"judge": CFG.model_dump(), "tasks": {"route": [
        {"name": "answer_format", "weight": 0.0}, {"name": "judge", "rubric": "route"}]}})
    post, registry = ScriptedJudge(), CollectorRegistry()
    scorer = Scorer(cfg, registry, judge=JudgeClient(cfg.judge, registry, post=post))
    prompt = pb.Prompt(prompt_id="p-route", sample_id="row-route", task="route", question="Route back?",
                       answer="left at the door")
    good = ["<answer>left at the door</answer>", BAD_COMPLETIONS["hostile_instructions"]]
    texts = good + [f"<answer>case:{name}</answer>" for name in BAD_REPLIES] + ["<answer></answer>"]
    with caplog.at_level(logging.WARNING, logger="videorl.reward"):
        score = asyncio.run(scorer.score(prompt, texts))
    expected_good = sum(4 for _ in ROUTE.fields) / (ROUTE.top * len(ROUTE.fields))
    assert score.errors == []
    assert score.totals[:2] == [expected_good, expected_good]
    assert all(math.isnan(t) for t in score.totals[2:-1])
    assert score.totals[-1] == 0.0  # an empty answer is a wrong answer, not an unscorable one, and costs no call
    reasons = [r.reason for r in BAD_REPLIES.values()]
    assert _unscorable(registry) == {r: float(reasons.count(r)) for r in ("timeout", "error", "unparseable")}
    assert registry.get_sample_value("videorl_reward_component_unscorable_total", {"component": "judge"}) == len(
        BAD_REPLIES)
    logged = [r.getMessage() for r in caplog.records]
    bad_indices = list(range(2, 2 + len(BAD_REPLIES)))
    assert f"reward judge: completions {bad_indices} of prompt p-route (row row-route) are unscorable" in logged
    assert sum("judge cannot score" in m or "judge reply is not" in m for m in logged) == len(BAD_REPLIES)
    summary(f"judge replies: {len(BAD_REPLIES)} bad replies in one group -> {len(BAD_REPLIES)} NaN (never 0), "
            f"counted by reason {dict(sorted(_count(reasons).items()))}, logged with prompt id + indices; "
            f"{len(good)} good answers scored {expected_good:.2f} (one hostile), 1 empty answer 0.0 without a call")


def _count(items: list[str]) -> dict[str, int]:
    return {k: items.count(k) for k in set(items)}


@pytest.mark.integration
def test_over_http_a_huge_reply_is_cut_off_and_slow_or_failing_endpoints_are_unscorable(summary):
    """An aiohttp server on loopback: /huge streams 64 MiB (one reused 1 MiB chunk), /slow never answers in time,
    /fail answers 500, /good answers properly. The huge reply is refused after MAX_REPLY_BYTES, so the server
    gets to send only what the socket buffers hold, not the 64 MiB."""
    sent = {"huge": 0}
    done = asyncio.Event()

    async def huge(request):
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        chunk = b" " * MB
        try:
            for _ in range(64):
                await resp.write(chunk)
                sent["huge"] += len(chunk)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            done.set()
        return resp

    async def slow(request):
        await asyncio.sleep(JUDGE_TIMEOUT_S * 5)
        return web.Response(body=wire_body(GOOD_REPLY))

    async def fail(request):
        return web.Response(status=500, text="internal error")

    async def good(request):
        return web.Response(body=wire_body(GOOD_REPLY), content_type="application/json")

    async def scenario():
        app = web.Application()
        for name, handler in (("huge", huge), ("slow", slow), ("fail", fail), ("good", good)):
            app.router.add_post(f"/{name}/v1/chat/completions", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            results = {}
            for name in ("huge", "slow", "fail", "good"):
                registry = CollectorRegistry()
                client = JudgeClient(CFG.model_copy(update={"base_url": f"http://127.0.0.1:{port}/{name}/v1"}),
                                     registry)
                try:
                    (value,) = await client.score(ROUTE, "q", "ref", ["left at the door"])
                finally:
                    await client.aclose()
                results[name] = (value, _unscorable(registry))
            await asyncio.wait_for(done.wait(), 10)
            return results
        finally:
            await runner.cleanup()

    results = asyncio.run(scenario())
    assert math.isnan(results["huge"][0]) and results["huge"][1]["error"] == 1
    assert sent["huge"] < 32 * MB, f"the client read {sent['huge'] / MB:.0f} MiB of a reply it should have refused"
    assert math.isnan(results["slow"][0]) and results["slow"][1]["timeout"] == 1
    assert math.isnan(results["fail"][0]) and results["fail"][1]["error"] == 1
    assert results["good"] == (0.8, {"timeout": 0.0, "error": 0.0, "unparseable": 0.0})
    summary(f"judge over HTTP: 64 MiB reply refused after {judge.MAX_REPLY_BYTES // MB} MiB (server got "
            f"{sent['huge'] // MB} MiB out), slow -> timeout, 500 -> error, all NaN; the good endpoint scored 0.8")
