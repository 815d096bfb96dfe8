"""Weight hot-swap against copying the same bytes, for both weight transports, next to `copy + fsync` of the same
safetensors bytes on the same disk, for the embedded tiny model and larger random-init Qwen2-VLs:

- disk: how long a new policy version takes to publish (write, fsync, hash, Redis bump) and to load into a running
  vLLM engine (generation paused);
- broadcast: how long the learner's sender (its own process, as the learner is) takes to pack and broadcast it over
  gloo on loopback (services/learner/broadcast.py), how long the engine's worker takes to receive it (generation
  goes on meanwhile), and how long generation is paused to load it (services/rollout/weight_transfer.py);
- shared: the broadcast transport's hand-over when the learner and the actors share a machine (the default there):
  the sender writes the version into a /dev/shm file (broadcast.write_shared) which the engine's worker maps.

    .venv/bin/python bench/hot_swap_bench.py                        # tiny, ~385 MB and ~1.5 GB, 3 versions each
    .venv/bin/python bench/hot_swap_bench.py --sizes tiny           # only the tiny model
    .venv/bin/python bench/hot_swap_bench.py --transports broadcast,shared

Each figure is the median of the repetitions. Writes bench/results/hot_swap.md next to the printed table.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import click

NOTES = "## Where the time goes"   # results/hot_swap.md from this heading on is a profile written by hand
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"
# Larger models of the same architecture: ~92 M parameters (~385 MB of float32 safetensors) and ~375 M (~1.5 GB).
SIZES = {
    "medium": {"text": {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8,
                        "num_attention_heads": 16, "num_key_value_heads": 4, "mrope": [8, 12, 12]},
               "vision": {"embed_dim": 256, "depth": 4, "num_heads": 4}},
    "large": {"text": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 8,
                       "num_attention_heads": 16, "num_key_value_heads": 4, "mrope": [16, 24, 24]},
              "vision": {"embed_dim": 256, "depth": 4, "num_heads": 4}},
}

def build_model(out_dir: Path, tiny_dir: Path, size: str) -> Path:
    """A random-init Qwen2-VL with SIZES[size] and the tiny model's tokenizer and processor."""
    if (out_dir / "model.safetensors").exists() or list(out_dir.glob("*.safetensors")):
        return out_dir
    import torch
    from transformers import AutoProcessor, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    cfg = Qwen2VLConfig.from_pretrained(tiny_dir)
    t, v = cfg.text_config, cfg.vision_config
    m = SIZES[size]["text"]
    for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"):
        setattr(t, k, m[k])
    t.layer_types = [t.layer_types[0]] * m["num_hidden_layers"]
    t.rope_parameters = {**t.rope_parameters, "mrope_section": m["mrope"]}
    for k, val in SIZES[size]["vision"].items():
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


def bench_disk(model_dir: Path, reps: int, work: Path, name: str) -> tuple[dict, list[str]]:
    """Copies and disk publishes of `reps` versions: the figures, and the version folders to load."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from services.common.control import ControlPlane
    from services.common.redis_server import EmbeddedRedis
    from services.common.weights import manifest_for_dir

    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir)
    copies, writes, bumps, uris = [], [], [], []
    with EmbeddedRedis(work / f"redis-{name}") as redis:
        control = ControlPlane(redis.url, f"bench-{name}")
        control.publish_version(manifest_for_dir(model_dir, 0))
        for v in range(1, reps + 1):
            copies.append(copy_fsync(model_dir, work / f"{name}-copy{v}"))
            shutil.rmtree(work / f"{name}-copy{v}")
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1e-3)   # a new version: different bytes
            out = publish(model, model_dir, work / f"{name}-weights", v, control)
            writes.append(out["write_fsync_hash"])
            bumps.append(out["redis"])
            uris.append(out["uri"])
            size = out["bytes"]
        control.close()
    med = statistics.median
    return {"bytes": size, "copy": med(copies), "write": med(writes), "redis": med(bumps)}, uris


def _sender_process(conn, model_dir: str, bucket_bytes: int, reps: int, shm: str) -> None:
    """The learner's side, in a process of its own: each version is the last one plus 1e-3, packed and broadcast
    (or, given `shm`, written into that shared-memory file)."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from services.common.weight_wire import Layout
    from services.learner.broadcast import WeightSender, write_shared

    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir)
    state = model.state_dict()   # views of the parameters: they follow every update
    layout = Layout.of_tensors(state.items())
    sender = WeightSender("127.0.0.1", 2, f"bench/{os.getpid()}", bucket_bytes, timeout_s=120)   # a group name each
    conn.send((sender.info.to_dict(), layout.update_info()))
    sender.connect()
    for _ in range(reps):
        conn.recv()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-3)
        conn.send("ready")   # the next version exists: the receive starts with the send, not with this update
        conn.recv()
        conn.send(asdict(write_shared(layout, state.items(), shm) if shm else sender.send(layout, state.items())))
    sender.close()


async def bench_engine(engine, model_dir: Path, uris: list[str], bucket_bytes: int, reps: int, shm: str = "") -> dict:
    """Disk loads of `uris`, then `reps` broadcast versions from a sender process (in the shared-memory file `shm`
    when given), into one running engine."""
    import multiprocessing as mp

    loads = [await engine.load_weights(uri) for uri in uris]
    if not reps:
        return {"load": statistics.median(loads) if loads else None}
    ours, theirs = mp.get_context("spawn").Pipe()
    sender = mp.get_context("spawn").Process(target=_sender_process,
                                             args=(theirs, str(model_dir), bucket_bytes, reps, shm))
    sender.start()
    sends, packs, receives, pauses = [], [], [], []
    try:
        group, update_info = await asyncio.to_thread(ours.recv)
        await engine.join_weight_group(group)
        for v in range(1, reps + 1):
            ours.send("update")
            await asyncio.to_thread(ours.recv)
            ours.send("send")
            if shm:   # the file is complete once the sender replies; then the worker maps it
                stats = await asyncio.to_thread(ours.recv)
                swap = await engine.receive_weights({**update_info, "shm_path": shm}, v)   # one file, reused
            else:
                swap, stats = await asyncio.gather(engine.receive_weights(update_info, v),
                                                   asyncio.to_thread(ours.recv))
            sends.append(stats["seconds"])
            packs.append(stats["pack_s"])
            receives.append(swap.receive_s)
            pauses.append(swap.paused_s)
            collectives = stats["collectives"]
    finally:
        sender.join(60)
        if shm:
            Path(shm).unlink(missing_ok=True)
    med = statistics.median
    return {"load": med(loads) if loads else None, "send": med(sends), "pack": med(packs), "collectives": collectives,
            "receive": med(receives), "bload": med(pauses)}


def bench_model(name: str, model_dir: Path, reps: int, work: Path, transports: list[str], bucket_mib: int) -> dict:
    import torch

    from services.common.config import RunConfig
    from services.rollout.engine import VLLMEngine

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    row, uris = bench_disk(model_dir, reps, work, name)
    uris = uris if "disk" in transports else []
    engine = VLLMEngine.create(model_dir, RunConfig(weights={"transport": "broadcast"}))

    async def both() -> dict:   # one event loop for the engine's whole life: AsyncLLM stays bound to its first
        out = await bench_engine(engine, model_dir, uris, bucket_mib << 20, reps if "broadcast" in transports else 0)
        if "shared" in transports:
            shared = await bench_engine(engine, model_dir, [], bucket_mib << 20, reps,
                                        shm=f"/dev/shm/videorl-bench-{os.getpid()}")
            out |= {f"shm_{k}": v for k, v in shared.items()}
        return out

    try:
        row |= asyncio.run(both())
    finally:
        engine.shutdown()
    return {"model": name, "reps": reps, **row}


def table(rows: list[dict]) -> str:
    head = ("| model | safetensors MB | copy + fsync s | transport | publish s | load into vLLM (generation paused) s "
            "| publish + load s | (publish + load) / copy |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        mb, copy = f"{r['bytes'] / 1e6:.1f}", r["copy"]
        if r.get("load") is not None:
            publish = r["write"] + r["redis"]
            lines.append(f"| {r['model']} | {mb} | {copy:.3f} | disk: write + fsync + hash + Redis bump | "
                         f"{publish:.3f} | {r['load']:.3f} | {publish + r['load']:.3f} | "
                         f"{(publish + r['load']) / copy:.1f}x |")
        if r.get("send") is not None:
            total = r["send"] + r["bload"]
            lines.append(f"| {r['model']} | {mb} | {copy:.3f} | broadcast: pack + send | {r['send']:.3f} | "
                         f"{r['bload']:.3f} | {total:.3f} | {total / copy:.1f}x |")
        if r.get("shm_send") is not None:
            total = r["shm_send"] + r["shm_receive"] + r["shm_bload"]
            lines.append(f"| {r['model']} | {mb} | {copy:.3f} | broadcast, same machine: write to /dev/shm + map | "
                         f"{r['shm_send'] + r['shm_receive']:.3f} | {r['shm_bload']:.3f} | {total:.3f} | "
                         f"{total / copy:.1f}x |")
    return "\n".join(lines)


def detail(rows: list[dict], bucket_mib: int) -> str:
    lines = [f"Broadcast in detail ({bucket_mib} MiB buckets):", "",
             "| model | collectives | send s | of which pulling + packing s (overlapped) "
             "| receive s (generation goes on) | load s (generation paused) |", "|" + "---|" * 6]
    lines += [f"| {r['model']} | {r['collectives']} | {r['send']:.3f} | {r['pack']:.3f} | {r['receive']:.3f} | "
              f"{r['bload']:.3f} |" for r in rows if r.get("send") is not None]
    return "\n".join(lines)


@click.command()
@click.option("--sizes", default="tiny,medium,large", show_default=True, help="Comma-separated: tiny, medium, large.")
@click.option("--transports", default="disk,broadcast,shared", show_default=True,
              help="Comma-separated: disk, broadcast (gloo), shared (broadcast's same-machine hand-over).")
@click.option("--reps", default=3, show_default=True, help="Versions published and loaded per model and transport.")
@click.option("--bucket-mib", default=64, show_default=True, help="Broadcast bucket size.")
def main(sizes: str, transports: str, reps: int, bucket_mib: int) -> None:
    from rich.console import Console

    from rlctl.assets import CACHE, embedded_model

    tiny = embedded_model(0, Console(stderr=True))
    chosen = transports.split(",")
    if not set(chosen) <= {"disk", "broadcast", "shared"}:
        raise click.BadParameter(f"{transports!r}: known transports are disk, broadcast, shared",
                                 param_hint="--transports")
    rows = []
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:   # the same disk as the models
        for name in sizes.split(","):
            if name not in ("tiny", *SIZES):
                raise click.BadParameter(f"{name!r}: known sizes are tiny, {', '.join(SIZES)}", param_hint="--sizes")
            model_dir = tiny if name == "tiny" else build_model(CACHE / f"bench-qwen2vl-{name}", tiny, name)
            click.echo(f"{name}: publishing and loading {reps} versions by {transports} ...", err=True)
            rows.append(bench_model(name, model_dir, reps, Path(tmp), chosen, bucket_mib))
    out = table(rows) + ("\n\n" + detail(rows, bucket_mib) if "broadcast" in chosen else "")
    machine = f"{os.cpu_count()} CPU cores, no GPU" if not os.environ.get("CUDA_VISIBLE_DEVICES") else "GPU"
    click.echo(out)
    OUT.mkdir(parents=True, exist_ok=True)
    result = OUT / "hot_swap.md"
    notes = result.read_text().partition(NOTES)[2] if result.exists() else ""   # written by hand: kept
    result.write_text(f"Measured {time.strftime('%Y-%m-%d')} on {machine} (`python bench/hot_swap_bench.py`), "
                      f"median of {reps}:\n\n{out}\n" + (f"\n{NOTES}{notes}" if notes else ""))


if __name__ == "__main__":
    main()
