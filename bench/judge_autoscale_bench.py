"""The self-hosted judge under load: Ray Serve adds a replica when the requests in flight stay above target and
removes it when the load ends (services/judge/serve.py, the tiny model's real vLLM engine on a local Ray).

Phases: idle (a few seconds, 1 replica), load (`--clients` threads, each sending chat completions back to back
through the official `openai` client, `--tokens` tokens each, EOS ignored) until a second replica RUNS and then
`--hold` seconds more, then idle again until the second replica is gone. Every second one row: seconds since the
start, phase, replicas by state (Serve's controller), requests in flight (the clients'), requests finished in that
second and their median latency. The table goes to stdout and bench/results/judge_autoscale.md, the curve to
bench/results/judge_autoscale.png.

    python bench/judge_autoscale_bench.py            # ~4-5 min on 2 busy cores: a second vLLM replica starts slowly
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rlctl.cluster  # noqa: E402,F401 - Ray's local environment (loopback, no auth) before ray is imported
from rlctl.cluster import ClusterTarget  # noqa: E402
from services.common.reward_config import JudgeServeConfig  # noqa: E402

RESULTS = ROOT / "bench" / "results"
NAME = "tiny-judge"


class Load:
    """Client threads that keep requests in flight while `on` is set; what finished, with latencies."""

    def __init__(self, base_url: str, clients: int, tokens: int):
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
        self.on, self.quit = threading.Event(), threading.Event()
        self.lock = threading.Lock()
        self.in_flight, self.done, self.errors = 0, [], []   # done: (finish time, latency s)
        self.tokens = tokens
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _client(self) -> None:
        while not self.quit.is_set():
            if not self.on.wait(0.2):
                continue
            with self.lock:
                self.in_flight += 1
            t0 = time.monotonic()
            try:
                self.client.chat.completions.create(
                    model=NAME, max_tokens=self.tokens, temperature=1.0, extra_body={"ignore_eos": True},
                    messages=[{"role": "user", "content": "Describe the route from the door to the window."}])
                with self.lock:
                    self.done.append((time.monotonic(), time.monotonic() - t0))
            except Exception as e:  # noqa: BLE001 - reported in the summary
                self.errors.append(repr(e))
            finally:
                with self.lock:
                    self.in_flight -= 1

    def window(self, since: float) -> tuple[int, float | None]:
        with self.lock:
            lat = [dt for t, dt in self.done if t >= since]
        return len(lat), (statistics.median(lat) if lat else None)

    def stop(self) -> None:
        self.on.clear()
        self.quit.set()
        for t in self.threads:
            t.join(300)


def run(args) -> list[dict]:
    import ray
    from ray import serve
    from rich.console import Console

    from rlctl.assets import embedded_model
    from services.judge import serve as judge_serve

    model = embedded_model(0, Console(stderr=True))
    ray.init(**ClusterTarget(None, None).ray_init_kwargs())
    cfg = JudgeServeConfig(model=model, min_replicas=1, max_replicas=2, target_ongoing_requests=args.target,
                           max_ongoing_requests=8, upscale_delay_s=args.upscale_delay,
                           downscale_delay_s=args.downscale_delay, num_cpus=0.5, dtype="float32",
                           max_model_len=1024, kv_cache_mib=32)
    rows: list[dict] = []
    try:
        t_start = time.monotonic()
        served = judge_serve.start(cfg, NAME, "cpu")
        print(f"judge up in {time.monotonic() - t_start:.0f}s at {served.base_url}", flush=True)
        load = Load(served.base_url, args.clients, args.tokens)
        t0, phase, scaled_at, upscaled = time.monotonic(), "idle", None, False
        while True:
            now = time.monotonic() - t0
            state = judge_serve.replicas()
            running = state.get("RUNNING", 0)
            if phase == "idle" and not upscaled and now >= args.idle:
                phase = "load"
                load.on.set()
            elif phase == "load" and running >= 2 and scaled_at is None:
                scaled_at, upscaled = now, True
            elif phase == "load" and scaled_at is not None and now - scaled_at >= args.hold:
                phase = "after"
                load.on.clear()
            n, p50 = load.window(t0 + now - 1.0)
            rows.append({"t": round(now), "phase": phase, "running": running,
                         "starting": state.get("STARTING", 0), "stopping": state.get("STOPPING", 0),
                         "in_flight": load.in_flight, "finished": n, "p50_s": p50})
            print(_line(rows[-1]), flush=True)
            if phase == "after" and running <= 1 and not state.get("STOPPING"):
                break
            if now > args.timeout:
                print(f"gave up after {args.timeout:.0f}s", flush=True)
                break
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0 - now)))
        load.stop()
        if load.errors:
            print(f"{len(load.errors)} requests failed, e.g. {load.errors[0]}")
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


HEADER = f"{'t s':>5} {'phase':<6} {'running':>7} {'starting':>8} {'stopping':>8} {'in flight':>9} " \
         f"{'done/s':>6} {'p50 s':>6}"


def _line(r: dict) -> str:
    p50 = f"{r['p50_s']:.2f}" if r["p50_s"] is not None else "-"
    return (f"{r['t']:>5} {r['phase']:<6} {r['running']:>7} {r['starting']:>8} {r['stopping']:>8} "
            f"{r['in_flight']:>9} {r['finished']:>6} {p50:>6}")


def summary(rows: list[dict]) -> list[str]:
    def first(cond):
        return next((r["t"] for r in rows if cond(r)), None)

    load_at = first(lambda r: r["phase"] == "load")
    start_at = first(lambda r: r["starting"] > 0)
    two_at = first(lambda r: r["running"] >= 2)
    after_at = first(lambda r: r["phase"] == "after")
    one_again = next((r["t"] for r in rows if r["phase"] == "after" and r["running"] <= 1), None)
    by_running = {k: [r["finished"] for r in rows if r["phase"] == "load" and r["running"] == k] for k in (1, 2)}
    rate = {k: (sum(v) / len(v) if v else None) for k, v in by_running.items()}
    return [f"load began at {load_at}s; second replica starting at {start_at}s, running at {two_at}s; load ended at "
            f"{after_at}s; back to one replica at {one_again}s",
            "requests/s under load: " + ", ".join(f"{k} replica(s) {v:.1f}" for k, v in rate.items()
                                                   if v is not None)]


def write(rows: list[dict], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(exist_ok=True)
    lines = ["# Judge autoscaling under load (`python bench/judge_autoscale_bench.py`)", "",
             f"{time.strftime('%Y-%m-%d %H:%M')}, {args.clients} clients x {args.tokens} tokens, target "
             f"{args.target} requests in flight per replica, upscale delay {args.upscale_delay}s, downscale delay "
             f"{args.downscale_delay}s; the tiny model on CPU.", "", *summary(rows), "", "```", HEADER,
             *(_line(r) for r in rows), "```", ""]
    (RESULTS / "judge_autoscale.md").write_text("\n".join(lines))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    t = [r["t"] for r in rows]
    ax.step(t, [r["running"] for r in rows], where="post", label="replicas running")
    ax.step(t, [r["in_flight"] for r in rows], where="post", label="requests in flight", alpha=0.6)
    ax.set_xlabel("seconds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "judge_autoscale.png", dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=3, help="client threads under load (target 1: 3 asks for 2+)")
    p.add_argument("--tokens", type=int, default=64, help="tokens per request (EOS ignored)")
    p.add_argument("--target", type=float, default=1.0, help="target_ongoing_requests")
    p.add_argument("--upscale-delay", type=float, default=1.0)
    p.add_argument("--downscale-delay", type=float, default=4.0)
    p.add_argument("--idle", type=float, default=5.0, help="seconds of idle before the load")
    p.add_argument("--hold", type=float, default=15.0, help="seconds of load once two replicas run")
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args()
    print(HEADER)
    rows = run(args)
    for line in summary(rows):
        print(line)
    write(rows, args)


if __name__ == "__main__":
    main()
