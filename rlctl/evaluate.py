"""`rlctl eval`: score the held-out split once with a model, through the same rollout actors and reward service
a training run uses (greedy by default: rollout.eval_samples=1 at rollout.eval_temperature=0).

Story: start the run's services without a learner -> queue every held-out row once -> read their scored groups
from the `evals` stream until each row is scored or quarantined (a bad video) -> summarise per task and per
reward component exactly as the learner's periodic evaluation does -> stop everything.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from services.common.config import RunConfig
from services.common.control import EVALS
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.common.records import EvalReport
from services.learner.evaluation import EvalGroup, summarise_eval
from services.learner.feeder import PromptFeeder

CONSUMER = "rlctl-eval"


def run_eval(cfg: RunConfig, console: Console, timeout_s: float = 1800.0) -> EvalReport:
    from rlctl.local import LocalRun

    run = LocalRun(cfg, console, learner=False)
    t0 = time.time()
    try:
        control = run.start()
        feeder = PromptFeeder(control, [], run.assets.eval_rows, ahead=0, seed=cfg.seed)
        n = feeder.feed_eval()
        groups: list[EvalGroup] = []
        deadline = time.monotonic() + timeout_s
        with console.status("") as status:
            while True:
                quarantined = sum(v for k, v in control.counters().items() if k.startswith("prompts_quarantined:"))
                if len(groups) + quarantined >= n:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rlctl eval: {len(groups)} of {n} held-out rows scored after {timeout_s:.0f}s")
                run.supervisor.check()  # an actor that died is replaced; one that never loads is an error
                status.update(f"held-out rows scored {len(groups)}/{n} (quarantined {quarantined})")
                for entry_id, payload in control.read_groups(EVALS, CONSUMER, 64, block_ms=500):
                    groups.append(EvalGroup.of(pb.ScoredGroup.FromString(payload)))
                    control.ack_group(EVALS, entry_id)
        summary = EvalReport(**summarise_eval(groups).model_dump(), rows=n, quarantined=quarantined,
                             model=str(run.assets.model_dir), seconds=round(time.time() - t0, 1))
        run.stop_actors()
        return summary
    finally:
        run.close()


def eval_table(summary: EvalReport) -> Table:
    comps = sorted({c for per in summary.components.values() for c in per})
    table = Table(title=f"held-out: {summary.groups} rows scored, {summary.quarantined} quarantined")
    for col in ("task", "accuracy", *comps):
        table.add_column(col, justify="left" if col == "task" else "right")
    for task, acc in summary.per_task.items():
        per = summary.components[task]
        table.add_row(task, f"{acc:.3f}", *(f"{per[c]:.3f}" if c in per else "" for c in comps))
    return table


def write_summary(summary: EvalReport, run_dir: Path) -> Path:
    path = Path(run_dir) / "eval.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(summary.model_dump_json(indent=1))
    return path
