"""Two learner ranks on CPU over gloo (ZeRO-2 and ZeRO-3), launched torchrun-style as two processes on loopback.

Asserted: after a few steps with gradient accumulation over micro-batches, both ranks hold identical weights
(each rank's gathered parameters, compared tensor by tensor), the published model directory (written by
rank 0) holds exactly those weights, they differ from the initial ones, and a fresh HF model loaded from the
directory gives the same log-probs as each trained engine on its own shard.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from learner_fakes import fake_batch, synth_rows, tiny_model
from safetensors.torch import load_file

from services.common.processes import free_port
from services.learner.batch import completion_logp

pytestmark = [pytest.mark.integration, pytest.mark.slow]
WORKER = Path(__file__).parent / "learner_rank_worker.py"
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("learner-assets")
    model = tiny_model(d / "model")
    synth_rows(d / "synth", 4)  # rendered once here, read by both ranks
    return model, d / "synth"


def _launch(model: Path, synth: Path, out: Path, stage: int) -> None:
    port = free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        env.pop("VIDEORL_ONE_RANK_GROUP", None)  # a launcher's ranks, not variables an earlier one-rank test wrote
        log = open(out / f"rank{rank}.log", "wb")  # noqa: SIM115 - closed after the process ends
        procs.append((subprocess.Popen([sys.executable, str(WORKER), "--model", str(model), "--synth", str(synth),
                                        "--out", str(out), "--stage", str(stage)], env=env, stdout=log,
                                       stderr=subprocess.STDOUT, cwd=ROOT), log))
    try:
        for p, log in procs:
            rc = p.wait(timeout=240)
            log.close()
            assert rc == 0, (out / f"rank{procs.index((p, log))}.log").read_text()[-4000:]
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_publish_identical_trained_weights(assets, tmp_path, stage):
    model, synth = assets
    _launch(model, synth, tmp_path, stage)
    from learner_rank_worker import shard
    from transformers import Qwen2VLForConditionalGeneration

    def load(d):
        return Qwen2VLForConditionalGeneration.from_pretrained(str(d), dtype=torch.float32).eval()

    hf = load(tmp_path / "published")  # HF renames tensors on save; compare in the module's own names
    published, initial = hf.state_dict(), load(model).state_dict()
    engine = [load_file(str(tmp_path / f"rank{r}-engine.safetensors")) for r in range(2)]
    assert published.keys() == initial.keys() == engine[0].keys() == engine[1].keys()
    for name, w in published.items():
        assert torch.equal(w, engine[0][name]) and torch.equal(w, engine[1][name]), name
    changed = [n for n in initial if not torch.equal(initial[n], published[n])]
    assert len(changed) > len(initial) // 2, "training moved most tensors"

    # the published directory is a complete model that computes what each trained engine computed
    batch = fake_batch(model, synth_rows(synth, 4), 2, seed=0)
    for r in range(2):
        mb = shard(batch, r, 2, 2)
        with torch.no_grad():
            out = hf(input_ids=mb.input_ids, attention_mask=mb.attention_mask, mm_token_type_ids=mb.mm_token_type_ids,
                     pixel_values_videos=mb.pixel_values_videos, video_grid_thw=mb.video_grid_thw)
        torch.testing.assert_close(completion_logp(out.logits, mb), torch.load(tmp_path / f"rank{r}-logp.pt"),
                                   rtol=1e-5, atol=1e-5)
