"""`rlctl data synth`: render the synthetic spatio-temporal task suite (services/data/synth_suite.py)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("synth")
@click.option("--tasks", default="all", show_default=True, metavar="T1,T2,...",
              help="Comma-separated tasks: direction, order, count, distance, when, where, layout, route (or all).")
@click.option("--n", "n_train", type=click.IntRange(min=0), default=64, show_default=True,
              help="Train clips per task.")
@click.option("--eval-n", "n_eval", type=click.IntRange(min=0), default=16, show_default=True,
              help="Held-out clips per task.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: the same seed gives the same data.")
@click.option("--pan/--no-pan", default=True, show_default=True,
              help="Let the camera pan in half of the distance and where clips.")
@click.option("--reasoning", is_flag=True,
              help="Also write each row's exact chain of thought (`reasoning`, for CoT-SFT with rlctl sft).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: train.jsonl, eval.jsonl and videos/.")
def synth(tasks: str, n_train: int, n_eval: int, seed: int, pan: bool, reasoning: bool, out_dir: Path) -> None:
    """Render synthetic videos of coloured shapes with exact ground truth, one JSONL row per clip. Rebuilding
    with the same options leaves an existing output untouched."""
    from services.common.synth_tasks import parse_tasks
    from services.data.synth_suite import make_suite

    try:
        names = parse_tasks(tasks)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--tasks") from None
    suite = make_suite(out_dir, names, n_train, n_eval, seed=seed, pan=pan, reasoning=reasoning)
    state = "wrote" if suite.built else "already built, unchanged:"
    click.echo(f"{state} {n_train} train + {n_eval} eval clips per task ({', '.join(names)}) "
               f"-> {suite.train}, {suite.eval}")
