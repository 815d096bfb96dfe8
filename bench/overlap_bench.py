"""Overlap: each stage's capacity measured alone against the full loop, with the default reward and with a slow
(200 ms per call) LLM judge. All stages run back to back in one command, on the default config
(rlctl/configs/default.yaml: embedded tiny Qwen2-VL, synthetic videos, 2 actors, K=4, 2 groups per learner step,
a version published every 4 steps) with held-out evaluation off (learner.eval_every=0: its greedy prompts are
generation work no stage below counts).

1. generation alone: raw vLLM offline, one `vllm.LLM` per actor in parallel, on the prompts and sampling parameters
   the actors use (bench/actor_overhead_bench.py); then the same prompts through the running system with the
   learner off (actor overhead, gRPC bytes and messages per group, and the scored groups the next stages replay);
2. learning alone: the real learner (LearnerDriver, DeepSpeed, publishing every 4 steps) in its own process on a
   Redis `groups` stream pre-filled with the recorded scored groups;
3. for each scenario (default reward or slow judge) x (learner.prefetch_prompts: 4 as configured, and 16):
   reward alone: the real reward service (its own process, gRPC + Redis) fed the recorded completions over one
   stream per actor, at most prefetch_prompts groups in flight (the loop's own bound on work in flight); then the
   full loop: `rlctl run`'s LocalRun with the learner, groups trained per second after the first 2 steps.
   The slow judge is the scripted OpenAI-compatible judge (tests/integration/judge_server.py, 200 ms per call,
   cache off so every group pays a call), as a weight-0 component (logged, not in the reward, so every loop
   trains on the same signal).

Achieved = full-loop groups trained/s; ideal overlap = min(capacities); lock-step = 1 / (1/gen + 1/reward + 1/learn),
one group going through the stages one after another.

    export PATH=$(readlink -f .venv)/bin:$PATH      # DeepSpeed's cached op is keyed to the venv's ninja
    python bench/overlap_bench.py                   # 192 prompts, 40-step loops: 13 min on 2 cores at load 4-9
    python bench/overlap_bench.py --quick           # 48 prompts, 14-step loops: 7 min at load 4-8
    # most of either is starting vLLM engines (12 of them); on a busy machine one start took minutes
    python bench/overlap_bench.py --prefetch 4      # only the configured in-flight bound (2 loops instead of 4)

Writes bench/results/overlap.md, overlap.png and actor_overhead.md next to the printed tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import actor_overhead_bench as ao  # noqa: E402 - sets the process environment before torch or ray load

ROOT, OUT = ao.ROOT, ao.OUT
JUDGE_SERVER = ROOT / "tests" / "integration" / "judge_server.py"
SKIP_STEPS = 2   # learner steps left out of a rate: the first ones include start-up and warm-up
T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


@dataclass
class Sizes:
    gen_prompts: int
    reward_groups: int
    judge_groups: int
    learn_steps: int
    loop_steps: int
    judge_delay_ms: int

    @classmethod
    def pick(cls, quick: bool, judge_delay_ms: int) -> Sizes:
        return cls(48, 200, 48, 12, 14, judge_delay_ms) if quick else cls(192, 800, 160, 40, 40, judge_delay_ms)


def judge_reward(base_url: str) -> dict:
    """The default components plus a weight-0 judge on every completion, cache off."""
    return {"components": [{"name": "mcq", "weight": 1.0}, {"name": "answer_format", "weight": 0.1},
                           {"name": "judge", "weight": 0.0, "rubric": "reference"}],
            "judge": {"base_url": base_url, "model": "scripted", "timeout_s": 10, "cache_size": 0}}


def with_reward(cfg, reward: dict):
    from services.common.config import RunConfig

    return RunConfig.model_validate({**cfg.model_dump(mode="json"), "reward": reward})


def spawn(args: list[str], prefix: str) -> tuple[subprocess.Popen, str]:
    """A child process that prints `prefix` + a value once ready (reward server, judge, learner)."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    return proc, ao.read_until(proc, prefix)


def stop(proc: subprocess.Popen) -> None:
    from services.common.processes import stop_process

    stop_process(proc, 10)


# --------------------------------------------------------------------------------------- reward alone


def serve_reward(cfg_json: str, redis_url: str) -> None:
    """Child process: the reward service exactly as `rlctl run` builds it; prints PORT n, serves until stopped."""
    from services.common.config import RunConfig
    from services.common.control import ControlPlane
    from services.reward.server import RewardService

    cfg = RunConfig.model_validate_json(cfg_json)
    ControlPlane(redis_url, cfg.run_id).ensure_streams()

    async def main() -> None:
        service = RewardService(cfg, redis_url)
        print(f"PORT {await service.start()}", flush=True)
        await service.wait()

    asyncio.run(main())


def replay(groups: list[bytes], n: int, tag: str, run_id: str):
    """n recorded scored groups (cycling), as fresh groups: new prompt ids, so nothing is a duplicate."""
    from services.common.pb.videorl.v1 import rollout_pb2 as pb

    out = []
    for i in range(n):
        g = pb.ScoredGroup.FromString(groups[i % len(groups)])
        g.prompt_id = g.prompt.prompt_id = f"{tag}{i}-{g.prompt_id}"
        g.group_id = f"{g.prompt_id}/v{g.policy_version}"
        g.run_id = run_id
        for c in g.completions:
            c.prompt_id, c.group_id, c.run_id = g.prompt_id, g.group_id, run_id
        out.append(g)
    return out


async def _drive_stream(address: str, groups, window: int, latencies: list[float]) -> int:
    import grpc

    from services.common.pb.videorl.v1 import rollout_pb2 as pb
    from services.common.pb.videorl.v1 import rollout_pb2_grpc as pb_grpc

    scored = 0
    async with grpc.aio.insecure_channel(address) as channel:
        call = pb_grpc.RewardServiceStub(channel).StreamCompletions()
        slots, sent_at = asyncio.Semaphore(window), {}

        async def read() -> None:
            nonlocal scored
            async for ack in call:
                latencies.append(time.perf_counter() - sent_at.pop(ack.group_id))
                scored += ack.status == pb.GroupAck.SCORED
                slots.release()

        reader = asyncio.create_task(read())
        for g in groups:
            await slots.acquire()
            sent_at[g.group_id] = time.perf_counter()
            for c in g.completions:   # as an actor sends them: each completion carries the prompt row
                c.prompt.CopyFrom(g.prompt)
                await call.write(c)
        for _ in range(window):
            await slots.acquire()
        await call.done_writing()
        await reader
    return scored


def reward_alone(cfg, redis_url: str, recorded: list[bytes], n: int, tag: str) -> dict:
    """Groups/s of the reward service alone on n replayed groups; num_actors streams, prefetch_prompts in flight."""
    streams = cfg.rollout.num_actors
    window = max(1, cfg.learner.prefetch_prompts // streams)
    proc, port = spawn([__file__, "--serve-reward", cfg.model_dump_json(), redis_url], "PORT ")
    groups, latencies = replay(recorded, n, tag, cfg.run_id), []

    async def drive() -> int:
        parts = [groups[s::streams] for s in range(streams)]
        return sum(await asyncio.gather(*(_drive_stream(f"127.0.0.1:{port}", p, window, latencies) for p in parts)))

    try:
        t0 = time.perf_counter()
        scored = asyncio.run(drive())
        wall = time.perf_counter() - t0
    finally:
        stop(proc)
    if scored != n:
        raise RuntimeError(f"reward alone: {scored} of {n} groups scored")
    return {"groups_per_s": n / wall, "groups": n, "wall_s": wall, "p50_ms": statistics.median(latencies) * 1e3,
            "in_flight": window * streams}


# -------------------------------------------------------------------------------------- learner alone


def learn_child(cfg_json: str, redis_url: str, model_dir: str) -> None:
    """Child process: the learner driver on the pre-filled stream; prints RECORDS <json> when its steps are done."""
    from services.common.config import RunConfig
    from services.learner.driver import LearnerDriver

    cfg = RunConfig.model_validate_json(cfg_json).resolved()   # as rlctl run gives it to the learner
    # No rows: every group it trains on is in the stream already (see learner_alone).
    records = LearnerDriver(cfg, redis_url, Path(model_dir), [], []).run()
    print("RECORDS " + json.dumps([{"step": r.step, "time": r.time, "groups": len(r.group_ids),
                                    "seconds": r.seconds} for r in records]), flush=True)


def steady_rate(records: list[dict]) -> tuple[float, int, float]:
    """(groups/s, groups, seconds) over the steps after the first SKIP_STEPS."""
    first, rest = records[SKIP_STEPS - 1], records[SKIP_STEPS:]
    groups = sum(r["groups"] for r in rest)
    wall = rest[-1]["time"] - first["time"]
    return groups / wall, groups, wall


def phases(records: list[dict]) -> dict[str, float]:
    """Median seconds per learner phase over the steps after the first SKIP_STEPS (publish: steps that published)."""
    rest = records[SKIP_STEPS:]
    names = ("wait", "prepare", "train", "publish")
    return {p: statistics.median([r["seconds"][p] for r in rest if p in r["seconds"]] or [0.0]) for p in names}


def learner_alone(cfg, redis_url: str, model_dir: Path, recorded: list[bytes], steps: int, work: Path) -> dict:
    from services.common.control import ControlPlane
    from services.common.weights import manifest_for_dir

    # Recorded groups are all version 0; without this bound the learner would drop them as stale after 4 versions.
    cfg = ao.load_default(["learner.eval_every=0", f"learner.steps={steps}", "learner.max_staleness=1000000",
                           "run_id=bench-learn", f"run_dir={work / 'learn'}"])
    control = ControlPlane(redis_url, cfg.run_id)
    control.ensure_streams()
    control.publish_version(manifest_for_dir(model_dir, version=0))
    # Two steps' worth more than it trains on: the stream never runs low enough for the feeder to queue prompts.
    prefill = (steps + 2) * cfg.learner.groups_per_step
    for g in replay(recorded, prefill, "learn", cfg.run_id):
        control.write_group(g.prompt_id, g.SerializeToString(), len(g.completions), held_out=False)
    proc, out = spawn([__file__, "--learn", cfg.model_dump_json(), redis_url, str(model_dir)], "RECORDS ")
    proc.wait(60)
    records = json.loads(out)
    rate, groups, wall = steady_rate(records)
    return {"groups_per_s": rate, "groups": groups, "wall_s": wall, "phases": phases(records), "prefill": prefill}


# ------------------------------------------------------------------------------------------ full loop


def full_loop(cfg, steps: int, work: Path, name: str, label: str) -> dict:
    """LocalRun with the learner (as `rlctl run`); groups trained per second after the first SKIP_STEPS steps, and
    the actors' tokens/s over the same stretch (token counters read when that stretch starts and ends)."""
    from rich.console import Console

    from rlctl.local import LocalRun

    cfg = cfg.model_copy(update={"learner": cfg.learner.model_copy(update={"steps": steps}),
                                 "run_id": f"bench-{name}", "run_dir": work / name})
    run = LocalRun(cfg, Console(stderr=True, quiet=True))
    marks: dict[str, tuple[float, dict]] = {}

    def mark() -> tuple[float, dict, float]:
        scored = ao.scrape_reward(run.control)["videorl_reward_groups_total"]
        return time.perf_counter(), ao.scrape_actors(run.control), scored

    def tick() -> None:
        if "start" not in marks and len(run.control.step_records()) >= SKIP_STEPS:
            marks["start"] = mark()

    try:
        run.start()
        records = run.wait(on_tick=tick)
        end = mark()
        run.stop_actors()
    finally:
        run.close()
    staleness = max(r.staleness_max for r in records)
    records = [{"step": r.step, "time": r.time, "groups": len(r.group_ids), "seconds": r.seconds} for r in records]
    rate, groups, wall = steady_rate(records)
    (t0, tok0, g0), (t1, tok1, g1) = marks["start"], end
    tokens = {a: tok1[a] - tok0.get(a, 0.0) for a in tok1}
    gen = ao.GenResult(f"actors in the full loop, learner on, {label} ({len(tokens)} actors)", len(tokens),
                       int(g1 - g0), int(sum(tokens.values())), t1 - t0, [v / (t1 - t0) for v in tokens.values()])
    return {"groups_per_s": rate, "groups": groups, "wall_s": wall, "gen": gen, "phases": phases(records),
            "staleness": staleness}


# ------------------------------------------------------------------------------------------ reporting


@dataclass
class Scenario:
    """One full-loop configuration: a reward (default or with the judge) and the loop's in-flight bound."""

    judge: bool
    prefetch: int
    reward: dict | None = None    # reward alone, at this in-flight bound
    loop: dict | None = None      # the full loop

    @property
    def name(self) -> str:
        return f"{'+ slow judge' if self.judge else 'default reward'}, prefetch {self.prefetch}"

    @property
    def key(self) -> str:
        return f"{'judge' if self.judge else 'default'}-p{self.prefetch}"


def lock_step(gen: float, reward: float, learn: float) -> float:
    return 1 / (1 / gen + 1 / reward + 1 / learn)


def rates(sc: Scenario, stages: dict) -> tuple[float, float, float, float]:
    """(generate, reward, learn, full loop) groups/s of a scenario."""
    return (stages["raw"].groups_per_s, sc.reward["groups_per_s"], stages["learn"]["groups_per_s"],
            sc.loop["groups_per_s"])


def overlap_table(scenarios: list[Scenario], stages: dict) -> str:
    lines = ["| scenario | generate alone g/s | reward alone g/s | learn alone g/s | min (ideal overlap) g/s | "
             "lock-step g/s | full loop g/s | full / min | full / lock-step |", "|" + "---|" * 9]
    for sc in scenarios:
        gen, reward, learn, loop = rates(sc, stages)
        ideal, lock = min(gen, reward, learn), lock_step(gen, reward, learn)
        lines.append(f"| {sc.name} | {gen:.2f} | {reward:.2f} | {learn:.2f} | {ideal:.2f} | {lock:.2f} | {loop:.2f} | "
                     f"{loop / ideal:.2f} | {loop / lock:.2f} |")
    return "\n".join(lines)


def phase_table(scenarios: list[Scenario], stages: dict) -> str:
    lines = ["| learner, median s per step | wait | prepare | train | publish (every 4th step) | max staleness "
             "(versions) | reward alone p50 ms per group |", "|---|---|---|---|---|---|---|"]
    rows = [("learn alone (stream pre-filled)", stages["learn"]["phases"], "", "")]
    rows += [(f"full loop, {sc.name}", sc.loop["phases"], sc.loop["staleness"], f"{sc.reward['p50_ms']:.1f}")
             for sc in scenarios]
    for name, p, stale, p50 in rows:
        lines.append(f"| {name} | {p['wait']:.3f} | {p['prepare']:.3f} | {p['train']:.3f} | {p['publish']:.3f} | "
                     f"{stale} | {p50} |")
    return "\n".join(lines)


def plot(scenarios: list[Scenario], stages: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["generate alone", "reward alone", "learn alone", "min (ideal)", "lock-step", "full loop"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(scenarios)
    for i, sc in enumerate(scenarios):
        gen, reward, learn, loop = rates(sc, stages)
        vals = [gen, reward, learn, min(gen, reward, learn), lock_step(gen, reward, learn), loop]
        xs = [j + (i - (len(scenarios) - 1) / 2) * width for j in range(len(labels))]
        ax.bar_label(ax.bar(xs, vals, width, label=sc.name), fmt="%.1f", fontsize=6)
    ax.set_yscale("log")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("groups of K per second (log)")
    ax.set_title("stage capacities alone vs the full loop (default config, 2-core CPU)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def findings(scenarios: list[Scenario], stages: dict) -> str:
    """The closing lines: achieved vs ideal per scenario, and what the judge cost the loop at each bound."""
    out = []
    for sc in scenarios:
        gen, reward, learn, loop = rates(sc, stages)
        out.append(f"- {sc.name}: the loop trains {loop:.2f} g/s = **{loop / min(gen, reward, learn):.2f} of "
                   f"min(capacities)** and {loop / lock_step(gen, reward, learn):.2f}x the lock-step rate.")
    by_key = {sc.key: sc for sc in scenarios}
    for sc in scenarios:
        base = by_key.get(f"default-p{sc.prefetch}")
        if not sc.judge or base is None:
            continue
        gen, reward, learn, loop = rates(sc, stages)
        _, base_reward, _, base_loop = rates(base, stages)
        lock_added = 1 / lock_step(gen, reward, learn) - 1 / lock_step(gen, base_reward, learn)
        loop_added = 1 / loop - 1 / base_loop
        out.append(f"- slow judge at prefetch {sc.prefetch}: lock-step time per group grows by "
                   f"{lock_added * 1e3:.0f} ms, the loop's by {loop_added * 1e3:.0f} ms "
                   f"(loop {loop / base_loop:.2f}x the default reward's, {loop:.2f} vs {base_loop:.2f} g/s).")
    return "\n".join(out)


def markdown(scenarios: list[Scenario], stages: dict, sizes: Sizes, quick: bool) -> str:
    first = scenarios[0].reward
    return f"""Measured {time.strftime('%Y-%m-%d %H:%M')} on 2 CPU cores, no GPU, every stage back to back in one
command (`python bench/overlap_bench.py{' --quick' if quick else ''}`; 1-min load average {stages['load'][0]:.1f} at
the start, {stages['load'][1]:.1f} at the end). Default config (tiny Qwen2-VL, synthetic
videos, 2 actors, K=4, 16 new tokens, 2 groups per learner step, a version every 4 steps), held-out evaluation off;
g/s = groups of K completions per second. `prefetch` is learner.prefetch_prompts, the loop's bound on prompts in
flight (queued, generating, being scored, or scored and not yet trained on); the default config has 4.

{overlap_table(scenarios, stages)}

{findings(scenarios, stages)}

How each number was measured (`bench/overlap_bench.py` says more):

- generate alone: raw vLLM offline (`vllm.LLM`, the engine arguments of the actors' engine), one engine per actor in
  parallel, {sizes.gen_prompts} prompts after a warm-up, the actors' sampling parameters and batches
  ({stages['raw'].tps:.0f} tokens/s). The same prompts through the running system with the learner off give
  {stages['system'].groups_per_s:.2f} g/s (bench/results/actor_overhead.md);
- reward alone: the reward service in its own process (gRPC + Redis) fed {sizes.reward_groups} recorded groups
  ({sizes.judge_groups} with the judge), at most `prefetch` groups in flight over one stream per actor (the loop
  never has more in flight); p50 per group {first['p50_ms']:.1f} ms with the default reward;
- learn alone: the learner (DeepSpeed ZeRO-2, publishing every 4 steps) in its own process on a Redis stream
  pre-filled with {stages['learn']['prefill']} recorded groups, {sizes.learn_steps} steps;
- full loop: `rlctl run`'s LocalRun with the learner, {sizes.loop_steps} steps; every rate leaves out the first
  {SKIP_STEPS} learner steps (start-up, warm-up);
- slow judge: the scripted judge (tests/integration/judge_server.py) answering in {sizes.judge_delay_ms} ms, as a
  weight-0 component (computed for every completion, not in the reward: both loops train on the same signal) with
  its cache off, so every group waits for at least one call.

{phase_table(scenarios, stages)}

`wait` is the learner waiting for scored groups; staleness is the largest version gap the learner saw in a step
(max_staleness is 4). All services share the same 2 cores: a stage measured alone has them to itself, while in the
loop generation, scoring and learning take turns on them, so min(capacities) is an upper bound the loop cannot
reach on this machine. learner.prefetch_prompts bounds the prompts in flight: with 4 (two learner steps' worth) a
group's whole trip (queue, generation, scoring, waiting for the learner) has to fit in about two learner steps or
the learner waits, so a slow judge's latency lands on the loop; with 16 in flight there is room to hide it, at the
price of groups a few versions older.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer prompts, groups and steps")
    ap.add_argument("--judge-delay", type=float, default=0.2, help="seconds the scripted judge takes per call")
    ap.add_argument("--prefetch", default="4,16", help="learner.prefetch_prompts of the full loops, comma-separated")
    ap.add_argument("--serve-reward", nargs=2, metavar=("CFG", "REDIS"), help=argparse.SUPPRESS)
    ap.add_argument("--learn", nargs=3, metavar=("CFG", "REDIS", "MODEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_reward:
        return serve_reward(*args.serve_reward)
    if args.learn:
        return learn_child(*args.learn)
    sizes = Sizes.pick(args.quick, round(args.judge_delay * 1e3))
    prefetch = [int(p) for p in args.prefetch.split(",")]
    scenarios = [Scenario(judge, p) for judge in (False, True) for p in prefetch]
    stages = run(scenarios, sizes, args.judge_delay)
    report(scenarios, stages, sizes, args.quick)


def run(scenarios: list[Scenario], sizes: Sizes, judge_delay: float) -> dict:
    from rich.console import Console

    from rlctl.assets import CACHE, prepare_assets
    from services.common.redis_server import EmbeddedRedis

    cfg = ao.load_default(["learner.eval_every=0"])
    assets = prepare_assets(cfg, Console(stderr=True))
    r = cfg.rollout
    warm = ao.bench_prompts(assets.train, 2 * r.num_actors * r.prompts_per_batch, "warm")
    timed = ao.bench_prompts(assets.train, sizes.gen_prompts, "timed")
    stages: dict = {"k": cfg.group_size, "load": [os.getloadavg()[0]]}
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="bench-overlap-") as tmp:
        work = Path(tmp)
        say("generation alone: raw vLLM engines")
        stages["raw"] = ao.measure_raw(cfg, assets.model_dir, warm, timed, work)
        say("generation in the system, learner off")
        stages["system"], recorded = ao.measure_system(cfg, warm, timed, work)
        stages["payload"] = ao.payload_bytes(recorded)
        with EmbeddedRedis(work / "redis-alone") as redis:
            say("learner alone")
            stages["learn"] = learner_alone(cfg, redis.url, assets.model_dir, recorded, sizes.learn_steps, work)
            judge, port = spawn([str(JUDGE_SERVER), "--delay", str(judge_delay)], "PORT ")
            try:
                for sc in scenarios:
                    sc_cfg = ao.load_default(["learner.eval_every=0", f"learner.prefetch_prompts={sc.prefetch}"])
                    if sc.judge:
                        sc_cfg = with_reward(sc_cfg, judge_reward(f"http://127.0.0.1:{port}/v1"))
                    say(f"reward alone, {sc.name}")
                    sc.reward = reward_alone(sc_cfg.model_copy(update={"run_id": f"bench-reward-{sc.key}"}),
                                             redis.url, recorded, sizes.judge_groups if sc.judge else
                                             sizes.reward_groups, sc.key)
                    say(f"full loop, {sc.name}")
                    sc.loop = full_loop(sc_cfg, sizes.loop_steps, work, f"loop-{sc.key}", sc.name)
            finally:
                stop(judge)
    stages["load"].append(os.getloadavg()[0])
    say("done")
    return stages


def report(scenarios: list[Scenario], stages: dict, sizes: Sizes, quick: bool) -> None:
    raw, system = stages["raw"], stages["system"]
    loops = [sc.loop["gen"] for sc in scenarios if not sc.judge]
    gens = ao.overhead_table([raw, system, *loops], raw)
    wires = ao.wire_table(system, stages["payload"], stages["k"])
    print(overlap_table(scenarios, stages), findings(scenarios, stages), phase_table(scenarios, stages), gens, wires,
          sep="\n\n")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "overlap.md").write_text(markdown(scenarios, stages, sizes, quick))
    (OUT / "actor_overhead.md").write_text(ao.overhead_markdown(gens, wires, raw, system, "overlap_bench.py", quick))
    plot(scenarios, stages, OUT / "overlap.png")


if __name__ == "__main__":
    main()
