"""Where the loop's cores go: a running default loop (`rlctl run`'s LocalRun, learner on), after warm-up, in two
windows of `--seconds` each, both divided by the groups the learner trained in them.

- Window A, nothing attached: each process's CPU time from the kernel (user + system, every thread included: vLLM's
  and torch's OpenMP threads, gRPC's C-core threads, gloo), summed per role (bench/actor_overhead_bench.py CPU_ROLES
  + the learner): cores used and CPU ms per trained group.
- Window B, the main processes of each role sampled with py-spy (`--rate` per second, non-blocking: never paused;
  Ray's own processes and Redis are not sampled). Each sample's stack goes to the first CATEGORIES rule any of its
  frames matches, so a frame decode that calls into torch counts as frame decoding, not as the model. Threads that
  py-spy reports active while they are blocked in native code (WAITING: Ray's task loop, idle pool threads) are left
  out. A role's category shares, times its CPU ms per group from window A, say where its CPU goes per group; the
  samples cover only threads that hold a Python frame, so OpenMP workers count as their caller's category (the
  model). py-spy's own CPU and the loop's rate in window B are printed too: how much the sampling disturbed it.

    export PATH=$(readlink -f .venv)/bin:$PATH      # DeepSpeed's cached op is keyed to the venv's ninja
    python bench/profile_loop.py                    # two 30 s windows after 3 learner steps: about 2 min
    python bench/profile_loop.py --seconds 20 --set rollout.num_actors=1

Writes bench/results/profile_loop.md (the tables printed) and the collapsed stacks of each process, which
flame-graph tools read, to a temporary folder it names.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import actor_overhead_bench as ao  # noqa: E402 - sets the process environment before torch or ray load

ROLES = (("ray::LearnerDriver", "learner"), ("ray::LearnerRank", "learner"), *ao.CPU_ROLES)
SAMPLED = {"learner", "engine workers (the model)", "engine schedulers", "actor processes", "reward service"}
WARM_STEPS = 3   # learner steps before the windows: engines compiled, caches filled
# leaf frames of threads blocked in native code that py-spy still reports active: no CPU of their own
WAITING = re.compile(r"^(Worker\.main_loop \(ray/|Thread\.run \(threading\.py|_worker \(concurrent/futures/thread"
                     r"|Condition\.wait \(threading|Event\.wait \(threading)")
# (category, regex on one frame "function (file:line)"): the first rule any frame of a stack matches names it
CATEGORIES = [
    ("frames: decode + resize", r"services/common/media\.py|/av/|cv2|PIL/"),
    ("HF processor", r"transformers/(models/.*/(image|video)_processing|processing_utils|image_processing|video_proc)"),
    ("prompt rendering + tokenizer", r"services/common/prompts\.py|jinja2/|tokenization_utils|tokenizers"),
    ("vLLM input processing", r"vllm/(multimodal|inputs|v1/engine/(input_processor|processor))"),
    ("checkpoint + weights", r"services/common/(weights|checkpoint)\.py|safetensors|weight_wire|learner/publish"),
    ("protobuf", r"google/protobuf|_pb2\.py"),
    ("gRPC", r"grpc/"),
    ("Redis", r"redis/"),
    ("Prometheus metrics", r"prometheus_client"),
    ("vLLM queue busy-wait (sched_yield)", r"sched_yield|SpinCondition|acquire_read|memory_fence|vllm_plugin\.py"),
    ("vLLM IPC (zmq, msgpack)", r"zmq/|msgspec|vllm/v1/serial_utils|vllm/v1/engine/core_client"),
    ("vLLM scheduling", r"vllm/v1/core/"),
    ("vLLM sampling", r"vllm/v1/sample/"),
    ("vLLM output processing", r"vllm/v1/engine/(output_processor|detokenizer|logprobs)"),
    ("model forward (vLLM)", r"vllm/model_executor|vllm/v1/worker|vllm/attention|vllm/v1/attention"),
    ("DeepSpeed engine", r"deepspeed/runtime/(engine|zero|bf16|fp16)"),
    ("backward + optimizer", r"torch/autograd|torch/optim|torch/_tensor\.py.*backward"),
    ("learner loss + batching", r"services/learner/"),
    ("model forward (torch)", r"torch/nn/|transformers/models/"),
    ("Ray", r"/ray/"),
    ("asyncio + threads", r"asyncio/|threading\.py|selectors\.py|concurrent/"),
]
RULES = [(name, re.compile(rx)) for name, rx in CATEGORIES]


def role_of(cmd: str) -> str | None:
    return next((name for key, name in ROLES if key in cmd), None)


def run_processes() -> dict[int, str]:
    """pid -> role of every process of the run (this script's own is 'this script')."""
    import psutil

    out = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        role = "this script" if p.info["pid"] == os.getpid() else role_of(cmd)
        if role and "py-spy" not in cmd:
            out[p.info["pid"]] = role
    return out


def cpu_seconds(pids: dict[int, str]) -> dict[int, float]:
    import psutil

    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
        except psutil.Error:
            continue
    return out


def start_samplers(pids: dict[int, str], seconds: float, rate: int, folder: Path) -> list[subprocess.Popen]:
    spy = Path(sys.executable).with_name("py-spy")
    procs = []
    for pid, role in pids.items():
        if role not in SAMPLED:
            continue
        out = folder / f"{role.replace(' ', '_')}-{pid}.txt"
        procs.append(subprocess.Popen([str(spy), "record", "--pid", str(pid), "--rate", str(rate), "--duration",
                                       str(int(seconds)), "--format", "raw", "--nonblocking", "--output", str(out)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def categorize(stack: str) -> str:
    frames = stack.split(";")
    for name, rx in RULES:
        if any(rx.search(f) for f in frames):
            return name
    leaf = frames[-1]
    m = re.search(r"\(([^:)]*)", leaf)
    return f"other: {Path(m.group(1)).name if m else leaf[:40]}"


def read_stacks(folder: Path) -> dict[str, tuple[Counter, Counter]]:
    """role -> (samples per category, samples per leaf frame), over every process of that role."""
    out: dict[str, tuple[Counter, Counter]] = defaultdict(lambda: (Counter(), Counter()))
    for f in folder.glob("*.txt"):
        role = f.stem.rsplit("-", 1)[0].replace("_", " ")
        cats, leaves = out[role]
        for line in f.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit() or WAITING.match(stack.split(";")[-1]):
                continue
            cats[categorize(stack)] += int(count)
            leaves[stack.split(";")[-1]] += int(count)
    return out


def trained_groups(control) -> int:
    return sum(len(r.group_ids) for r in control.step_records())


def window(run, pids: dict[int, str], seconds: float, sample=None) -> dict:
    """Groups trained, wall time and CPU seconds per role over `seconds` (or while `sample()`'s samplers run), and
    the CPU the samplers used."""
    import resource

    g0, cpu0, t0 = trained_groups(run.control), cpu_seconds(pids), time.perf_counter()
    spy0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if sample is None:
        time.sleep(seconds)
    else:
        for s in sample():
            s.wait()
    spy1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    g1, cpu1, t1 = trained_groups(run.control), cpu_seconds(pids), time.perf_counter()
    cpu: dict[str, float] = defaultdict(float)
    for pid, role in pids.items():
        cpu[role] += cpu1.get(pid, cpu0.get(pid, 0.0)) - cpu0.get(pid, 0.0)
    spy = spy1.ru_utime + spy1.ru_stime - spy0.ru_utime - spy0.ru_stime
    return {"groups": g1 - g0, "wall": t1 - t0, "cpu": dict(cpu), "spy_cpu": spy}


def profile(args) -> dict:
    """Run the loop, wait WARM_STEPS steps, then window A (kernel CPU alone) and window B (py-spy attached)."""
    from rich.console import Console

    from rlctl.local import LocalRun

    work = Path(tempfile.mkdtemp(prefix="videorl-profile-"))
    cfg = ao.load_default([f"learner.steps={args.steps}", "learner.eval_every=0", "run_id=profile",
                           f"run_dir={work / 'run'}", *args.set])
    run = LocalRun(cfg, Console(stderr=True, quiet=True))
    try:
        run.start()
        ao.wait_for("the first learner steps", lambda: len(run.control.step_records()) >= WARM_STEPS, run)
        pids = run_processes()
        a = window(run, pids, args.seconds)
        b = window(run, pids, args.seconds, lambda: start_samplers(pids, args.seconds, args.rate, work))
        if len(run.control.step_records()) >= args.steps:
            raise SystemExit(f"the run ended inside the windows: raise --steps above {args.steps}")
    finally:
        run.close()
    return {"a": a, "b": b, "stacks": read_stacks(work), "folder": work, "rate": args.rate,
            "procs": Counter(pids.values())}


def tables(r: dict) -> str:
    a, b, rate = r["a"], r["b"], r["rate"]
    groups, wall = max(a["groups"], 1), a["wall"]
    lines = [f"Window A (nothing attached): {wall:.1f} s, {a['groups']} groups trained ({a['groups'] / wall:.2f}/s). "
             f"Window B (py-spy at {rate} Hz): {b['groups'] / b['wall']:.2f} groups/s, py-spy itself used "
             f"{b['spy_cpu'] / b['wall']:.2f} cores.", "",
             "| role | processes | cores | CPU ms / group |", "|---|---|---|---|"]
    roles = sorted(a["cpu"], key=lambda k: -a["cpu"][k])
    lines += [f"| {role} | {r['procs'][role]} | {a['cpu'][role] / wall:.2f} | {1e3 * a['cpu'][role] / groups:.1f} |"
              for role in roles]
    total = sum(a["cpu"].values())
    lines.append(f"| all | {sum(r['procs'].values())} | {total / wall:.2f} | {1e3 * total / groups:.1f} |")
    for role in roles:
        cats, leaves = r["stacks"].get(role, (Counter(), Counter()))
        n, ms = sum(cats.values()), 1e3 * a["cpu"][role] / groups
        if not n:
            continue
        lines += ["", f"**{role}** ({ms:.1f} CPU ms per group; {n} active samples)", "",
                  "| category | CPU ms / group | share |", "|---|---|---|"]
        lines += [f"| {c} | {ms * k / n:.1f} | {k / n:.0%} |" for c, k in cats.most_common(10)]
        lines += ["", "hottest leaf frames: " + "; ".join(f"`{f[:80]}` {k / n:.0%}" for f, k in leaves.most_common(5))]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0, help="each window's length (default 30)")
    ap.add_argument("--rate", type=int, default=25, help="py-spy samples per second per process (default 25)")
    ap.add_argument("--steps", type=int, default=1000, help="learner steps the run is given: more than the windows "
                                                            "take (default 1000; it is stopped after them)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override, repeatable")
    ap.add_argument("--out", type=Path, default=ao.OUT / "profile_loop.md")
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M")
    load = os.getloadavg()[0]
    r = profile(args)
    table = tables(r)
    print(table)
    head = (f"Measured {started} on {os.cpu_count()} CPU cores, no GPU (1-min load average {load:.1f} at the "
            f"start), `python bench/profile_loop.py {' '.join(sys.argv[1:])}`: the default config (tiny Qwen2-VL, "
            f"synthetic videos, 2 actors, K=4), held-out evaluation off, after {WARM_STEPS} learner steps.\n\n")
    args.out.write_text(head + table + "\n")
    print(f"\nwrote {args.out}; collapsed stacks in {r['folder']}", file=sys.stderr)


if __name__ == "__main__":
    main()
