"""`rlctl judge serve`: a self-hosted LLM judge on Ray Serve (services/judge/serve.py), for the reward service's
judge client (reward.judge.base_url) or anything else that speaks the OpenAI chat API."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Literal

import click
from pydantic import ValidationError


def _replicas(ctx, param, value: str) -> tuple[int, int]:
    lo, sep, hi = value.partition(":")
    try:
        pair = (int(lo), int(hi if sep else lo))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not MIN:MAX (like 1:4) or N", param_hint="--replicas") from None
    return pair


@click.group()
def judge() -> None:
    """A self-hosted LLM judge: the rubric scorer of reward.judge, served by this project."""


@judge.command("serve")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The judge model's directory (Hugging Face format).")
@click.option("--name", default=None, help="The model name requests carry (default: the directory's name); "
                                            "reward.judge.model.")
@click.option("--replicas", default="1:1", show_default=True, metavar="MIN:MAX", callback=_replicas,
              help="Replicas Serve keeps (MIN) and may add under load (MAX); N alone is N:N.")
@click.option("--target", "target", type=float, default=4.0, show_default=True,
              help="Requests in flight per replica that the autoscaler aims at.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Where the HTTP endpoint listens.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Its port (0: free).")
@click.option("--dtype", default=None, help="vLLM dtype (default: float32 on CPU, the model's on GPU).")
@click.option("--max-model-len", type=int, default=None, help="Prompt + reply tokens (default: the model's limit).")
@click.option("--kv-cache-mib", type=int, default=256, show_default=True,
              help="KV cache per replica in MiB (on GPU, 0: vLLM's share of the GPU instead).")
def serve_cmd(model_dir: Path, name: str | None, replicas: tuple[int, int], target: float, host: str, port: int,
              dtype: str | None, max_model_len: int | None, kv_cache_mib: int) -> None:
    """Serve MODEL with vLLM on Ray Serve behind an OpenAI-compatible API (/v1/chat/completions, /v1/models,
    /health, /metrics), autoscaled between MIN and MAX replicas on requests in flight. Runs until Ctrl-C. A run
    uses it with reward.judge.base_url = the printed URL and reward.judge.model = NAME."""
    import torch

    from rlctl.cluster import ClusterTarget
    from services.common.reward_config import JudgeServeConfig

    accelerator: Literal["cpu", "gpu"] = "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator == "cpu" and kv_cache_mib <= 0:
        raise click.BadParameter("on CPU the KV cache needs a bound (vLLM would take most of the memory)",
                                 param_hint="--kv-cache-mib")
    try:
        cfg = JudgeServeConfig(model=model_dir, min_replicas=replicas[0], max_replicas=replicas[1],
                               target_ongoing_requests=target, host=host, port=port,
                               dtype=dtype or ("float32" if accelerator == "cpu" else "auto"),
                               max_model_len=max_model_len, kv_cache_mib=kv_cache_mib or None,
                               num_gpus=1.0 if accelerator == "gpu" else 0.0)
    except ValidationError as e:
        err = e.errors()[0]
        raise click.BadParameter(err["msg"], param_hint="--" + str(err["loc"][0]).replace("_", "-")
                                 if err["loc"] else None) from None
    import ray

    from services.judge import serve as judge_serve

    target_cluster = ClusterTarget.from_env()
    ray.init(**target_cluster.ray_init_kwargs())
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        with click.progressbar(length=1, label=f"starting {cfg.min_replicas} replica(s) of {model_dir.name}") as bar:
            try:
                served = judge_serve.start(cfg, name or model_dir.name, accelerator)
            except judge_serve.JudgeServeError as e:
                raise click.ClickException(str(e)) from None
            bar.update(1)
        click.echo(f"judge {served.name} at {served.base_url} ({cfg.min_replicas}-{cfg.max_replicas} replicas); "
                   f"in a run config: reward.judge.base_url={served.base_url} reward.judge.model={served.name}. "
                   "Ctrl-C stops it.")
        done.wait()
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
