"""`rlctl plan CONFIG`: print, per component, what one GPU must hold and whether it fits; exit 1 when one does not.

The figures are rlctl/plan.py's; this module only reads the files and prints. It needs the model's config.json and
nothing else (no weights, no torch, no GPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from rlctl.plan import Component, GiB, Plan, PlanError, gib, parse_size, plan_run
from services.common.config import ConfigError, RunConfig, load_config


def _size(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return parse_size(value)
    except PlanError as e:
        raise click.BadParameter(str(e)) from None


@click.command("plan")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--gpu-mem", default="80GiB", show_default=True, callback=_size, metavar="SIZE",
              help="Memory of one GPU, e.g. 80GiB (H100), 141GB (H200), '24 GiB'.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field.")
@click.option("--model-config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The model's config.json; default <model.path>/config.json (give it when model.path is the "
                   "cluster's, e.g. tests/data/arch/Qwen2.5-VL-7B-Instruct/config.json).")
def plan(config: Path, gpu_mem: int, overrides: tuple[str, ...], model_config: Path | None) -> None:
    """Will CONFIG fit its GPUs? From the model's config.json alone: per learner rank the parameters, gradients and
    optimizer states of its ZeRO stage (equal to DeepSpeed's own estimators in bf16), the KL reference and the
    activations of its largest micro-batch; per rollout actor the weights of one tensor-parallel shard, vLLM's
    forward pass and the KV cache left at gpu_memory_utilization, in sequences of max_model_len. Exits 1 when a
    component does not fit."""
    try:
        cfg = load_config(config, list(overrides))
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    path = model_config or _default_model_config(cfg)
    try:
        hf_config = json.loads(path.read_text())
        result = plan_run(cfg, hf_config, gpu_mem)
    except (OSError, ValueError) as e:   # PlanError is a ValueError, as is bad JSON
        raise click.ClickException(f"{path}: {e}") from None
    from rich.console import Console

    console = Console()
    _print(console, result, path, gpu_mem)
    if not result.fits:
        sys.exit(1)


def _default_model_config(cfg: RunConfig) -> Path:
    if cfg.model.path is None:
        raise click.UsageError("model.path is not set (the embedded tiny model is built at run time): give "
                               "--model-config PATH/config.json")
    path = Path(cfg.model.path) / "config.json"
    if not path.is_file():
        raise click.UsageError(f"{path} is not here (model.path may be the cluster's volume): give --model-config, "
                               "e.g. tests/data/arch/<model>/config.json")
    return path


def _print(console, result: Plan, path: Path, gpu_mem: int) -> None:
    p, s = result.params, result.shape
    console.print(f"[bold]{s.model_type}[/] from {path}: {p.total / 1e9:.3f}B parameters (text {p.text / 1e9:.3f}B, "
                  f"vision {p.vision / 1e9:.3f}B), largest module {p.largest_layer / 1e6:.1f}M; "
                  f"GPUs of {gpu_mem / GiB:.1f} GiB", soft_wrap=True)
    for component in result.components:
        console.print(_table(component))
        for note in component.notes:
            console.print(f"  {note}", soft_wrap=True)
        console.print(_verdict(component), soft_wrap=True)


def _table(c: Component):
    from rich.table import Table

    table = Table(title=f"{c.name}, per GPU", title_justify="left")
    table.add_column("item")
    table.add_column("GiB", justify="right")
    table.add_column("how")
    for item in c.items:
        table.add_row(item.name, f"{item.bytes / GiB:.2f}", item.how)
    table.add_section()
    table.add_row("[bold]total[/]", f"[bold]{c.need / GiB:.2f}[/]", "")
    table.add_row("budget", f"{c.budget / GiB:.2f}", c.budget_how)
    return table


def _verdict(c: Component) -> str:
    if c.problem is not None:
        return f"[bold red]{c.name}: does not fit[/]: {c.problem}"
    if c.fits:
        return f"[bold green]{c.name}: fits[/], {gib(c.margin)} to spare"
    return f"[bold red]{c.name}: does not fit[/], short by {gib(-c.margin)}"
