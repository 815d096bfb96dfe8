"""Weight hot-swap against copying the same bytes: how long a new policy version takes to publish (write, fsync,
hash, Redis bump) and to load into a running vLLM engine (generation paused), next to `copy + fsync` of the same
safetensors bytes on the same disk, for the embedded tiny model and a larger random-init Qwen2-VL.

    .venv/bin/python bench/hot_swap_bench.py                 # tiny and ~370 MB models, 3 repetitions each
    .venv/bin/python bench/hot_swap_bench.py --sizes tiny    # only the tiny model

Each figure is the median of the repetitions. Writes bench/results/hot_swap.md next to the printed table.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"
# A larger model of the same architecture: ~92 M parameters, ~370 MB of float32 safetensors.
MEDIUM = {"text": {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 16,
                   "num_key_value_heads": 4, "mrope": [8, 12, 12]},
          "vision": {"embed_dim": 256, "depth": 4, "num_heads": 4}}


def build_medium(out_dir: Path, tiny_dir: Path) -> Path:
    """A random-init Qwen2-VL with MEDIUM's sizes and the tiny model's tokenizer and processor."""
    if (out_dir / "model.safetensors").exists() or list(out_dir.glob("*.safetensors")):
        return out_dir
    import torch
    from transformers import AutoProcessor, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    cfg = Qwen2VLConfig.from_pretrained(tiny_dir)
    t, v = cfg.text_config, cfg.vision_config
    m = MEDIUM["text"]
    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"):
        setattr(t, k, m[k])
    t.layer_types = [t.layer_types[0]] * m["num_hidden_layers"]
    t.rope_parameters = {**t.rope_parameters, "mrope_section": m["mrope"]}
    for k, val in MEDIUM["vision"].items():
        setattr(v, k, val)
    v.hidden_size = m["hidden_size"]
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(cfg)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    AutoProcessor.from_pretrained(tiny_dir).save_pretrained(tmp)
    for f in ("generation_config.json",):
        if (tiny_dir / f).exists():
            shutil.copy(tiny_dir / f, tmp / f)
    tmp.rename(out_dir)
    return out_dir


def copy_fsync(src: Path, dst: Path) -> float:
    """Copy every safetensors file of src into dst and fsync them: the floor for moving the bytes."""
    dst.mkdir(parents=True)
    t0 = time.perf_counter()
    for f in src.glob("*.safetensors"):
        shutil.copyfile(f, dst / f.name)
        with open(dst / f.name, "rb") as fh:
            os.fsync(fh.fileno())
    return time.perf_counter() - t0


def publish(model, model_dir: Path, root: Path, version: int, control) -> dict[str, float]:
    """What the learner does per version: write + fsync + hash (weights.write_version), then the Redis bump."""
    from services.common.weights import write_version

    def write(d: Path) -> None:
        model.save_pretrained(d, safe_serialization=True)
        for f in model_dir.iterdir():
            if f.suffix != ".safetensors" and f.is_file() and not (d / f.name).exists():
                shutil.copy(f, d / f.name)

    t0 = time.perf_counter()
    manifest = write_version(root, version, version, write)
    t1 = time.perf_counter()
    control.publish_version(manifest)
    t2 = time.perf_counter()
    return {"write_fsync_hash": t1 - t0, "redis": t2 - t1, "uri": manifest.uri, "bytes": manifest.bytes}


def bench_model(name: str, model_dir: Path, reps: int, work: Path) -> dict:
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from services.common.config import RolloutConfig
    from services.common.control import ControlPlane
    from services.common.redis_server import EmbeddedRedis
    from services.common.weights import manifest_for_dir
    from services.rollout.engine import VLLMEngine

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir)
    copies, writes, bumps, loads, uris = [], [], [], [], []
    with EmbeddedRedis(work / f"redis-{name}") as redis:
        control = ControlPlane(redis.url, f"bench-{name}")
        control.publish_version(manifest_for_dir(model_dir, 0))
        for v in range(1, reps + 1):
            copies.append(copy_fsync(model_dir, work / f"{name}-copy{v}"))
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1e-3)   # a new version: different bytes
            out = publish(model, model_dir, work / f"{name}-weights", v, control)
            writes.append(out["write_fsync_hash"])
            bumps.append(out["redis"])
            uris.append(out["uri"])
            size = out["bytes"]
        control.close()
    engine = VLLMEngine.create(model_dir, RolloutConfig())

    async def swap_all() -> None:
        for uri in uris:
            loads.append(await engine.load_weights(uri))

    try:
        asyncio.run(swap_all())
    finally:
        engine.shutdown()
    med = statistics.median
    return {"model": name, "bytes": size, "copy": med(copies), "write": med(writes), "redis": med(bumps),
            "load": med(loads), "reps": reps}


def table(rows: list[dict]) -> str:
    head = ("| model | safetensors MB | copy + fsync s | publish: write + fsync + hash s | Redis bump ms | "
            "load into vLLM (generation paused) s | publish + load s | (publish + load) / copy |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        total = r["write"] + r["redis"] + r["load"]
        lines.append(f"| {r['model']} | {r['bytes'] / 1e6:.1f} | {r['copy']:.3f} | {r['write']:.3f} | "
                     f"{r['redis'] * 1e3:.1f} | {r['load']:.3f} | {total:.3f} | {total / r['copy']:.1f}x |")
    return "\n".join(lines)


@click.command()
@click.option("--sizes", default="tiny,medium", show_default=True, help="Comma-separated: tiny, medium.")
@click.option("--reps", default=3, show_default=True, help="Versions published and loaded per model.")
def main(sizes: str, reps: int) -> None:
    from rich.console import Console

    from rlctl.assets import CACHE, embedded_model

    tiny = embedded_model(0, Console(stderr=True))
    dirs = {"tiny": tiny, "medium": None}
    rows = []
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:   # the same disk as the models
        work = Path(tmp)
        for name in sizes.split(","):
            if name == "medium":
                dirs["medium"] = build_medium(CACHE / "bench-qwen2vl-medium", tiny)
            if dirs.get(name) is None:
                raise click.BadParameter(f"unknown size {name!r}; known: tiny, medium", param_hint="--sizes")
            click.echo(f"{name}: publishing and loading {reps} versions ...", err=True)
            rows.append(bench_model(name, dirs[name], reps, work))
    out = table(rows)
    machine = f"{os.cpu_count()} CPU cores, no GPU" if not os.environ.get("CUDA_VISIBLE_DEVICES") else "GPU"
    click.echo(out)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "hot_swap.md").write_text(f"Measured {time.strftime('%Y-%m-%d')} on {machine} "
                                     f"(`python bench/hot_swap_bench.py`), median of {reps}:\n\n{out}\n")


if __name__ == "__main__":
    main()
