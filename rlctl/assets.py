"""What a run trains on: the model directory and the train and held-out rows, from the config or embedded (the
tiny Qwen2-VL and synthetic videos, built once into the cache, VIDEORL_CACHE or ~/.cache/videorl)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from services.common.config import RunConfig
from services.common.dataset import DatasetError, Row, load_rows, rows_with_reverse

log = logging.getLogger("videorl.rlctl")
CACHE = Path(os.environ.get("VIDEORL_CACHE", Path.home() / ".cache" / "videorl"))


@dataclass
class Assets:
    model_dir: Path
    train: list[Row]
    eval_rows: list[Row]
    skipped: list[str]        # the malformed dataset lines left out (data.skip_bad_rows), each as file:line: why


def load_split(path: Path, cfg: RunConfig, skipped: list[str]) -> list[Row]:
    """A split's rows with their reverse-time variants; with data.skip_bad_rows, malformed lines are left out and
    named (logged and appended to `skipped`); a file with no good row still fails."""
    errors: list[DatasetError] | None = [] if cfg.data.skip_bad_rows else None
    rows = list(rows_with_reverse(load_rows(path, errors)))
    for e in errors or []:
        log.warning("skipping a malformed dataset line: %s", e)
        skipped.append(str(e))
    return rows


def prepare_assets(cfg: RunConfig, console: Console) -> Assets:
    """The configured model and data, or the embedded tiny model and synthetic videos (built once, cached)."""
    d = cfg.data
    train_path, eval_path = d.train, d.eval
    if (train_path is None or eval_path is None) and d.synth_tasks:
        from services.data.synth_suite import make_suite

        with console.status(f"rendering the synthetic suite ({', '.join(d.synth_tasks)}; once)"):
            name = f"synth-suite-s{cfg.seed}-{'-'.join(d.synth_tasks)}-{d.synth_train}-{d.synth_eval}"
            suite = make_suite(CACHE / name, d.synth_tasks, d.synth_train, d.synth_eval, seed=cfg.seed, progress=False)
        train_path, eval_path = train_path or suite.train, eval_path or suite.eval
    if train_path is None or eval_path is None:
        from services.embedded.synth import make_direction_dataset

        with console.status("generating the synthetic direction videos (once)"):
            synth_train, synth_eval = make_direction_dataset(
                CACHE / f"synth-direction-s{cfg.seed}-{d.synth_train}-{d.synth_eval}", d.synth_train, d.synth_eval,
                seed=cfg.seed)
        train_path, eval_path = train_path or synth_train, eval_path or synth_eval
    model_dir = cfg.model.path
    if model_dir is None:
        model_dir = embedded_model(cfg.seed, console)
    skipped: list[str] = []
    train, eval_rows = load_split(train_path, cfg, skipped), load_split(eval_path, cfg, skipped)
    if skipped:
        console.print(f"[yellow]skipped {len(skipped)} malformed dataset lines[/] (first: {skipped[0]}); "
                      "data.skip_bad_rows=false makes them an error", soft_wrap=True)
    return Assets(Path(model_dir), train, eval_rows, skipped)  # lists: they travel to Ray actors by pickle


def embedded_model(seed: int, console: Console) -> Path:
    """The tiny Qwen2-VL, warm-started on its own fixed synthetic set: one recipe per seed, whatever data a run
    uses, so runs and tests share one cached build instead of rebuilding it for each other."""
    from services.embedded.model import build_tiny_qwen2vl
    from services.embedded.synth import make_direction_dataset

    with console.status("building the tiny Qwen2-VL and its format warm start (once, ~1 min)"):
        warm_train, _ = make_direction_dataset(CACHE / f"synth-direction-s{seed}-64-16", 64, 16, seed=seed)
        return build_tiny_qwen2vl(CACHE / f"tiny-qwen2vl-s{seed}", seed=seed, videos_jsonl=warm_train)


def embedded_judge(seed: int, console: Console) -> Path:
    """The embedded tiny judge (services/judge/tiny.py), built once from the embedded model into the cache."""
    from services.judge.tiny import build_tiny_judge

    base = embedded_model(seed, console)
    with console.status("building the embedded tiny judge (once)"):
        return build_tiny_judge(CACHE / f"tiny-judge-s{seed}", base, seed=seed)
