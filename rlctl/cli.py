"""rlctl: run and operate videorl. Subcommands import their heavy modules only when they run, so
`rlctl --help` never loads torch or vllm."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import click

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """videorl: asynchronous GRPO for video LLMs (vLLM rollouts -> gRPC rewards -> DeepSpeed learner)."""


@main.command()
@click.argument("config", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config field, e.g. --set learner.steps=5 --set rollout.num_actors=1.")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Continue the run in RUN_DIR from its latest checkpoint (give the same CONFIG and --set).")
def run(config: Path | None, overrides: tuple[str, ...], resume_dir: Path | None) -> None:
    """Run training locally: embedded Redis (unless redis.url is set), Ray, the reward server, rollout
    actors and the learner, with a live progress view. CONFIG defaults to the shipped tiny-model run
    (rlctl/configs/default.yaml): a Qwen2-VL built locally, trained on synthetic videos."""
    import time

    from rich.console import Console

    from services.common.config import ConfigError, load_config

    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # step lines reach a log file or pipe as they happen
    console = Console()
    try:
        cfg = load_config(config or DEFAULT_CONFIG, list(overrides))
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    if resume_dir is not None:
        cfg = cfg.model_copy(update={"run_dir": resume_dir})
    elif "run_dir" not in cfg.model_fields_set:  # each run gets its own folder unless one was asked for
        cfg = cfg.model_copy(update={"run_dir": Path("runs") / f"{cfg.run_id}-{time.strftime('%Y%m%d-%H%M%S')}"})
    console.print(f"[bold]videorl[/] run [cyan]{cfg.run_id}[/] -> {cfg.run_dir}")
    from rlctl.local import run_local

    try:
        summary = run_local(cfg, console, resume=resume_dir is not None)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: every process of the run was stopped[/]")
        sys.exit(130)
    recs = summary.records
    published = sorted({r.published for r in recs if r.published})
    versions = (f"v{published[0]}-v{published[-1]} ({len(published)})" if len(published) > 3 else
                ", ".join(f"v{v}" for v in published) or "none")
    lags = [(x.seconds, x.steps or 0) for x in summary.swap_lag if x.seconds is not None]
    console.print(f"done: {len(recs)} learner steps, published versions {versions}, {summary.seconds:.0f}s; "
                  f"stats in {cfg.run_dir}/stats.jsonl", soft_wrap=True)
    from rlctl.summary import actor_table, phase_table

    console.print(phase_table(recs, summary.actors, summary.reward_metrics))
    console.print(actor_table(summary.actors))
    if lags:
        secs = [s for s, _ in lags]
        next_step = sum(1 for _, steps in lags if steps == 0)
        rest = "" if next_step == len(lags) else f", all within {max(steps for _, steps in lags) + 1} steps"
        console.print(f"version pickup by the actors: {min(secs):.2f}-{max(secs):.2f}s after publication; "
                      f"{next_step}/{len(lags)} within the next learner step{rest}", soft_wrap=True)
    (Path(cfg.run_dir) / "summary.json").write_text(summary.model_dump_json(indent=1))
    if cfg.tracking.backends:
        from services.learner.tracking_records import look_at

        console.print("trackers (a failed one is named in `rlctl logs --service learner`): " +
                      "; ".join(look_at(cfg.tracking, Path(cfg.run_dir))), soft_wrap=True)


@main.command("eval")
@click.argument("config", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="model directory to evaluate (a run's weights/vN, an `rlctl sft` output); default: the config's")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field.")
def eval_cmd(config: Path | None, model_dir: Path | None, overrides: tuple[str, ...]) -> None:
    """Score the held-out split (data.eval) once with a model, through real rollout actors and the reward service;
    greedy unless rollout.eval_samples/eval_temperature say otherwise. Prints accuracy per task and per reward
    component and writes <run_dir>/eval.json."""
    import time

    from rich.console import Console

    from services.common.config import ConfigError, load_config

    console = Console()
    extra = [f"model.path={model_dir}"] if model_dir else []
    try:
        cfg = load_config(config or DEFAULT_CONFIG, [*overrides, *extra])
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    if "run_dir" not in cfg.model_fields_set:
        cfg = cfg.model_copy(update={"run_dir": Path("runs") / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"})
    from rlctl.evaluate import eval_table, run_eval, write_summary

    try:
        summary = run_eval(cfg, console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: every process of the evaluation was stopped[/]")
        sys.exit(130)
    console.print(eval_table(summary))
    console.print(f"overall accuracy {summary.accuracy:.3f} of {summary.model}; "
                  f"written to {write_summary(summary, cfg.run_dir)}", soft_wrap=True)


@main.group()
def data() -> None:
    """Prepare datasets: convert published annotation formats, look inside a dataset, render the synthetic task
    suite."""


def _register_subcommands() -> None:
    from rlctl.data_convert import convert, inspect
    from rlctl.data_synth import synth
    from rlctl.judge_cmd import judge
    from rlctl.operate import logs, scale, status, stop
    from rlctl.plan_cmd import plan
    from rlctl.rewards_cmd import rewards
    from rlctl.sft_cmd import sft
    from rlctl.submit import submit

    data.add_command(convert)
    data.add_command(inspect)
    data.add_command(synth)
    main.add_command(rewards)
    main.add_command(sft)
    main.add_command(submit)
    main.add_command(status)
    main.add_command(scale)
    main.add_command(stop)
    main.add_command(logs)
    main.add_command(plan)
    main.add_command(judge)


_register_subcommands()

if __name__ == "__main__":
    main()
