"""The broadcast weight transport end to end on CPU: a real vLLM engine (AsyncLLM, its worker in the EngineCore
process) joins a gloo weight group whose rank 0 is a learner-side WeightSender in another process (weight_sender.py).

After each broadcast version the engine's greedy output equals a fresh engine's loaded from that version's disk copy,
and so do vLLM's weight checksums; a second version travels over the same group; a sender that dies mid-broadcast
fails the receive at once and leaves the old weights serving; a new group (the next epoch) works again."""

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from services.common.config import MediaConfig, RunConfig
from services.common.media import sample_video
from services.common.prompts import chat_text
from services.common.weight_wire import MISMATCH
from services.rollout.engine import VLLMEngine

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SENDER = Path(__file__).with_name("weight_sender.py")
ROOT = Path(__file__).resolve().parents[2]


class Sender:
    """weight_sender.py, one command and one reply line at a time; stopped by pid."""

    def __init__(self, model_dir: Path, out: Path, group: str):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen([sys.executable, str(SENDER), "--model", str(model_dir), "--out", str(out),
                                      "--group", group], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        self.group = json.loads(self._reply("GROUP"))

    def _reply(self, expect: str) -> str:
        line = self.proc.stdout.readline()
        assert line.startswith(expect + " ") or line.strip() == expect, f"sender said {line!r}, not {expect}"
        return line[len(expect):].strip()

    def ask(self, command: str, expect: str) -> str:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._reply(expect)

    async def ask_async(self, command: str, expect: str) -> str:
        return await asyncio.to_thread(self.ask, command, expect)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


async def _greedy(engine, prompt, frames) -> list[int]:
    (sample,) = await engine.generate(uuid.uuid4().hex, prompt, frames, n=1, max_tokens=16, temperature=0.0)
    return sample.token_ids


async def _broadcast_run(tiny_assets, out: Path) -> dict:
    """Everything the broadcast engine sees and does; the fresh disk engines run after it is gone (2 cores)."""
    cfg = RunConfig(rollout={"max_new_tokens": 16}, weights={"transport": "broadcast"})
    row = tiny_assets.eval_rows[0]
    frames = sample_video(row.video, MediaConfig())
    engine = VLLMEngine.create(tiny_assets.model_dir, cfg)
    sender = Sender(tiny_assets.model_dir, out, "test/epoch0")
    r: dict = {}
    try:
        prompt = r["prompt"] = chat_text(engine.tokenizer, row.question, list(row.options))
        r["before"], r["sums0"] = await _greedy(engine, prompt, frames), await engine.weight_checksums()
        r["spin"] = await engine.llm.collective_rpc("videorl_spin_wait_s")   # the plugin, in the spawned worker
        v1, v2, v3 = (json.loads(sender.ask(f"prepare {v}", "LAYOUT")) for v in (1, 2, 3))
        r["sent_sha1"] = v1["sha256"]
        await asyncio.gather(engine.join_weight_group(sender.group), sender.ask_async("connect", "CONNECTED"))

        # version 1: received while the engine could generate, then loaded with generation paused
        # with the sender's sha256 of each tensor (the harness's own hashlib): the worker checks them before loading
        checked = {**v1["update_info"], "sums": v1["sha256"]}
        r["swap1"], sent = await asyncio.gather(engine.receive_weights(checked, 1),
                                                sender.ask_async("send 1", "SENT"))
        r["sent1"] = json.loads(sent)
        r["after1"], r["sums1"] = await _greedy(engine, prompt, frames), await engine.weight_checksums()

        # version 2, same group, through vLLM's plain lifecycle: update_weights receives and loads in one call
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest

        await engine.llm.start_weight_update()
        await asyncio.gather(engine.llm.update_weights(WeightTransferUpdateRequest(update_info=v2["update_info"])),
                             sender.ask_async("send 2", "SENT"))
        await engine.llm.finish_weight_update(weight_version="2")
        await engine.llm.reset_encoder_cache()   # both still hold what version 1 computed for the same prompt
        await engine.llm.reset_prefix_cache()
        r["after2"], r["sums2"] = await _greedy(engine, prompt, frames), await engine.weight_checksums()

        # version 3: the sender dies halfway through its tensors
        sender.proc.stdin.write("die 3\n")
        sender.proc.stdin.flush()
        t0 = time.monotonic()
        with pytest.raises(Exception, match="weight broadcast failed") as failed:
            await engine.receive_weights(v3["update_info"], 3)
        r["failed_after_s"], r["failure"] = time.monotonic() - t0, str(failed.value)
        r["sender_rc"] = await asyncio.to_thread(sender.proc.wait, 20)
        r["after_death"], r["sums_death"] = await _greedy(engine, prompt, frames), await engine.weight_checksums()
        r["version_after_death"] = await engine.llm.get_weight_version()

        # the next epoch: a new sender, a new group; the engine leaves the broken one and joins
        again = Sender(tiny_assets.model_dir, out / "epoch1", "test/epoch1")
        try:
            v1_again = json.loads(again.ask("prepare 1", "LAYOUT"))
            await asyncio.gather(engine.join_weight_group(again.group), again.ask_async("connect", "CONNECTED"))
            await asyncio.gather(engine.receive_weights(v1_again["update_info"], 4), again.ask_async("send 1", "SENT"))
            r["after_new_group"] = await _greedy(engine, prompt, frames)

            # version 2 again, as version 5, handed over in shared memory (a learner on the actors' machine)
            v2_again = json.loads(again.ask("prepare 2", "LAYOUT"))
            shm = f"/dev/shm/videorl-test-{os.getpid()}"
            try:
                await asyncio.to_thread(again.ask, f"share 2 {shm}", "SHARED")
                shared = {**v2_again["update_info"], "shm_path": shm}
                name = sorted(v2_again["sha256"])[-1]
                damaged = {**v2_again["sha256"], name: "0" * 64}   # as if that tensor's bytes had changed
                with pytest.raises(RuntimeError, match=f"{name} {MISMATCH}"):
                    await engine.receive_weights({**shared, "sums": damaged}, 5)
                r["after_damaged"] = await _greedy(engine, prompt, frames)
                r["swap_shm"] = await engine.receive_weights({**shared, "sums": v2_again["sha256"]}, 5)
            finally:
                Path(shm).unlink(missing_ok=True)
            r["after_shm"], r["sums_shm"] = await _greedy(engine, prompt, frames), await engine.weight_checksums()
        finally:
            again.stop()
    finally:
        sender.stop()
        engine.shutdown()
    return r


async def _disk_run(tiny_assets, out: Path, prompt: str) -> dict:
    row = tiny_assets.eval_rows[0]
    frames = sample_video(row.video, MediaConfig())
    fresh = VLLMEngine.create(out / "v1", RunConfig(rollout={"max_new_tokens": 16}))
    try:
        r = {"fresh1": await _greedy(fresh, prompt, frames), "fresh_sums1": await fresh.weight_checksums()}
        await fresh.load_weights(str(out / "v2"))
        r["disk2"], r["disk_sums2"] = await _greedy(fresh, prompt, frames), await fresh.weight_checksums()
    finally:
        fresh.shutdown()
    return r


def test_broadcast_versions_equal_their_disk_copies_and_a_dead_sender_leaves_the_old_weights(tiny_assets, tmp_path):
    r = asyncio.run(_broadcast_run(tiny_assets, tmp_path))
    d = asyncio.run(_disk_run(tiny_assets, tmp_path, r["prompt"]))

    assert r["spin"] == [0.05], "the vLLM plugin bounds the worker's busy-wait (rollout.engine.spin_wait_s on CPU)"
    assert r["after1"] != r["before"] and r["after2"] != r["after1"], "each version must change the greedy output"
    assert r["after1"] == d["fresh1"], "version 1 by broadcast must behave like a fresh engine on its disk copy"
    assert r["after2"] == d["disk2"], "version 2 likewise"
    assert r["sums1"] == d["fresh_sums1"] and r["sums2"] == d["disk_sums2"], "vLLM's checksums must agree too"
    assert r["sums1"] != r["sums0"]
    # vLLM keeps norms and biases as loaded (it fuses q/k/v and repacks linear and embedding weights for its CPU
    # kernels): their checksums are those of the bytes the sender sent
    sent = set(r["sent_sha1"].values())
    comparable = [k for k in r["sums1"] if ("norm" in k or k.endswith(".bias")) and "qkv_proj" not in k]
    assert len(comparable) > 10 and all(r["sums1"][k] in sent for k in comparable)

    assert r["sent1"]["collectives"] > 4 and r["swap1"].paused_s > 0 and r["swap1"].receive_s > 0
    assert r["sender_rc"] == 17
    assert r["failed_after_s"] < 15, "a dead sender must fail the receive, not wait out every bucket's timeout"
    assert r["after_death"] == r["after2"] and r["sums_death"] == r["sums2"], "the old weights must keep serving"
    assert r["version_after_death"] == "2"
    assert r["after_new_group"] == r["after1"], "the next group delivers a version again"
    assert r["after_damaged"] == r["after_new_group"], "bytes that fail their checksum are never loaded"
    assert r["after_shm"] == d["disk2"] and r["sums_shm"] == d["disk_sums2"], "shared memory delivers the same bytes"
