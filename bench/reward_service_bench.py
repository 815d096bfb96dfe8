"""End-to-end latency and throughput of the reward service under concurrent actor-like streams.

Starts a real redis-server and the real reward gRPC server (services/reward/server.py, in its own process)
on loopback, then opens S gRPC streams (one channel each, like S rollout actors). Each stream keeps up to
`--inflight` groups of K completions outstanding, sends a group's K completions back to back and waits for
its ack. Latency is per group: first completion sent -> GroupAck received (so it includes gRPC, assembly,
scoring, the Redis write and the ack). Completions carry 256 prompt and 64 completion token ids with
logprobs, like real ones.

Scenarios: `default` is the default config (mcq + answer_format); `judge` is a route task scored by
format + the LLM judge (gated on format), against tests/integration/judge_server.py sleeping `--judge-delay`
seconds per request (a slow judge), with every answer distinct so the cache never helps.

    python bench/reward_service_bench.py                       # ~25 s on 2 busy cores
    python bench/reward_service_bench.py --completions 2000 --judge-completions 400   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.common.pb.videorl.v1 import rollout_pb2 as pb  # noqa: E402
from services.common.pb.videorl.v1 import rollout_pb2_grpc as pb_grpc  # noqa: E402

JUDGE_SERVER = ROOT / "tests" / "integration" / "judge_server.py"
ROUTE_REF = "turn left at the red door then take the stairs down"


@dataclass
class Result:
    name: str
    completions: int
    groups: int
    wall_s: float
    latencies: list[float]
    unscorable: int
    not_scored: int


# ------------------------------------------------------------------------------------ server process


def serve(redis_url: str, run_id: str, reward_json: str) -> None:
    """Child process: the reward server for one scenario; prints PORT n, serves until terminated."""
    from prometheus_client import CollectorRegistry

    from services.common.control import ControlPlane
    from services.common.reward_config import RewardConfig
    from services.reward.scoring import Scorer
    from services.reward.server import start_server

    control = ControlPlane(redis_url, run_id)
    control.ensure_streams()

    async def main() -> None:
        registry = CollectorRegistry()
        server, port = await start_server(control, Scorer(RewardConfig.model_validate_json(reward_json), registry),
                                          registry)
        print(f"PORT {port}", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


def _spawn(args: list[str]) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"{args[0]} did not start: {line!r}")
    return proc, int(line.split()[1])


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


# ---------------------------------------------------------------------------------------- clients


def _groups(stream: int, n_groups: int, k: int, task: str, run: str) -> list[list[pb.Completion]]:
    out = []
    for g in range(n_groups):
        pid = f"{run}-s{stream}-g{g}"
        if task == "route":
            prompt = pb.Prompt(prompt_id=pid, task="route", question="How do I get back to the start?",
                               answer=ROUTE_REF, split="train", video_uri="/v.mp4")
            texts = [f"<think>walked</think><answer>{'turn left at the red door' if i % 2 else 'go right'} "
                     f"(try {stream}.{g}.{i})</answer>" for i in range(k)]
        else:
            prompt = pb.Prompt(prompt_id=pid, task="mcq", question="Which way does the shape move?",
                               options=["up", "down", "left", "right"], answer="B", split="train",
                               video_uri="/v.mp4")
            texts = [f"<think>frame {g} shows it moving</think><answer>{'ABCD'[i % 4]}</answer>" for i in range(k)]
        out.append([pb.Completion(run_id=run, prompt_id=pid, group_id=f"{pid}/v1", sample_index=i, group_size=k,
                                  policy_version=1, prompt_token_ids=list(range(256)),
                                  completion_token_ids=list(range(64)), logprobs=[-0.5] * 64, text=t,
                                  finish_reason="stop", actor_id=f"bench-{stream}", prompt=prompt)
                    for i, t in enumerate(texts)])
    return out


async def _stream(address: str, groups: list[list[pb.Completion]], inflight: int,
                  latencies: list[float], acks: list[pb.GroupAck]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        outbox: asyncio.Queue[pb.Completion | None] = asyncio.Queue()

        async def requests():
            while (m := await outbox.get()) is not None:
                yield m

        call = pb_grpc.RewardServiceStub(channel).StreamCompletions(requests())
        slots = asyncio.Semaphore(inflight)
        sent_at: dict[str, float] = {}

        async def read() -> None:
            async for ack in call:
                latencies.append(time.perf_counter() - sent_at.pop(ack.group_id))
                acks.append(ack)
                slots.release()

        reader = asyncio.create_task(read())
        for group in groups:
            await slots.acquire()
            sent_at[group[0].group_id] = time.perf_counter()
            for c in group:
                outbox.put_nowait(c)
        for _ in range(inflight):
            await slots.acquire()  # every group acked
        outbox.put_nowait(None)
        await reader


async def _drive(address: str, streams: list[list[list[pb.Completion]]], inflight: int
                 ) -> tuple[float, list[float], list[pb.GroupAck]]:
    latencies: list[float] = []
    acks: list[pb.GroupAck] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(_stream(address, s, inflight, latencies, acks) for s in streams))
    return time.perf_counter() - t0, latencies, acks


def run_scenario(name: str, redis_url: str, reward: dict, task: str, completions: int, args) -> Result:
    run = f"bench-{uuid.uuid4().hex[:6]}"
    n_groups = completions // args.k
    per_stream = [n_groups // args.streams + (1 if s < n_groups % args.streams else 0) for s in range(args.streams)]
    streams = [_groups(s, n, args.k, task, run) for s, n in enumerate(per_stream)]
    proc, port = _spawn([__file__, "--serve", redis_url, run, json.dumps(reward)])
    try:
        wall, latencies, acks = asyncio.run(_drive(f"127.0.0.1:{port}", streams, args.inflight))
    finally:
        _stop(proc)
    unscorable = sum(1 for a in acks for r in a.rewards if math.isnan(r))
    not_scored = sum(1 for a in acks if a.status != pb.GroupAck.SCORED)
    return Result(name, n_groups * args.k, n_groups, wall, latencies, unscorable, not_scored)


# ------------------------------------------------------------------------------------------- main


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def _table(results: list[Result], args) -> str:
    head = (f"{'scenario':<44} {'completions':>11} {'groups':>6} {'wall s':>7} {'compl/s':>8} "
            f"{'p50 ms':>8} {'p99 ms':>8} {'unscorable':>10} {'not scored':>10}")
    lines = [f"reward service, {args.streams} streams x {args.inflight} groups in flight, K={args.k}", head,
             "-" * len(head)]
    for r in results:
        lines.append(f"{r.name:<44} {r.completions:>11} {r.groups:>6} {r.wall_s:>7.2f} "
                     f"{r.completions / r.wall_s:>8.0f} {_pct(r.latencies, 50) * 1e3:>8.1f} "
                     f"{_pct(r.latencies, 99) * 1e3:>8.1f} {r.unscorable:>10} {r.not_scored:>10}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--completions", type=int, default=10_000, help="completions in the default scenario")
    ap.add_argument("--streams", type=int, default=8, help="concurrent actor-like gRPC streams")
    ap.add_argument("--k", type=int, default=4, help="completions per group")
    ap.add_argument("--inflight", type=int, default=4, help="groups outstanding per stream")
    ap.add_argument("--judge-completions", type=int, default=10_000, help="completions in the judge scenario; 0 skips")
    ap.add_argument("--judge-delay", type=float, default=0.2, help="seconds the scripted judge sleeps per request")
    ap.add_argument("--judge-concurrency", type=int, default=128, help="reward.judge.max_concurrency")
    ap.add_argument("--serve", nargs=3, metavar=("REDIS_URL", "RUN_ID", "REWARD_JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(*args.serve)

    from services.common.redis_server import EmbeddedRedis

    results = []
    with tempfile.TemporaryDirectory(prefix="videorl-bench-") as tmp, EmbeddedRedis(Path(tmp)) as redis:
        results.append(run_scenario("default (mcq + answer_format)", redis.url, {}, "mcq", args.completions, args))
        if args.judge_completions:
            judge, judge_port = _spawn([str(JUDGE_SERVER), "--delay", str(args.judge_delay)])
            try:
                reward = {"tasks": {"route": [{"name": "format", "weight": 0.1},
                                              {"name": "judge", "rubric": "route", "gate": "format"}]},
                          "judge": {"base_url": f"http://127.0.0.1:{judge_port}/v1", "model": "scripted",
                                    "timeout_s": 10, "max_concurrency": args.judge_concurrency}}
                name = f"route: format + judge ({args.judge_delay * 1e3:.0f} ms/call, {args.judge_concurrency} conc.)"
                results.append(run_scenario(name, redis.url, reward, "route", args.judge_completions, args))
            finally:
                _stop(judge)
    print(_table(results, args))


if __name__ == "__main__":
    main()
