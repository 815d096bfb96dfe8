"""Learning demonstration: train the embedded tiny Qwen2-VL on the synthetic suite with the real loop, then
print held-out accuracy per task against learner steps and wall time, and plot it.

    .venv/bin/python bench/learning_curve.py                       # runs rlctl/configs/learn.yaml
    .venv/bin/python bench/learning_curve.py --stats runs/X/stats.jsonl   # only tabulate/plot a finished run

Accuracy is the mean, over the held-out split's rows and their K samples, of the task's accuracy component
(the first component of its reward list, e.g. `mcq`); every evaluation round feeds the whole held-out split.
Writes bench/results/learning_curve.png and .md next to the printed table.
"""

from __future__ import annotations

import json
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
    recs = [json.loads(line) for line in stats.read_text().splitlines() if line.strip()]
    if not recs:
        raise click.ClickException(f"{stats}: no learner steps recorded")
    if start is None:
        started = stats.parent / "command_started"
        start = float(started.read_text()) if started.exists() else recs[0]["time"]
    points, seen = [], set()
    for r in recs:
        ev = r.get("eval")
        if not ev or ev["round"] in seen:
            continue
        seen.add(ev["round"])
        points.append({"round": ev["round"], "step": ev.get("fed_at_step", r["step"]), "seen_at_step": r["step"],
                       "seconds": round(ev.get("done_at", r["time"]) - start, 1),
                       "per_task": ev.get("per_task", {"all": ev["accuracy"]})})
    return points, start


def table(points: list[dict]) -> str:
    tasks = sorted({t for p in points for t in p["per_task"]})
    head = "| eval round | fed after step | wall s (done) | " + " | ".join(tasks) + " |"
    rule = "|" + "---|" * (3 + len(tasks))
    rows = [f"| {p['round']} | {p['step']} | {p['seconds']:.0f} | "
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
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out accuracy")
    axes[0].set_ylim(0, 1.02)
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle("embedded tiny Qwen2-VL, GRPO on synthetic videos, held-out split (2-core CPU)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


@click.command()
@click.option("--config", type=click.Path(exists=True, path_type=Path), default=ROOT / "rlctl/configs/learn.yaml",
              show_default=True, help="run config to train with")
@click.option("--stats", type=click.Path(exists=True, path_type=Path), default=None,
              help="tabulate/plot an existing run's stats.jsonl instead of training")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="config overrides passed to rlctl run")
def main(config: Path, stats: Path | None, overrides: tuple[str, ...]) -> None:
    if stats is None:
        run_dir = ROOT / "runs" / f"learning-curve-{time.strftime('%Y%m%d-%H%M%S')}"
        cmd = [sys.executable, "-m", "rlctl.cli", "run", str(config), "--set", f"run_dir={run_dir}",
               *[a for o in overrides for a in ("--set", o)]]
        print("$", " ".join(cmd), flush=True)
        t0 = time.time()
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "command_started").write_text(repr(t0))  # wall times count from here: model build, render, start
        subprocess.run(cmd, cwd=ROOT, check=True)
        print(f"whole command: {time.time() - t0:.0f} s", flush=True)
        stats = run_dir / "stats.jsonl"
    points, _ = eval_points(stats)
    md = table(points)
    print(md)
    OUT.mkdir(parents=True, exist_ok=True)
    plot(points, OUT / "learning_curve.png")
    (OUT / "learning_curve.md").write_text(f"From `{stats}`:\n\n{md}\n")
    print(f"wrote {OUT / 'learning_curve.png'} and {OUT / 'learning_curve.md'}")


if __name__ == "__main__":
    main()
