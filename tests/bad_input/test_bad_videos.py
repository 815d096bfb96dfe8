"""Bad videos (bad_corpus.BAD_VIDEOS) through the frame cache the rollout actor samples with: each one is a
MediaError whose message names the file and whose reason is the expected one, and in a batch of prompts only
the bad ones are quarantined while the good ones are decoded. The actor's own quarantine (ack, counter,
log) runs on one corrupt video in tests/unit/test_rollout_actor.py; here every kind of bad video meets it."""

from __future__ import annotations

import asyncio
import itertools
import logging
import resource
from collections import Counter

import numpy as np
import pytest
from bad_corpus import BAD_TRUTH, BAD_VIDEOS, GOOD_VIDEOS

from services.common.config import MediaConfig, RunConfig
from services.common.control import PROMPTS, ROLLOUT_GROUP
from services.common.dataset import Row
from services.common.media import FrameCache, MediaError
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.rollout import actor as actor_mod
from services.rollout.engine import Sample


def _make(tmp_path, name, video):
    folder = tmp_path / name
    folder.mkdir()
    return str(video.make(folder))


def _prompt(i: int, path: str) -> pb.Prompt:
    return Row(f"row-{i}", path, "mcq", "Which way?", "B", ("left", "right")).to_prompt(f"p{i}")


@pytest.mark.parametrize("name", sorted(BAD_VIDEOS))
def test_a_bad_video_is_a_media_error_naming_the_file(tmp_path, name):
    path = _make(tmp_path, name, BAD_VIDEOS[name])
    with pytest.raises(MediaError) as info:
        FrameCache(16 << 20).get_for_prompt(_prompt(0, path), MediaConfig())
    assert info.value.reason == BAD_VIDEOS[name].reason
    assert info.value.path == path and repr(path) in str(info.value)


@pytest.mark.parametrize("name", sorted(BAD_TRUTH))
def test_a_prompt_whose_ground_truth_breaks_the_rules_still_gets_its_frames_forwards(tmp_path, name):
    prompt = _prompt(0, _make(tmp_path, "good", GOOD_VIDEOS["good_mp4"]))
    prompt.truth.CopyFrom(BAD_TRUTH[name])
    cache = FrameCache(16 << 20)
    frames = cache.get_for_prompt(prompt, MediaConfig())
    prompt.ClearField("truth")
    assert np.array_equal(frames, cache.get_for_prompt(prompt, MediaConfig()))


def test_a_batch_quarantines_only_the_bad_videos(tmp_path, summary):
    """Bad and good videos interleaved, as prompts (what the actor reads from Redis): every bad one is refused
    with its reason, every good one gives frames, and the huge ones were refused from their headers."""
    good = itertools.cycle(sorted(GOOD_VIDEOS.items()))
    items = [item for bad in sorted(BAD_VIDEOS.items()) for item in (bad, next(good))]
    prompts = [_prompt(i, _make(tmp_path, f"{i}-{name}", v)) for i, (name, v) in enumerate(items)]
    cache = FrameCache(64 << 20)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    quarantined: Counter[str] = Counter()
    decoded = 0
    for (name, video), prompt in zip(items, prompts, strict=True):
        try:
            frames = cache.get_for_prompt(prompt, MediaConfig())
        except MediaError as e:
            assert e.reason == video.reason and e.path == prompt.video_uri, name
            quarantined[e.reason] += 1
            continue
        assert video.reason == "", f"{name} was decoded"
        assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[0] % 2 == 0
        decoded += 1
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert sum(quarantined.values()) == len(BAD_VIDEOS) and decoded == len(BAD_VIDEOS)
    # one 20000x20000 RGB frame is 1.2 GB: what the huge items declare was never allocated
    assert grown_mib < 200
    huge = sum(v.huge for v in BAD_VIDEOS.values())
    summary(f"videos: {len(BAD_VIDEOS)} bad items ({huge} declaring gigabytes), {sum(quarantined.values())} refused "
            f"with their reason {dict(sorted(quarantined.items()))}, {decoded} good decoded between them, "
            f"peak RSS grew {grown_mib:.0f} MiB")


class _OneAnswerEngine:
    """The engine double (vLLM itself is exercised in tests/integration): K copies of one right answer."""

    tokenizer = property(lambda self: self)

    def apply_chat_template(self, conversation, **kw):
        return conversation[0]["content"][1]["text"]

    async def generate(self, request_id, prompt, frames, n, max_tokens, temperature, seed=None):
        assert frames.dtype == np.uint8 and frames.ndim == 4
        return [Sample([1], [2], [-0.5], "<answer>B</answer>", "stop") for _ in range(n)]


class _SentGroups:
    """The reward link double: records what the actor would stream to the reward service."""

    def __init__(self):
        self.sent: list[tuple[str, int]] = []
        self.held: dict = {}

    async def send(self, group_id, entry_id, completions):
        self.sent.append((entry_id, len(completions)))


@pytest.mark.integration
def test_the_actor_quarantines_every_bad_video_and_sends_the_good_ones(control, redis_server, tmp_path, caplog,
                                                                       summary):
    """RolloutActor._rollout, the actor's per-prompt phase, on prompts taken from a real Redis stream: each bad
    video's prompt is acked, counted by reason in Redis and in the actor's metric, and logged with the prompt id
    and the path; the good prompts are generated and sent as groups of K."""
    cfg = RunConfig(run_id=control.run_id)
    actor = actor_mod.RolloutActor(cfg, redis_server.url, "127.0.0.1:1", "a0", "/unused")
    actor.engine, actor.loaded_version, actor.link = _OneAnswerEngine(), 3, _SentGroups()
    items = sorted(BAD_VIDEOS.items()) + sorted(GOOD_VIDEOS.items())
    for i, (name, video) in enumerate(items):
        control.add_prompt(_prompt(i, _make(tmp_path, f"{i}-{name}", video)).SerializeToString())
    entries = control.take_prompts("a0", len(items), 200, 60_000)
    assert len(entries) == len(items)

    async def rollout_all():
        await asyncio.gather(*(actor._rollout(eid, payload) for eid, payload in entries))

    with caplog.at_level(logging.WARNING, logger="videorl.rollout"):
        asyncio.run(rollout_all())
    by_reason = Counter(v.reason for v in BAD_VIDEOS.values())
    counters = control.counters()
    assert {r: counters.get(f"prompts_quarantined:{r}", 0) for r in by_reason} == by_reason
    metric = {r: actor.registry.get_sample_value("videorl_rollout_prompts_quarantined_total",
                                                 {"actor": "a0", "reason": r}) for r in by_reason}
    assert metric == by_reason
    # the bad prompts are acked (done); the good ones stay pending until the reward service acks their group
    assert control.group_backlog(PROMPTS, ROLLOUT_GROUP) == (0, len(GOOD_VIDEOS))
    good_entries = {eid for (eid, _), (_, v) in zip(entries, items, strict=True) if not v.reason}
    assert sorted(actor.link.sent) == sorted((eid, cfg.group_size) for eid in good_entries)
    logged = [r.getMessage() for r in caplog.records if "quarantined" in r.getMessage()]
    assert len(logged) == len(BAD_VIDEOS)
    for i, (name, video) in enumerate(items[: len(BAD_VIDEOS)]):
        assert any(f"prompt p{i} quarantined" in m and f": {video.reason}" in m for m in logged), name
    summary(f"videos through RolloutActor._rollout (real Redis): {len(BAD_VIDEOS)} bad prompts acked, logged with "
            f"prompt id + path + reason, counted {dict(sorted(by_reason.items()))}; {len(actor.link.sent)} good "
            f"prompts sent as groups of {cfg.group_size}")
