"""`rlctl sft`: the CoT-SFT cold start (services/learner/sft.py), writing a model directory `rlctl run` starts from."""

from __future__ import annotations

import sys
from pathlib import Path

import click

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "sft.yaml"


@click.command("sft")
@click.argument("config", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config field, e.g. --set sft.steps=100 --set sft.data=train.jsonl.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output model directory (default: sft.out, else RUN_DIR/sft). Must not hold a model yet.")
def sft(config: Path | None, overrides: tuple[str, ...], out_dir: Path | None) -> None:
    """Supervised fine-tuning on JSONL rows of (video, question, reasoning, answer): the model learns to write
    <think>reasoning</think><answer>answer</answer>, with loss on those tokens only. The rows are `sft.data`, else
    `data.train`, else the synthetic direction set with reasoning; the model is `model.path`, else the embedded
    tiny one. Start GRPO from the result with: rlctl run CONFIG --set model.path=OUT."""
    from rich.console import Console

    from services.common.config import ConfigError, SFTRunConfig, load_config
    from services.common.dataset import DatasetError

    console = Console()
    try:
        cfg = load_config(config or DEFAULT_CONFIG, list(overrides), model=SFTRunConfig)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    out = Path(out_dir or cfg.sft.out or Path(cfg.run_dir) / "sft")
    if (out / "config.json").exists():
        raise click.ClickException(f"{out} already holds a model; remove it or give another --out")
    from rlctl.assets import CACHE, embedded_model

    data = list(cfg.sft.data) or ([cfg.data.train] if cfg.data.train else [])
    if not data:
        from services.embedded.synth import make_direction_dataset

        d = cfg.data
        with console.status("generating the synthetic direction videos with reasoning (once)"):
            train, _ = make_direction_dataset(CACHE / f"synth-direction-reasoning-s{cfg.seed}-{d.synth_train}-"
                                              f"{d.synth_eval}", d.synth_train, d.synth_eval, seed=cfg.seed,
                                              reasoning=True)
        data = [train]
    model_dir = cfg.model.path or embedded_model(cfg.seed, console)
    console.print(f"[bold]videorl[/] sft: {model_dir} on {', '.join(map(str, data))} -> {out}", soft_wrap=True)
    from services.learner.sft import train_sft

    def tracker():
        from services.learner.tracking import Tracker

        return Tracker.open(cfg.tracking, Path(cfg.run_dir), cfg.run_id, cfg.model_dump(mode="json"))

    try:
        summary = train_sft(cfg.sft, cfg.media, Path(model_dir), data, out, seed=cfg.seed,
                            tracker=tracker if cfg.tracking.backends else None)
    except (DatasetError, FileExistsError) as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: nothing was written[/]")
        sys.exit(130)
    skipped = sum(summary.skipped_rows.values())
    console.print(f"done: {summary.steps} steps on {summary.rows} rows in {summary.seconds:.0f}s, "
                  f"loss {summary.loss_first:.4f} -> {summary.loss_last:.4f}, skipped rows {skipped} "
                  f"{summary.skipped_rows or ''}", soft_wrap=True)
    console.print(f"model in {out}; start GRPO from it with: rlctl run CONFIG --set model.path={out}", soft_wrap=True)
    if cfg.tracking.backends:
        from services.learner.tracking_records import look_at

        console.print("trackers: " + "; ".join(look_at(cfg.tracking, Path(cfg.run_dir))), soft_wrap=True)
