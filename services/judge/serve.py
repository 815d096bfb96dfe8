"""The LLM judge, served by this project on Ray Serve: each replica is the project's vLLM engine (AsyncLLM, text
only) behind vLLM's own OpenAI-compatible FastAPI app (its request and response models, its chat templating),
cut down to the routes a judge client needs (ROUTES). Serve autoscales the replicas on the requests each one has
in flight. `ray[llm]` does this too, but Ray 2.60's pins an older vLLM than the project's (MACHINE-NOTES).

Invariants kept here:
- a replica answers only after its engine has loaded and its app is built (Serve routes to it only then);
- nothing but ROUTES is reachable: vLLM's app also carries admin routes (elastic scaling, request aborts, raw
  generation) that no judge client should reach;
- the app is built by vLLM's own `build_app` / `init_app_state` from vLLM's own argument parser, so its defaults
  are `vllm serve`'s.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ray import serve

from services.common.config import RunConfig
from services.common.processes import free_port
from services.common.reward_config import JudgeServeConfig

APP = "judge"
DEPLOYMENT = "JudgeReplica"
ROUTES = frozenset({"/v1/chat/completions", "/v1/models", "/health", "/version", "/metrics", "/docs",
                    "/openapi.json"})


def engine_args(cfg: JudgeServeConfig, name: str, accelerator: Literal["cpu", "gpu"]) -> dict:
    """vLLM's AsyncEngineArgs of one replica: the language model only (no image or video per prompt), the KV cache
    bounded, eager on CPU (no compile to wait for)."""
    if cfg.model is None:
        raise ValueError("model: the judge's model directory is needed here (rlctl builds the embedded one)")
    args: dict[str, Any] = dict(model=str(cfg.model), served_model_name=[name], dtype=cfg.dtype,
                                enforce_eager=accelerator == "cpu",
                                limit_mm_per_prompt={"video": 0, "image": 0}, max_num_seqs=cfg.max_ongoing_requests,
                                distributed_executor_backend="uni")
    if cfg.max_model_len is not None:
        args["max_model_len"] = cfg.max_model_len
    if cfg.kv_cache_mib is not None:
        args["kv_cache_memory_bytes"] = cfg.kv_cache_mib << 20
    elif accelerator == "gpu":
        args["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    else:
        raise ValueError("kv_cache_mib: set it on CPU (vLLM would otherwise take most of the machine's memory)")
    return args


def deployment_options(cfg: JudgeServeConfig) -> dict:
    return {"name": DEPLOYMENT, "max_ongoing_requests": cfg.max_ongoing_requests,
            "max_constructor_retry_count": 2,   # a replica that cannot load (bad model, too long max_model_len)
            "autoscaling_config": {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                                   "initial_replicas": cfg.min_replicas,
                                   "target_ongoing_requests": cfg.target_ongoing_requests,
                                   "upscale_delay_s": cfg.upscale_delay_s,
                                   "downscale_delay_s": cfg.downscale_delay_s},
            "ray_actor_options": {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus}}


@serve.ingress()
class JudgeReplica:
    """One replica: its engine, then (Serve calls `__serve_build_asgi_app__` after the constructor) vLLM's app."""

    def __init__(self, engine: dict):
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.engine = engine
        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine))

    async def __serve_build_asgi_app__(self):
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.app import build_app
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        args = make_arg_parser(FlexibleArgumentParser()).parse_args(
            ["--model", self.engine["model"], "--served-model-name", *self.engine["served_model_name"]])
        tasks = await self.llm.get_supported_tasks()
        app = build_app(args, tasks, self.llm.model_config)
        await init_app_state(self.llm, app.state, args, tasks)
        app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) in ROUTES]
        return app


def application(cfg: JudgeServeConfig, name: str, accelerator: Literal["cpu", "gpu"]) -> serve.Application:
    deployment: Any = serve.deployment(JudgeReplica, **deployment_options(cfg))
    return deployment.bind(engine_args(cfg, name, accelerator))


def app_builder(args: dict[str, Any]) -> serve.Application:
    """The judge as a Serve config names it (`import_path: services.judge.serve:app_builder`, deploy/k8s/base/
    judge.yaml's RayService): `args` are JudgeServeConfig's fields plus `name` (the served model name) and
    `accelerator` (cpu or gpu)."""
    args = dict(args)
    name, accelerator = str(args.pop("name", "judge")), args.pop("accelerator", "gpu")
    if accelerator not in ("cpu", "gpu"):
        raise ValueError(f"accelerator: {accelerator!r} is neither cpu nor gpu")
    return application(JudgeServeConfig.model_validate(args), name, accelerator)


@dataclass(frozen=True)
class ServedJudge:
    base_url: str    # what the judge client is given: {base_url}/chat/completions
    name: str        # the model name requests carry


class JudgeServeError(RuntimeError):
    """The judge could not start; the message is the replicas' own error (its last line), not Serve's summary."""


def start(cfg: JudgeServeConfig, name: str, accelerator: Literal["cpu", "gpu"]) -> ServedJudge:
    """Deploy the judge on the Ray this process is connected to and wait until its first replicas answer."""
    port = cfg.port or free_port()
    serve.start(http_options={"host": cfg.host, "port": port})
    try:
        serve.run(application(cfg, name, accelerator), name=APP, route_prefix="/", blocking=False)
    except RuntimeError as e:
        raise JudgeServeError(f"the judge's replicas of {cfg.model} failed to start: {_replica_error() or e}") from None
    host = "127.0.0.1" if cfg.host == "0.0.0.0" else cfg.host
    return ServedJudge(f"http://{host}:{port}/v1", name)


def _replica_error() -> str | None:
    app = serve.status().applications.get(APP)
    return last_exception(app.deployments[DEPLOYMENT].message if app and DEPLOYMENT in app.deployments else "")


def last_exception(message: str) -> str | None:
    """The last exception of a traceback text (as Serve's controller records a replica's failure), with the lines
    that follow it: pydantic puts the reason there."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    starts = [i for i, ln in enumerate(lines) if re.match(r"^[\w.]+(Error|Exception)\b", ln)]
    if not starts:
        return None
    tail = [ln for ln in lines[starts[-1]:] if not ln.startswith("For further information")]
    return " ".join(tail)[:800]


def serve_for_run(cfg: RunConfig, model: Path) -> RunConfig:
    """Start reward.judge.serve with `model` on the run's Ray (cluster.accelerator already concrete); the run's
    config with reward.judge.base_url and model at it, which is what the reward service is given."""
    judge = cfg.reward.judge
    if judge.serve is None or cfg.cluster.accelerator == "auto":
        raise ValueError("serve_for_run needs reward.judge.serve and a concrete cluster.accelerator")
    served = start(judge.serve.model_copy(update={"model": model}), judge.model or "judge", cfg.cluster.accelerator)
    judge = judge.model_copy(update={"base_url": served.base_url, "model": served.name})
    return cfg.model_copy(update={"reward": cfg.reward.model_copy(update={"judge": judge})})


def replicas() -> dict[str, int]:
    """The judge's replicas by state (RUNNING, STARTING, STOPPING, ...), from Serve's controller."""
    app = serve.status().applications.get(APP)
    if app is None or DEPLOYMENT not in app.deployments:
        return {}
    return {str(getattr(k, "value", k)): v for k, v in app.deployments[DEPLOYMENT].replica_states.items() if v}


def stop() -> None:
    """Delete the judge's application (on a Ray cluster it would outlive the run's driver)."""
    serve.delete(APP)
