"""One rank of the two-rank learner test, started as its own process with RANK/WORLD_SIZE/MASTER_* set the way
torchrun sets them. Trains a few GRPO steps on its half of a batch (whole groups), then writes under OUT:
`published/` (the model directory, written by rank 0), `rank<r>-engine.safetensors` (each rank's own gathered
weights) and `rank<r>-logp.pt` (the trained engine's log-probs of its shard)."""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from learner_fakes import fake_batch, synth_rows  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from services.common.config import LearnerConfig  # noqa: E402
from services.learner.engine import LearnerEngine  # noqa: E402


def shard(batch, rank: int, world: int, k: int):
    groups = len(batch) // k
    mine = [g * k + i for g in range(rank, groups, world) for i in range(k)]
    return batch.select(mine)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--synth", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stage", type=int, required=True)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    rank, world, k = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), 2
    torch.manual_seed(0)
    batch = shard(fake_batch(args.model, synth_rows(args.synth, 4), k, seed=0), rank, world, k)
    cfg = LearnerConfig(zero_stage=args.stage, lr=1e-3, micro_batch_tokens=2 * max(batch.seq_lens()))
    engine = LearnerEngine(args.model, cfg, batch_size=len(batch))
    for _ in range(args.steps):
        m = engine.train_step(batch, k)
        assert m.micro_batches == 2, m
    engine.save_weights(args.out / "published")  # every rank calls it (ZeRO-3 gathers collectively); rank 0 writes
    save_file(engine.full_state_dict(), str(args.out / f"rank{rank}-engine.safetensors"))
    engine.engine.eval()
    with torch.no_grad():
        torch.save(engine._logp(engine.engine, batch).cpu(), args.out / f"rank{rank}-logp.pt")
    torch.distributed.barrier()


if __name__ == "__main__":
    main()
