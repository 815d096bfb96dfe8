"""The learner's end of test_broadcast_weights.py, as a process of its own: a WeightSender (rank 0) driven by
commands on stdin, one reply line each on stdout.

    prepare V   build version V (the base weights plus noise seeded by V), write its disk copy to OUT/vV;
                reply `LAYOUT {"update_info": ..., "sha256": {name: digest of its bytes}}`
    connect     wait for the receivers to join; reply `CONNECTED`
    send V      broadcast version V; reply `SENT <stats json>`
    die V       start broadcasting version V and exit abruptly (os._exit) halfway through its tensors
    share V P   write version V into the shared-memory file P (the same-machine hand-over); reply `SHARED <stats>`
The first line it writes is `GROUP <GroupInfo json>`.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import Qwen2VLForConditionalGeneration

from services.common.weight_wire import Layout
from services.learner.broadcast import WeightSender, write_shared


def version(model_dir: Path, out: Path, v: int) -> dict[str, torch.Tensor]:
    model = Qwen2VLForConditionalGeneration.from_pretrained(str(model_dir), dtype=torch.float32)
    g = torch.Generator().manual_seed(v)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    model.save_pretrained(str(out / f"v{v}"), safe_serialization=True)
    for f in model_dir.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and not (out / f"v{v}" / f.name).exists():
            shutil.copy(f, out / f"v{v}" / f.name)
    return {k: t.detach() for k, t in model.state_dict().items()}


def dying(state: dict[str, torch.Tensor]):
    for i, item in enumerate(state.items()):
        if i == len(state) // 2:
            os._exit(17)
        yield item


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--group", default="test/epoch0")
    ap.add_argument("--bucket-bytes", type=int, default=256 << 10)
    ap.add_argument("--timeout", type=float, default=20.0)
    a = ap.parse_args()
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)   # libraries print to stdout (DeepSpeed's accelerator warning); replies alone go to the real one
    sender = WeightSender("127.0.0.1", a.world, a.group, a.bucket_bytes, a.timeout)
    print("GROUP", json.dumps(sender.info.to_dict()), file=reply)
    versions: dict[int, dict[str, torch.Tensor]] = {}
    for line in sys.stdin:
        cmd, *arg = line.split()
        if cmd == "prepare":
            state = versions[int(arg[0])] = version(a.model, a.out, int(arg[0]))
            sha = {k: hashlib.sha256(t.contiguous().view(-1).view(torch.uint8).numpy()).hexdigest()
                   for k, t in state.items()}
            print("LAYOUT", json.dumps({"update_info": Layout.of_tensors(state.items()).update_info(), "sha256": sha}),
                  file=reply)
        elif cmd == "connect":
            sender.connect()
            print("CONNECTED", file=reply)
        elif cmd in ("send", "die"):
            state = versions[int(arg[0])]
            tensors = iter(state.items()) if cmd == "send" else dying(state)
            stats = sender.send(Layout.of_tensors(state.items()), tensors)
            print("SENT", json.dumps(asdict(stats)), file=reply)
        elif cmd == "share":
            state = versions[int(arg[0])]
            print("SHARED", json.dumps(asdict(write_shared(Layout.of_tensors(state.items()), state.items(), arg[1]))),
                  file=reply)
    sender.close()


if __name__ == "__main__":
    main()
