"""The self-hosted judge (services/judge/serve.py) on a real local Ray Serve with the embedded tiny judge (the tiny
model taught the reply format, services/judge/tiny.py) in a real vLLM engine, driven by the official `openai`
client: the OpenAI routes answer with vLLM's own schema, the judge client's own requests get replies its parser
takes, errors are OpenAI errors, and nothing else is reachable. Autoscaling under load (a second replica, then back
to one) is bench/judge_autoscale_bench.py: a second vLLM replica takes 1-2 minutes to start on 2 busy cores."""

from __future__ import annotations

import random
import urllib.error
import urllib.request

import pytest

import rlctl.cluster  # noqa: F401 - sets Ray's local environment (loopback, no auth) before ray is imported
from rlctl.cluster import ClusterTarget
from services.common.reward_config import JudgeServeConfig
from services.reward.judge import RUBRICS, build_messages, parse_reply

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NAME = "tiny-judge"


@pytest.fixture(scope="module")
def judge(tiny_assets):
    import ray
    from rich.console import Console

    from rlctl.assets import embedded_judge
    from services.judge import serve as judge_serve

    model = embedded_judge(0, Console(quiet=True))   # built from the tiny model (tiny_assets), ~40 s once
    ray.init(**ClusterTarget(None, None).ray_init_kwargs())
    cfg = JudgeServeConfig(model=model, min_replicas=1, max_replicas=2, target_ongoing_requests=1,
                           max_ongoing_requests=8, upscale_delay_s=1, downscale_delay_s=4, num_cpus=0.5,
                           dtype="float32", kv_cache_mib=32)   # the model's own max_model_len (2048)
    try:
        yield judge_serve.start(cfg, NAME, "cpu"), judge_serve
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def _client(base_url: str):
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)


def test_the_official_openai_client_gets_chat_completions_and_openai_errors(judge):
    import openai

    served, judge_serve = judge
    client = _client(served.base_url)
    assert [m.id for m in client.models.list()] == [NAME]
    r = client.chat.completions.create(model=NAME, max_tokens=12, temperature=0, messages=[
        {"role": "system", "content": "Score the candidate route from 0 to 5."},
        {"role": "user", "content": "Candidate: turn left at the door."}])
    assert r.model == NAME and r.object == "chat.completion" and len(r.choices) == 1
    assert isinstance(r.choices[0].message.content, str) and r.choices[0].finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 12 and r.usage.prompt_tokens > 0
    # The reward service's own requests (both rubrics, its prompt with the candidate block) get replies it parses.
    rng = random.Random(7)
    for rubric in RUBRICS.values():
        for _ in range(4):
            messages = build_messages(rubric, "Describe the route to the exit.", "Go left at the door.",
                                      rng.choice(["Go right at the stairs.", "B", ""]), f"{rng.getrandbits(64):x}")
            reply = client.chat.completions.create(model=NAME, messages=messages, temperature=0, max_tokens=32)
            score = parse_reply(rubric, reply.choices[0].message.content)
            assert 0 <= score <= 1, (rubric.name, reply.choices[0].message.content)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=9000)
    root = served.base_url.removesuffix("/v1")
    assert urllib.request.urlopen(root + "/health", timeout=10).status == 200
    for path in ("/scale_elastic_ep", "/inference/v1/generate", "/v1/completions", "/tokenize"):   # not a judge's
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(root + path, data=b"{}", method="POST"), timeout=10)
        assert e.value.code == 404, path
