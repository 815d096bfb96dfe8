"""Learning demonstration: train the embedded tiny Qwen2-VL on the synthetic suite with the real loop, then
print held-out accuracy per task against learner steps and wall time, and plot it.

    .venv/bin/python bench/learning_curve.py             # stage 1 learn.yaml, then stage 2 learn-camera.yaml
    .venv/bin/python bench/learning_curve.py --no-then   # stage 1 only (direction)
    .venv/bin/python bench/learning_curve.py --stats runs/X/stats.jsonl --stats runs/X-stage2/stats.jsonl

Stage 1 trains the direction task from the warm-started model; stage 2 starts from stage 1's final weights and
trains direction and camera ego-motion together (rlctl/configs/learn-camera.yaml says why). Steps and wall time
run on across the stages; wall time counts from the command's start (model build, rendering, engine starts and
the second stage's start included).

Accuracy is the mean, over the held-out split's rows and their K samples, of the task's accuracy component
(the first component of its reward list, e.g. `mcq`); every evaluation round feeds the whole held-out split.
Writes bench/results/learning_curve.png and .md next to the printed table.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"


def eval_points(stats: Path, start: float | None = None) -> tuple[list[dict], float]:
    """One point per completed evaluation round: step, wall seconds since `start` (the command's start; else the
    first learner step), accuracy per task."""
    from services.common.records import read_stats

    recs = read_stats(stats)
    if not recs:
        raise click.ClickException(f"{stats}: no learner steps recorded")
    if start is None:
        started = stats.parent / "command_started"
        start = float(started.read_text()) if started.exists() else recs[0].time
    points, seen = [], set()
    for r in recs:
        ev = r.eval
        if not ev or ev.round in seen:
            continue
        seen.add(ev.round)
        points.append({"round": ev.round, "step": r.step if ev.fed_at_step is None else ev.fed_at_step,
                       "seen_at_step": r.step, "seconds": round((ev.done_at or r.time) - start, 1),
                       "per_task": ev.per_task or {"all": ev.accuracy}})
    return points, start


def table(points: list[dict]) -> str:
    tasks = sorted({t for p in points for t in p["per_task"]})
    head = "| stage | eval round | fed after step | wall s (done) | " + " | ".join(tasks) + " |"
    rule = "|" + "---|" * (4 + len(tasks))
    rows = [f"| {p.get('stage', 1)} | {p['round']} | {p['step']} | {p['seconds']:.0f} | "
            + " | ".join(f"{p['per_task'][t]:.2f}" if t in p["per_task"] else "" for t in tasks) + " |"
            for p in points]
    return "\n".join([head, rule, *rows])


def plot(points: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({t for p in points for t in p["per_task"]})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, label in ((axes[0], "step", "learner step (when the eval round was fed)"),
                           (axes[1], "seconds", "wall time since start (s)")):
        for t in tasks:
            xs = [p[key] for p in points if t in p["per_task"]]
            ax.plot(xs, [p["per_task"][t] for p in points if t in p["per_task"]], marker="o", label=t)
        second = [p[key] for p in points if p.get("stage") == 2]
        if second:
            ax.axvline(min(second), color="grey", linestyle=":", linewidth=1)
            ax.text(min(second), 0.02, " stage 2: + camera", color="grey", fontsize=8)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out accuracy")
    axes[0].set_ylim(0, 1.02)
    axes[1].legend(loc="center right", fontsize=8)
    fig.suptitle("embedded tiny Qwen2-VL, GRPO on synthetic videos, held-out split (2-core CPU)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


def run_stage(config: Path, run_dir: Path, overrides: list[str], t0: float) -> Path:
    """`rlctl run CONFIG` into run_dir; wall times of its eval points count from t0 (the whole command's start)."""
    cmd = [sys.executable, "-m", "rlctl.cli", "run", str(config), "--set", f"run_dir={run_dir}",
           *[a for o in overrides for a in ("--set", o)]]
    print("$", " ".join(cmd), flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "command_started").write_text(repr(t0))  # wall times count from here: model build, render, start
    subprocess.run(cmd, cwd=ROOT, check=True)
    return run_dir / "stats.jsonl"


def final_weights(stats: Path) -> Path:
    """The model directory of the last version a run published (its weights/vNNNNNN)."""
    from services.common.weights import newest_version

    newest = newest_version(stats.parent / "weights")
    if newest is None:
        raise click.ClickException(f"{stats.parent}: no published weights to continue from")
    return newest[1]


def join_stages(first: list[dict], second: list[dict]) -> list[dict]:
    """One curve: the second stage's steps continue after the first's last step (wall times already share t0)."""
    offset = max((p["seen_at_step"] for p in first), default=0)
    return first + [{**p, "step": p["step"] + offset, "stage": 2} for p in second]


@click.command()
@click.option("--config", type=click.Path(exists=True, path_type=Path), default=ROOT / "rlctl/configs/learn.yaml",
              show_default=True, help="stage 1: run config to train with")
@click.option("--then", "then", type=click.Path(exists=True, path_type=Path),
              default=ROOT / "rlctl/configs/learn-camera.yaml", show_default=True,
              help="stage 2: a run config started from stage 1's final weights (model.path)")
@click.option("--no-then", is_flag=True, help="stage 1 only")
@click.option("--stats", type=click.Path(exists=True, path_type=Path), multiple=True,
              help="tabulate/plot existing runs' stats.jsonl (one per stage, in order) instead of training")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="config overrides for stage 1")
def main(config: Path, then: Path, no_then: bool, stats: tuple[Path, ...], overrides: tuple[str, ...]) -> None:
    if not stats:
        stamp = time.strftime('%Y%m%d-%H%M%S')
        t0 = time.time()
        stats = (run_stage(config, ROOT / "runs" / f"learning-curve-{stamp}", list(overrides), t0),)
        if not no_then:
            model = final_weights(stats[0])
            stats += (run_stage(then, ROOT / "runs" / f"learning-curve-{stamp}-stage2", [f"model.path={model}"], t0),)
        print(f"whole command: {time.time() - t0:.0f} s", flush=True)
    points, start = eval_points(stats[0])
    for more in stats[1:]:
        points = join_stages(points, eval_points(more, start)[0])
    md = table(points)
    print(md)
    OUT.mkdir(parents=True, exist_ok=True)
    plot(points, OUT / "learning_curve.png")
    (OUT / "learning_curve.md").write_text("From " + ", ".join(f"`{s}`" for s in stats) + f":\n\n{md}\n")
    print(f"wrote {OUT / 'learning_curve.png'} and {OUT / 'learning_curve.md'}")


if __name__ == "__main__":
    main()
