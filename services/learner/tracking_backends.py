"""The tracker backends behind services/learner/tracking.py: TensorBoard, Weights & Biases, MLflow.

Each imports its package when started (in the tracker's own thread), so a missing extra fails that tracker only.
Names are the trackers' own: scalars keyed `section/name`, which all three group by the part before the slash.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from services.common.tracking_config import TrackingConfig
from services.learner.tracking_records import Backend, RunInfo, Samples, flat_params, wandb_mode

MLFLOW_PARAM_MAX = 6000   # MLflow refuses longer param values


class TensorBoard:
    """Scalars and the samples (a markdown table, TensorBoard's text plugin) in <run_dir>/tb."""

    name = "tensorboard"

    def start(self, tc: TrackingConfig, run: RunInfo) -> str | None:
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(run.run_dir) / "tb"
        self.writer = SummaryWriter(log_dir=str(self.dir))
        self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(run.hparams, sort_keys=False) + "```", 0)
        return None

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def samples(self, table: Samples) -> None:
        def cell(v: Any) -> str:
            text = f"{v:.4g}" if isinstance(v, float) else str(v)
            return text.replace("|", "\\|").replace("\n", " ")

        lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.rows]
        self.writer.add_text("samples", "\n".join(lines), table.step)

    def close(self) -> None:
        self.writer.close()

    def where(self) -> str:
        return f"{self.dir} (tensorboard --logdir {self.dir})"


class WandB:
    """A W&B run in <run_dir>/wandb: online, or offline to sync later (tracking.wandb_mode)."""

    name = "wandb"

    def start(self, tc: TrackingConfig, run: RunInfo) -> str | None:
        import wandb

        self.mode = wandb_mode(tc)
        self.wandb = wandb
        rid = run.ids.get(self.name)
        quiet = wandb.Settings(console="off", silent=True, disable_git=True, save_code=False)
        self.run = wandb.init(project=tc.project, name=run.name, tags=list(tc.tags), config=run.hparams,
                              dir=str(run.run_dir), mode=self.mode, id=rid, resume="allow" if rid else None,
                              reinit="create_new", settings=quiet)
        return self.run.id

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def samples(self, table: Samples) -> None:
        columns: list[str | int] = list(table.columns)
        self.run.log({"samples": self.wandb.Table(columns=columns, data=table.rows)}, step=table.step)

    def close(self) -> None:
        self.run.finish()

    def where(self) -> str:
        run_dir = Path(self.run.dir).parent   # .../wandb/<offline-run-...>/files
        if self.mode == "offline":
            return f"{run_dir} (offline; upload with `wandb sync {run_dir}`)"
        return f"{self.run.url}"


class MLflow:
    """An MLflow run in experiment tracking.project: at tracking.mlflow_uri, else the file store <run_dir>/mlruns.
    Samples are table artifacts samples/step_<N>.json (`mlflow.load_table`)."""

    name = "mlflow"

    def start(self, tc: TrackingConfig, run: RunInfo) -> str | None:
        self.uri = tc.mlflow_uri or (Path(run.run_dir) / "mlruns").resolve().as_uri()
        if self.uri.startswith("file:") or "://" not in self.uri:
            # MLflow 3 keeps the file store in maintenance mode and refuses it unless told to accept it.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Metric, Param, RunStatus
        from mlflow.tracking import MlflowClient

        self.client, self.Metric = MlflowClient(tracking_uri=self.uri), Metric
        exp = self.client.get_experiment_by_name(tc.project)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(tc.project)
        if rid := run.ids.get(self.name):
            self.run_id = rid
            self.client.update_run(rid, status=RunStatus.to_string(RunStatus.RUNNING))
            return rid
        self.run_id = self.client.create_run(exp_id, run_name=run.name, tags={t: "" for t in tc.tags}).info.run_id
        params = [Param(k, v[:MLFLOW_PARAM_MAX]) for k, v in flat_params(run.hparams).items()]
        for i in range(0, len(params), 100):   # MLflow's limit per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        return self.run_id

    def scalars(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        metrics = [self.Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def samples(self, table: Samples) -> None:
        data = {c: [row[i] for row in table.rows] for i, c in enumerate(table.columns)}
        self.client.log_table(self.run_id, data=data, artifact_file=f"samples/step_{table.step:06d}.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)

    def where(self) -> str:
        return f"{self.uri}, run {self.run_id}"


BACKENDS: dict[str, type] = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


def make_backend(name: str) -> Backend:
    return BACKENDS[name]()
