"""The reward service flooded by many concurrent actor-like streams: memory stays bounded, backpressure is reported.

Starts a real redis-server, the scripted judge (tests/integration/judge_server.py; every request sleeps
`--judge-delay` s, so scoring is the slow part and work piles up) and the reward service as its own process
(`python -m services.reward`, the Deployment's command) on loopback. Then, for each stream count S, S gRPC streams
(one channel each, like S rollout actors) write all their groups as fast as gRPC lets them, never waiting for acks:
only the service's backpressure (it stops reading, gRPC flow control stops the writes) holds them back. Completions
are large (8,192 prompt and 1,024 completion token ids with log-probs, ~30 KB on the wire), so memory that grew with
the load would show. Every 50 ms the service's RSS (/proc/PID/status) and its /metrics are read.

Table columns (one row per cap and stream count, each on a fresh service process): group latency is first
completion written -> ack; idle RSS is VmRSS once the service serves, peak RSS its VmHWM (or a larger sampled VmRSS);
held peak is the most completion slots held at once (videorl_reward_held_completions_peak_count) against the cap,
reward.max_held_completions; pauses and pause s are videorl_reward_backpressure_{pauses,seconds}_total{limit=service}
(pause seconds are summed over streams).

    python bench/reward_load_bench.py                          # streams 4, 40, 80 at cap 256; ~1 min on 2 busy cores
    python bench/reward_load_bench.py --cap 256 1048576        # and without a bound in practice, for comparison

tests/integration/test_reward_load.py drives the same code (ServiceProcess, flood) with assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.common.pb.videorl.v1 import rollout_pb2 as pb  # noqa: E402
from services.common.pb.videorl.v1 import rollout_pb2_grpc as pb_grpc  # noqa: E402
from services.common.processes import free_port, stop_process  # noqa: E402

JUDGE_SERVER = ROOT / "tests" / "integration" / "judge_server.py"
K = 4
PROMPT_TOKENS, COMPLETION_TOKENS = 8192, 1024


# ------------------------------------------------------------------------------------------ the service


class ServiceProcess:
    """`python -m services.reward` with the judge as its only reward component, stopped by pid (SIGTERM)."""

    def __init__(self, workdir: Path, redis_url: str, judge_url: str, max_held_completions: int,
                 judge_concurrency: int = 16):
        self.run_id = f"load-{uuid.uuid4().hex[:8]}"
        self.grpc_port, self.metrics_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.grpc_port}"
        self.log = workdir / f"{self.run_id}.log"
        config = workdir / f"{self.run_id}.yaml"
        config.write_text(
            f"run_id: {self.run_id}\nrun_dir: {workdir / self.run_id}\nreward:\n  port: {self.grpc_port}\n"
            f"  max_held_completions: {max_held_completions}\n"
            "  components: [{name: judge, rubric: reference}]\n"
            f"  judge: {{base_url: '{judge_url}', model: scripted, timeout_s: 30, retries: 0, "
            f"max_concurrency: {judge_concurrency}, cache_size: 0}}\n")
        env = {**os.environ, "VIDEORL_REDIS_URL": redis_url, "VIDEORL_METRICS_HOST": "127.0.0.1",
               "VIDEORL_METRICS_PORT": str(self.metrics_port)}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.reward", str(config)], cwd=ROOT, env=env,
                                         stdout=out, stderr=subprocess.STDOUT)

    def wait_serving(self, timeout_s: float = 60.0) -> ServiceProcess:
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"reward service exited with {self.proc.returncode}:\n{self.log.read_text()}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service="videorl.v1.RewardService"), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"reward service not SERVING after {timeout_s}s:\n{self.log.read_text()}")
                time.sleep(0.2)

    def metrics(self) -> dict[str, float]:
        """Every reward sample of /metrics, keyed `name` or `name{label=value}` (one label at most here)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name.startswith("videorl_reward_") and "component" not in s.labels:
                    out[s.name + "".join(f"{{{k}={v}}}" for k, v in s.labels.items())] = s.value
        return out

    def memory(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the service process, bytes."""
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024

    def stop(self) -> None:
        stop_process(self.proc, term_timeout_s=30)


def start_judge(delay_s: float) -> tuple[subprocess.Popen, str]:
    """The scripted judge sleeping `delay_s` per request: (process, base URL)."""
    proc = subprocess.Popen([sys.executable, str(JUDGE_SERVER), "--port", "0", "--delay", str(delay_s)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        stop_process(proc)
        raise RuntimeError(f"judge server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}/v1"


# ---------------------------------------------------------------------------------------------- clients


def completion_template() -> pb.Completion:
    """One large completion (~30 KB serialized); ids, text and question are set per group."""
    return pb.Completion(run_id="load", sample_index=0, group_size=K, policy_version=1,
                         prompt_token_ids=[(i * 7919) % 15000 for i in range(PROMPT_TOKENS)],
                         completion_token_ids=[(i * 104729) % 15000 for i in range(COMPLETION_TOKENS)],
                         logprobs=[-0.5 - (i % 7) / 10 for i in range(COMPLETION_TOKENS)], finish_reason="stop",
                         prompt=pb.Prompt(task="route", answer="turn left at the red door", split="train",
                                          video_uri="/videos/v.mp4"))


def group(template: pb.Completion, tag: str, stream: int, g: int) -> list[pb.Completion]:
    prompt_id = f"{tag}-s{stream}-g{g}"
    out = []
    for i in range(K):
        c = pb.Completion()
        c.CopyFrom(template)
        c.prompt_id, c.group_id, c.sample_index, c.actor_id = prompt_id, f"{prompt_id}/v1", i, f"load-{stream}"
        c.prompt.prompt_id, c.prompt.question = prompt_id, f"Which way back? ({prompt_id})"
        c.text = f"<answer>{'turn left at the red door' if i % 2 else 'go right'} ({prompt_id}.{i})</answer>"
        out.append(c)
    return out


@dataclass
class Phase:
    streams: int
    groups: int                              # sent
    wall_s: float
    latencies: list[float]                   # per acked group, s
    acks: dict[str, list[int]] = field(default_factory=dict)   # prompt id -> statuses acked


async def _stream(address: str, template: pb.Completion, tag: str, stream: int, n_groups: int, phase: Phase) -> None:
    """Write every group at once (no waiting for acks), read acks alongside."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = pb_grpc.RewardServiceStub(channel).StreamCompletions()
        sent_at: dict[str, float] = {}

        async def read() -> None:
            async for ack in call:
                phase.latencies.append(time.perf_counter() - sent_at.pop(ack.group_id))
                phase.acks.setdefault(ack.prompt_id, []).append(ack.status)

        reader = asyncio.create_task(read())
        for g in range(n_groups):
            completions = group(template, tag, stream, g)
            sent_at[completions[0].group_id] = time.perf_counter()
            for c in completions:
                await call.write(c)   # blocks while the service does not read this stream
        await call.done_writing()
        await reader


def flood(address: str, streams: int, groups_per_stream: int, tag: str) -> Phase:
    template = completion_template()
    phase = Phase(streams, streams * groups_per_stream, 0.0, [])

    async def main() -> None:
        await asyncio.gather(*(_stream(address, template, tag, s, groups_per_stream, phase) for s in range(streams)))

    t0 = time.perf_counter()
    asyncio.run(main())
    phase.wall_s = time.perf_counter() - t0
    return phase


class Sampler:
    """Reads the service's memory and metrics every `period_s` in a thread while a phase runs: the largest values."""

    def __init__(self, service: ServiceProcess, period_s: float = 0.05):
        self.service, self.period_s = service, period_s
        self.max_rss = self.max_held = self.max_streams = self.max_paused = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            m = self.service.metrics()
            self.max_rss = max(self.max_rss, self.service.memory()[0])
            self.max_held = max(self.max_held, m["videorl_reward_held_completions_count"])
            self.max_streams = max(self.max_streams, m["videorl_reward_streams_open_count"])
            self.max_paused = max(self.max_paused, m["videorl_reward_streams_paused_count{limit=service}"])
            if self._stop.wait(self.period_s):
                return


# ----------------------------------------------------------------------------------------------- main


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, nargs="+", default=[4, 40, 80], help="stream counts, one row each")
    ap.add_argument("--groups", type=int, default=8, help="groups of K=4 each stream sends")
    ap.add_argument("--cap", type=int, nargs="+", default=[256],
                    help="reward.max_held_completions, one set of rows each")
    ap.add_argument("--judge-delay", type=float, default=0.02, help="seconds the scripted judge sleeps per request")
    ap.add_argument("--judge-concurrency", type=int, default=16, help="reward.judge.max_concurrency")
    args = ap.parse_args()

    from services.common.redis_server import EmbeddedRedis

    wire = group(completion_template(), "x", 0, 0)[0].ByteSize()
    head = (f"{'cap':>7} {'streams':>7} {'completions':>11} {'wall s':>7} {'compl/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'idle RSS MB':>11} {'peak RSS MB':>11} {'held peak':>9} {'pauses':>7} {'pause s':>8}")
    lines = [f"reward service flooded: K={K}, {args.groups} groups per stream, {wire / 1024:.0f} KiB per completion, "
             f"judge {args.judge_delay * 1e3:.0f} ms x {args.judge_concurrency} in flight", head, "-" * len(head)]
    judge, judge_url = start_judge(args.judge_delay)
    try:
        with tempfile.TemporaryDirectory(prefix="videorl-load-") as tmp, EmbeddedRedis(Path(tmp) / "redis") as redis:
            for cap in args.cap:
                for streams in args.streams:
                    lines.append(_row(Path(tmp), redis.url, judge_url, cap, streams, args))
                    print(lines[-1], flush=True)
    finally:
        stop_process(judge)
    print("\n".join(lines))


def _row(workdir: Path, redis_url: str, judge_url: str, cap: int, streams: int, args) -> str:
    service = ServiceProcess(workdir, redis_url, judge_url, cap, args.judge_concurrency)
    try:
        service.wait_serving()
        idle_rss = service.memory()[0]
        with Sampler(service) as sampled:
            phase = flood(service.address, streams, args.groups, f"b{cap}-{streams}")
        m = service.metrics()
        peak_rss = max(service.memory()[1], sampled.max_rss)   # VmHWM is updated lazily
    finally:
        service.stop()
    n = phase.groups * K
    return (f"{cap:>7} {streams:>7} {n:>11} {phase.wall_s:>7.2f} {n / phase.wall_s:>8.0f} "
            f"{_pct(phase.latencies, 50) * 1e3:>8.0f} {_pct(phase.latencies, 99) * 1e3:>8.0f} "
            f"{idle_rss / 2**20:>11.0f} {peak_rss / 2**20:>11.0f} "
            f"{m['videorl_reward_held_completions_peak_count']:>9.0f} "
            f"{m['videorl_reward_backpressure_pauses_total{limit=service}']:>7.0f} "
            f"{m['videorl_reward_backpressure_seconds_total{limit=service}']:>8.1f}")


if __name__ == "__main__":
    main()
