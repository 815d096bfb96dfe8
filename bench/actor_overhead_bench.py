"""Service overhead of a rollout actor: tokens/s of the actors inside the running system against raw vLLM offline
generation of the same prompts, and gRPC bytes and messages per group on the actor -> reward-service link.

Both sides run the default config (rlctl/configs/default.yaml: the embedded tiny Qwen2-VL, synthetic videos,
2 actors, K=4, 16 new tokens, batches of 2 prompts) on the same train prompts, after the same warm-up prompts:

- raw: one `vllm.LLM` per actor, in processes of their own, started together; each is built with the engine
  arguments of VLLMEngine.create, holds its share of the prompts' frames in memory and calls `generate` with the
  actor's sampling parameters (n=K, logprobs of the sampled tokens, vision tokens forbidden), prompts_per_batch
  prompts per call, as an actor takes them.
- system: `rlctl run`'s LocalRun with the learner off (embedded Redis, Ray, the reward server, the actors), so
  the actors compete with nothing but the services on their path for the 2 cores; the prompts are queued in Redis
  and the window runs from queueing them to the last scored group in the `groups` stream. Actor tokens come from
  each actor's `videorl_rollout_generated_tokens_total`, messages from the reward service's counters; bytes from
  a TCP relay put between the actors and the reward service (HTTP/2 + gRPC framing included, both directions).

Every service runs as a Ray actor with num_cpus=0, where Ray sets OMP_NUM_THREADS=1 unless it is set; this
script sets the same default before torch loads, so the raw engines get the threads an actor gets.

    export PATH=$(readlink -f .venv)/bin:$PATH
    python bench/actor_overhead_bench.py            # 192 timed prompts, ~3.5 min on 2 cores
    python bench/actor_overhead_bench.py --quick    # 48 timed prompts, ~3 min

bench/overlap_bench.py runs the same two measurements as part of its stage capacities and writes this script's
table too. Writes bench/results/actor_overhead.md next to the printed table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")   # as in a num_cpus=0 Ray actor (see the docstring)
os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import rlctl.local  # noqa: E402,F401 - sets the run's process environment (Ray on loopback, vLLM threads) first

OUT = ROOT / "bench" / "results"
DEFAULT_CONFIG = ROOT / "rlctl" / "configs" / "default.yaml"
ROLLOUT_TOKENS = "videorl_rollout_generated_tokens_total"


def load_default(overrides: list[str]):
    from services.common.config import load_config

    return load_config(DEFAULT_CONFIG, overrides)


def bench_prompts(train, n: int, tag: str) -> list[bytes]:
    """n serialized train prompts (rows in file order, wrapping), with ids unique to this bench and `tag`."""
    return [train[i % len(train)].to_prompt(f"{tag}-{i}-{train[i % len(train)].id}").SerializeToString()
            for i in range(n)]


# ------------------------------------------------------------------------------------------- raw vLLM


def raw_engine(cfg_json: str, model_dir: str, prompts_file: str, warmup: int) -> None:
    """Child process: one vLLM.LLM; warm up on the first `warmup` prompts, print READY, wait for a line on stdin,
    generate the rest prompts_per_batch at a time, print RESULT {tokens, groups, start, end}."""
    import numpy as np
    from transformers import AutoProcessor
    from vllm import LLM, SamplingParams

    from services.common.config import RunConfig
    from services.common.media import FrameCache
    from services.common.pb.videorl.v1 import rollout_pb2 as pb
    from services.common.prompts import chat_text, vision_token_ids

    cfg = RunConfig.model_validate_json(cfg_json).resolved()   # kv_cache_mib and the rest as an actor gets them
    r = cfg.rollout
    processor = AutoProcessor.from_pretrained(model_dir)
    frames = FrameCache(max_bytes=256 << 20)
    prompts = [pb.Prompt.FromString(bytes.fromhex(line)) for line in Path(prompts_file).read_text().split()]
    inputs = [{"prompt": chat_text(processor, p.question, list(p.options)),
               "multi_modal_data": {"video": np.asarray(frames.get_for_prompt(p, cfg.media))}} for p in prompts]
    # The engine arguments of VLLMEngine.create, for the offline LLM class.
    llm = LLM(model=model_dir, dtype="float32", seed=cfg.seed, enforce_eager=True, max_model_len=r.engine.max_model_len,
              kv_cache_memory_bytes=r.engine.kv_cache_mib << 20, limit_mm_per_prompt={"video": 1, "image": 0},
              max_num_seqs=max(cfg.group_size * r.prompts_per_batch, 8), disable_log_stats=True,
              distributed_executor_backend="uni")
    params = SamplingParams(n=cfg.group_size, temperature=r.temperature, max_tokens=r.max_new_tokens, logprobs=0,
                            logit_bias={i: -100.0 for i in vision_token_ids(processor)})

    def generate(batch: list[dict]) -> int:
        return sum(len(c.token_ids) for out in llm.generate(batch, params, use_tqdm=False) for c in out.outputs)

    step = r.prompts_per_batch
    for i in range(0, warmup, step):
        generate(inputs[i:min(i + step, warmup)])
    print("READY", flush=True)
    sys.stdin.readline()
    start, tokens = time.time(), 0
    for i in range(warmup, len(inputs), step):
        tokens += generate(inputs[i:i + step])
    end = time.time()
    print("RESULT " + json.dumps({"tokens": tokens, "groups": len(inputs) - warmup, "start": start, "end": end}),
          flush=True)


@dataclass
class GenResult:
    """One generation measurement: `units` engines or actors, the timed prompts' groups and tokens."""

    name: str
    units: int
    groups: int
    tokens: int
    wall_s: float
    per_unit_tps: list[float]               # tokens/s of each engine or actor over its own window
    extra: dict = field(default_factory=dict)

    @property
    def tps(self) -> float:
        return self.tokens / self.wall_s

    @property
    def groups_per_s(self) -> float:
        return self.groups / self.wall_s


def read_until(proc: subprocess.Popen, prefix: str) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    raise RuntimeError(f"child process {proc.args[1:2]} (pid {proc.pid}) exited before printing {prefix.strip()!r}")


def measure_raw(cfg, model_dir: Path, warm: list[bytes], timed: list[bytes], work: Path) -> GenResult:
    """num_actors raw engines in parallel, each on its share of the prompts (as the actors share them)."""
    n = cfg.rollout.num_actors
    procs = []
    try:
        for e in range(n):
            share = warm[e::n] + timed[e::n]
            path = work / f"raw-prompts-{e}.txt"
            path.write_text("\n".join(p.hex() for p in share))
            log = open(work / f"raw-engine-{e}.log", "w")  # noqa: SIM115 - owned by the child
            procs.append(subprocess.Popen(
                [sys.executable, __file__, "--raw-engine", cfg.model_dump_json(), str(model_dir), str(path),
                 str(len(warm[e::n]))], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                cwd=ROOT))
        for p in procs:
            read_until(p, "READY")
        for p in procs:   # all engines loaded and warm: start them together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(read_until(p, "RESULT ")) for p in procs]
        for p in procs:
            p.wait(60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    calls = sum(-(-r["groups"] // cfg.rollout.prompts_per_batch) for r in results)
    return GenResult(f"raw vLLM offline ({n} engines in parallel)", n, sum(r["groups"] for r in results),
                     sum(r["tokens"] for r in results), wall,
                     [r["tokens"] / (r["end"] - r["start"]) for r in results],
                     {"call_ms": sum(r["end"] - r["start"] for r in results) / calls * 1e3,
                      "per_call": cfg.rollout.prompts_per_batch})


# ------------------------------------------------------------------------------ the system, learner off


class WireCounter:
    """A TCP relay on loopback in front of `upstream` that counts the bytes passing each way."""

    def __init__(self, upstream: str):
        self.host, port = upstream.rsplit(":", 1)
        self.port = int(port)
        self.bytes = {"up": 0, "down": 0}   # up: actors -> reward service; down: acks and HTTP/2 control back
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(asyncio.start_server(self._relay, "127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="wire-counter")
        self.thread.start()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(self.host, self.port)
        await asyncio.gather(self._pipe(reader, up_w, "up"), self._pipe(up_r, writer, "down"),
                             return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: str) -> None:
        try:
            while data := await reader.read(1 << 16):
                self.bytes[way] += len(data)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def snapshot(self) -> dict[str, int]:
        return dict(self.bytes)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def wired_run_class():
    """LocalRun whose actors reach the reward service through a WireCounter (nothing else changes)."""
    from rlctl.local import LocalRun

    class WiredRun(LocalRun):
        wire: WireCounter | None = None

        def start_reward(self, port: int | None = None) -> None:
            super().start_reward(port)
            if self.wire is None:
                self.wire = WireCounter(self.reward_addr)
            self.reward_addr = self.wire.address

        def close(self) -> None:
            try:
                super().close()
            finally:
                if self.wire is not None:
                    self.wire.close()

    return WiredRun


def scrape_actors(control) -> dict[str, float]:
    """Each actor's generated-token counter, read from its exporter."""
    from rlctl.summary import scrape

    return {name.split(":", 1)[1]: scrape(addr, (ROLLOUT_TOKENS,)).get(ROLLOUT_TOKENS, 0.0)
            for name, addr in control.exporters().items() if name.startswith("rollout:")}


def scrape_generate(control) -> tuple[float, float]:
    """(sum of seconds, count) of every actor's engine.generate calls (one per group), from their histograms."""
    from rlctl.summary import scrape

    names = ("videorl_rollout_generate_seconds_sum", "videorl_rollout_generate_seconds_count")
    got = [scrape(addr, names) for name, addr in control.exporters().items() if name.startswith("rollout:")]
    return sum(g.get(names[0], 0.0) for g in got), sum(g.get(names[1], 0.0) for g in got)


def scrape_reward(control) -> dict[str, float]:
    from rlctl.summary import scrape

    return scrape(control.exporters()["reward"], ("videorl_reward_completions_total", "videorl_reward_groups_total"))


CPU_ROLES = (("VLLM::Worker", "engine workers (the model)"), ("VLLM::EngineCore", "engine schedulers"),
             ("ray::RolloutActor", "actor processes"), ("ray::RewardService", "reward service"),
             ("redis-server", "Redis"), ("ray", "Ray's own processes"))


def cpu_by_role() -> dict[str, float]:
    """CPU seconds used so far by every process of the run, summed per role (CPU_ROLES, by command line; this
    script's own process is "this script"). Two snapshots bracket a window."""
    import psutil

    out: dict[str, float] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
        cmd, times = " ".join(proc.info["cmdline"] or []), proc.info["cpu_times"]
        if times is None:
            continue
        role = "this script" if proc.info["pid"] == os.getpid() else next(
            (name for key, name in CPU_ROLES if key in cmd), None)
        if role:
            out[role] = out.get(role, 0.0) + times.user + times.system
    return out


def wait_for(what: str, ready, run, timeout_s: float = 600.0, poll_s: float = 0.02) -> float:
    """Poll `ready()` until true (checking the run's actors meanwhile); returns the time it became true."""
    deadline, checked = time.monotonic() + timeout_s, time.monotonic()
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout_s:.0f}s")
        if time.monotonic() - checked > 1.0:
            run.supervisor.check()   # an actor that died is replaced; one that never loads is an error
            checked = time.monotonic()
        time.sleep(poll_s)
    return time.perf_counter()


def measure_system(cfg, warm: list[bytes], timed: list[bytes], work: Path) -> tuple[GenResult, list[bytes]]:
    """The actors in the running system with the learner off; returns the measurement and every scored group
    (serialized ScoredGroups, warm-up included) for the stages measured alone."""
    from rich.console import Console

    from services.common.control import GROUPS

    cfg = cfg.model_copy(update={"run_dir": work / "system-gen", "run_id": "bench-gen"})
    run = wired_run_class()(cfg, Console(stderr=True, quiet=True), learner=False)
    try:
        control = run.start()
        n = cfg.rollout.num_actors
        wait_for("actors loading", lambda: sum(a.loaded_version >= 0 for a in control.actors()) >= n, run)
        for p in warm:
            control.add_prompt(p)
        wait_for("warm-up prompts scored", lambda: control.stream_len(GROUPS) >= len(warm), run)
        tokens0, reward0, wire0 = scrape_actors(control), scrape_reward(control), run.wire.snapshot()
        gen0, cpu0 = scrape_generate(control), cpu_by_role()
        t0 = time.perf_counter()
        for p in timed:
            control.add_prompt(p)
        t1 = wait_for("timed prompts scored", lambda: control.stream_len(GROUPS) >= len(warm) + len(timed), run)
        tokens1, reward1, wire1 = scrape_actors(control), scrape_reward(control), run.wire.snapshot()
        gen1, cpu1 = scrape_generate(control), cpu_by_role()
        groups = [f[b"group"] for _, f in control.r.xrange(control.key(GROUPS))]
        run.stop_actors()
    finally:
        run.close()
    wall, g = t1 - t0, len(timed)
    per_actor = {a: tokens1[a] - tokens0.get(a, 0.0) for a in tokens1}
    wire = {
        "messages_up": (reward1["videorl_reward_completions_total"] - reward0["videorl_reward_completions_total"]) / g,
        "messages_down": (reward1["videorl_reward_groups_total"] - reward0["videorl_reward_groups_total"]) / g,
        "bytes_up": (wire1["up"] - wire0["up"]) / g, "bytes_down": (wire1["down"] - wire0["down"]) / g,
    }
    call_s = (gen1[0] - gen0[0]) / max(1.0, gen1[1] - gen0[1])
    cores = {role: (cpu1[role] - cpu0.get(role, 0.0)) / wall for role in cpu1}
    return GenResult(f"actors in the system, learner off ({n} actors)", n, g, int(sum(per_actor.values())), wall,
                     [v / wall for v in per_actor.values()],
                     {"wire": wire, "call_ms": call_s * 1e3, "cores": cores}), groups


def payload_bytes(groups: list[bytes]) -> dict[str, float]:
    """Protobuf bytes per group of the messages an actor sends (K Completions, each carrying its prompt, as
    RolloutActor._rollout builds them) and gets back (one GroupAck), rebuilt from the recorded scored groups."""
    from services.common.pb.videorl.v1 import rollout_pb2 as pb

    up = down = 0
    for payload in groups:
        g = pb.ScoredGroup.FromString(payload)
        for c in g.completions:
            sent = pb.Completion()
            sent.CopyFrom(c)
            sent.prompt.CopyFrom(g.prompt)
            up += sent.ByteSize()
        down += pb.GroupAck(group_id=g.group_id, prompt_id=g.prompt_id, status=pb.GroupAck.SCORED,
                            rewards=list(g.rewards)).ByteSize()
    return {"payload_up": up / len(groups), "payload_down": down / len(groups)}


# ---------------------------------------------------------------------------------------- reporting


def overhead_table(results: list[GenResult], raw: GenResult) -> str:
    lines = ["| generation | engines / actors | groups | tokens | wall s | groups/s | tokens/s | tokens/s per engine "
             "or actor | / raw vLLM |", "|" + "---|" * 9]
    for r in results:
        per = " / ".join(f"{x:.0f}" for x in r.per_unit_tps)
        lines.append(f"| {r.name} | {r.units} | {r.groups} | {r.tokens} | {r.wall_s:.2f} | {r.groups_per_s:.2f} | "
                     f"{r.tps:.0f} | {per} | {r.tps / raw.tps:.2f} |")
    return "\n".join(lines)


def wire_table(system: GenResult, payload: dict[str, float], k: int) -> str:
    w = system.extra["wire"]
    return "\n".join([
        f"| per group of K={k} | actor -> reward service | reward service -> actor |", "|---|---|---|",
        f"| gRPC messages (reward service counters) | {w['messages_up']:.2f} Completion | "
        f"{w['messages_down']:.2f} GroupAck |",
        f"| protobuf payload bytes (recorded messages) | {payload['payload_up']:.0f} | {payload['payload_down']:.0f} |",
        f"| TCP bytes on the wire (relay; HTTP/2 + gRPC framing, control frames) | {w['bytes_up']:.0f} | "
        f"{w['bytes_down']:.0f} |"])


def cores_table(system: GenResult) -> str:
    """Cores each role of the learner-off run used in the timed window, busiest first."""
    cores = system.extra["cores"]
    rows = [f"| {role} | {c:.2f} |" for role, c in sorted(cores.items(), key=lambda kv: -kv[1])]
    return "\n".join(["| processes | cores used |", "|---|---|", *rows, f"| all | {sum(cores.values()):.2f} |"])


def overhead_markdown(table: str, wires: str, raw: GenResult, system: GenResult, script: str, quick: bool) -> str:
    return f"""Measured {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} CPU cores, no GPU
(`python bench/{script}{' --quick' if quick else ''}`; 1-min load average {os.getloadavg()[0]:.1f} at the end).
Default config (tiny Qwen2-VL, synthetic videos, 2 actors, K=4, 16 new tokens, 2 prompts per batch); the same
{system.groups} timed prompts on the raw and learner-off rows, after the same warm-up prompts. A full-loop row (when
present) counts the loop's own train prompts after its first 2 learner steps: there the actors also wait for the
feeder's next prompts (learner.prefetch_prompts bounds the prompts in flight), so it shows how busy they are kept,
not what they can do.

{table}

Actor in the system (learner off) vs raw vLLM offline: **{system.tps / raw.tps:.2f}x** the tokens/s
({system.tps:.0f} vs {raw.tps:.0f}). The system's window runs from queueing the prompts in Redis to the last scored
group in the `groups` stream, so it holds everything between the engine and the learner's input: Ray, the Redis
prompt stream (take, ack), frame loading through the actor's cache, the asyncio engine client, the gRPC stream, scoring
and the Redis write; the raw engines start warm with their frames in memory. The learner is off in that run so the
actors share the 2 cores only with the services on their own path. An actor's `engine.generate` call (one group)
took {system.extra['call_ms']:.0f} ms on average against {raw.extra['call_ms']:.0f} ms per raw `generate` call of
{raw.extra['per_call']} prompts. An actor keeps prompts_per_batch prompts in flight and refills a finished
one's slot at once, so its engine waits for no batch; what it lacks is CPU. In the window the run's processes
used these cores (of {os.cpu_count()}), from their CPU times:

{cores_table(system)}

gRPC traffic per group on the actor -> reward-service stream (timed window only):

{wires}

The prompt row travels with each of the K completions (the reward service stores it once per group); the TCP
figure counts every byte of the HTTP/2 connection through a relay between the actors and the service.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="48 timed prompts instead of 192")
    ap.add_argument("--prompts", type=int, default=None, help="timed prompts (default 192, --quick 48)")
    ap.add_argument("--raw-engine", nargs=4, metavar=("CFG", "MODEL", "PROMPTS", "WARMUP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.raw_engine:
        cfg_json, model, prompts, warmup = args.raw_engine
        return raw_engine(cfg_json, model, prompts, int(warmup))
    import tempfile

    from rich.console import Console

    from rlctl.assets import CACHE, prepare_assets

    cfg = load_default(["learner.eval_every=0"])
    assets = prepare_assets(cfg, Console(stderr=True))
    n = args.prompts or (48 if args.quick else 192)
    warm = bench_prompts(assets.train, 2 * cfg.rollout.num_actors * cfg.rollout.prompts_per_batch, "warm")
    timed = bench_prompts(assets.train, n, "timed")
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="bench-overhead-") as tmp:
        print("raw vLLM engines ...", file=sys.stderr, flush=True)
        raw = measure_raw(cfg, assets.model_dir, warm, timed, Path(tmp))
        print("the system, learner off ...", file=sys.stderr, flush=True)
        system, groups = measure_system(cfg, warm, timed, Path(tmp))
    table = overhead_table([raw, system], raw)
    wires = wire_table(system, payload_bytes(groups), cfg.group_size)
    print(table, cores_table(system), wires, sep="\n\n")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "actor_overhead.md").write_text(overhead_markdown(table, wires, raw, system, "actor_overhead_bench.py",
                                                             args.quick))


if __name__ == "__main__":
    main()
