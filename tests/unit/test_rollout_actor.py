"""The rollout actor's protocol, with real Redis and a real reward gRPC server; only the engine is a double
(vLLM itself is exercised in tests/integration)."""

import asyncio

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
from services.rollout import actor as actor_mod
from services.rollout.engine import Sample


class FakeEngine:
    """Answers "<answer>B</answer>" K times; records swaps and refuses to swap while generating."""

    def __init__(self):
        self.tokenizer = self
        self.generating = 0
        self.loaded = []
        self.aborted = set()

    def apply_chat_template(self, conversation, **kw):
        return conversation[0]["content"][1]["text"]

    async def generate(self, request_id, prompt, frames, n, max_tokens, temperature, seed=None):
        assert frames.dtype == np.uint8 and frames.ndim == 4
        self.generating += 1
        try:
            for _ in range(5):
                await asyncio.sleep(0.01)
                if request_id in self.aborted:
                    return None
        finally:
            self.generating -= 1
        return [Sample([1, 2, 3], [5, 6], [-0.5, -0.25], "<answer>B</answer>", "stop") for _ in range(n)]

    async def abort(self, request_ids):
        self.aborted.update(request_ids)

    async def load_weights(self, path):
        assert self.generating == 0, "weights must never change while a request is in flight"
        self.loaded.append(path)
        return 0.001

    def shutdown(self):
        pass


def _video(tmp_path, name="ok.mp4"):
    frames = np.zeros((16, 64, 64, 3), np.uint8)
    frames[:, 20:30, 20:30] = 255
    path = tmp_path / name
    encode_mp4(frames, path)
    return path


def test_actor_streams_groups_quarantines_bad_videos_and_swaps(control, redis_server, tmp_path, monkeypatch):
    fake = FakeEngine()
    cfg = RunConfig(run_id=control.run_id, group_size=3, rollout={"prompts_per_batch": 2})
    good = _video(tmp_path)
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x01not a video" * 100)
    rows = [Row(f"r{i}", str(good), "mcq", "Which way?", "B", ("up", "down", "left", "right")) for i in range(4)]
    rows.append(Row("bad", str(tmp_path / "corrupt.mp4"), "mcq", "Which way?", "B", ("up", "down")))
    for i, row in enumerate(rows):
        control.add_prompt(row.to_prompt(f"p{i}").SerializeToString())
    v1 = write_version(tmp_path / "w", 1, 1, lambda d: (d / "model.safetensors").write_bytes(b"w1"))

    async def scenario():
        server, port = await start_server(control, Scorer(cfg.reward.components), CollectorRegistry())
        a = actor_mod.RolloutActor(cfg, redis_server.url, f"127.0.0.1:{port}", "a0", "/unused",
                                   engine_factory=lambda *_: fake)
        task = asyncio.create_task(a.run())
        await wait_for(lambda: control.stream_len(GROUPS) >= 2, 4)     # the first 2 groups were written
        control.publish_version(v1)                    # a new version mid-run
        await wait_for(lambda: control.prompts_queued() == 0 and a.loaded_version == 1, 6)
        return await stop_actor(a, task, server)

    stats = asyncio.run(scenario())
    groups = [pb.ScoredGroup.FromString(f[b"group"]) for _, f in control.r.xrange(control.key(GROUPS))]
    assert sorted(g.prompt_id for g in groups) == ["p0", "p1", "p2", "p3"]      # the corrupt one is not there
    assert all(len(g.completions) == 3 and list(g.rewards) == pytest.approx([1.1] * 3) for g in groups)
    assert {g.policy_version for g in groups} <= {0, 1}
    assert fake.loaded == [v1.uri] and stats.loaded_version == 1
    c = control.counters()
    assert c["prompts_quarantined:corrupt"] == 1                              # counted with its reason
    assert control.prompts_queued() == 0                                      # every prompt acked, none lost
    (actor,) = control.actors()
    assert actor.loaded_version == 1 and actor.state == "stopped"
    assert set(control.swaps("a0")) == {1}


def test_actor_keeps_its_version_when_new_files_fail_their_hash(control, redis_server, tmp_path, monkeypatch):
    fake = FakeEngine()
    cfg = RunConfig(run_id=control.run_id)
    v1 = write_version(tmp_path / "w", 1, 1, lambda d: (d / "model.safetensors").write_bytes(b"w1"))
    (tmp_path / "w" / "v000001" / "model.safetensors").write_bytes(b"tampered")
    control.publish_version(v1)
    a = actor_mod.RolloutActor(cfg, redis_server.url, "127.0.0.1:1", "a0", "/unused",
                                   engine_factory=lambda *_: fake)
    a.engine = fake
    a.loaded_version = 0
    asyncio.run(a._maybe_swap())
    asyncio.run(a._maybe_swap())                      # refused once, not retried on every batch
    assert fake.loaded == [] and a.loaded_version == 0
    assert control.counters()["versions_refused"] == 1


class GatedEngine(FakeEngine):
    """Holds every prompt that asks "slow?" until `release` is set; records the most requests in flight."""

    def __init__(self):
        super().__init__()
        self.release = asyncio.Event()
        self.most_in_flight = 0

    async def generate(self, request_id, prompt, frames, n, max_tokens, temperature, seed=None):
        self.most_in_flight = max(self.most_in_flight, self.generating + 1)
        if "slow?" in prompt:
            self.generating += 1
            try:
                await self.release.wait()
            finally:
                self.generating -= 1
        return await super().generate(request_id, prompt, frames, n, max_tokens, temperature, seed)


def test_a_slow_prompt_does_not_hold_back_the_other_slots(control, redis_server, tmp_path, monkeypatch):
    """prompts_per_batch are slots, not batches: while one prompt is stuck, the free slot keeps taking prompts."""
    fake = GatedEngine()
    monkeypatch.setattr(actor_mod, "ORPHAN_CHECK_S", 0.0)   # checked before every take: none may be found here
    cfg = RunConfig(run_id=control.run_id, group_size=2, rollout={"prompts_per_batch": 2})
    good = _video(tmp_path)
    opts = ("up", "down")
    control.add_prompt(Row("slow", str(good), "mcq", "slow?", "B", opts).to_prompt("slow").SerializeToString())
    for i in range(5):
        control.add_prompt(Row(f"f{i}", str(good), "mcq", "fast?", "B", opts).to_prompt(f"f{i}").SerializeToString())

    async def scenario():
        server, port = await start_server(control, Scorer(cfg.reward.components), CollectorRegistry())
        a = actor_mod.RolloutActor(cfg, redis_server.url, f"127.0.0.1:{port}", "a0", "/unused",
                                   engine_factory=lambda *_: fake)
        task = asyncio.create_task(a.run())
        fast_done = await wait_for(lambda: control.stream_len(GROUPS) >= 5, 10)
        fake.release.set()
        all_done = await wait_for(lambda: control.stream_len(GROUPS) == 6 and control.prompts_queued() == 0, 10)
        await stop_actor(a, task, server)
        return fast_done, all_done

    fast_done, all_done = asyncio.run(scenario())
    assert fast_done, "the 5 fast prompts were scored while the slow one was still generating"
    assert all_done, "the slow prompt was scored once released, and every prompt was acked"
    groups = [pb.ScoredGroup.FromString(f[b"group"]) for _, f in control.r.xrange(control.key(GROUPS))]
    assert [g.prompt_id for g in groups][-1] == "slow"
    assert fake.most_in_flight == 2, "never more prompts in flight than prompts_per_batch"
    counters = control.counters()
    assert "prompts_orphaned" not in counters and "groups_duplicate" not in counters


def test_a_prompt_delivered_but_never_seen_is_generated_without_waiting_for_reclaim(control, redis_server, tmp_path,
                                                                                   monkeypatch):
    """A Redis crash can lose the reply of the XREADGROUP that delivered a prompt: it is pending under the actor's
    name, and the actor never saw it. The actor finds it among its pending entries instead of leaving it to
    another actor's reclaim after rollout.faults.reclaim_idle_s (300 s here)."""
    fake = FakeEngine()
    monkeypatch.setattr(actor_mod, "ORPHAN_CHECK_S", 0.2)
    cfg = RunConfig(run_id=control.run_id, group_size=2,
                    rollout={"prompts_per_batch": 2, "faults": {"reclaim_idle_s": 300}})
    good = _video(tmp_path)
    for i in range(3):
        row = Row(f"r{i}", str(good), "mcq", "?", "B", ("up", "down"))
        control.add_prompt(row.to_prompt(f"p{i}").SerializeToString())
    (lost,) = control.take_prompts("a0", 1, 100, 300_000)   # delivered to a0; the reply "was lost"

    async def scenario():
        server, port = await start_server(control, Scorer(cfg.reward.components), CollectorRegistry())
        a = actor_mod.RolloutActor(cfg, redis_server.url, f"127.0.0.1:{port}", "a0", "/unused",
                                   engine_factory=lambda *_: fake)
        task = asyncio.create_task(a.run())
        done = await wait_for(lambda: control.stream_len(GROUPS) == 3 and control.prompts_queued() == 0, 10)
        await stop_actor(a, task, server)
        return done

    assert asyncio.run(scenario()), "the orphaned prompt was not generated"
    groups = [pb.ScoredGroup.FromString(f[b"group"]) for _, f in control.r.xrange(control.key(GROUPS))]
    assert sorted(g.prompt_id for g in groups) == ["p0", "p1", "p2"]
    assert pb.Prompt.FromString(lost[1]).prompt_id == "p0"
    counters = control.counters()
    assert counters["prompts_orphaned"] == 1 and "groups_duplicate" not in counters
