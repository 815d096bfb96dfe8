"""What a run left in each experiment tracker, read back with the tracker's own reader: TensorBoard's
EventAccumulator, MLflow's MlflowClient, and W&B's `wandb leet inspect --json` on the offline run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class Tracked:
    """One tracker's view of a run: scalar -> {step: value}, samples tables by step, the run's config."""

    scalars: dict[str, dict[int, float]] = field(default_factory=dict)
    samples: dict[int, list[dict]] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    finished: bool = False


def tensorboard(run_dir: Path) -> Tracked:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    out = Tracked(finished=True)
    for tag in acc.Tags()["scalars"]:
        out.scalars[tag] = {e.step: e.value for e in acc.Scalars(tag)}
    (cfg,) = acc.Tensors("config/text_summary")
    out.config = yaml.safe_load(cfg.tensor_proto.string_val[0].decode().strip("`\n").removeprefix("yaml"))
    for e in acc.Tensors("samples/text_summary") if "samples/text_summary" in acc.Tags()["tensors"] else []:
        lines = e.tensor_proto.string_val[0].decode().splitlines()
        columns = [c.strip() for c in lines[0].strip("|").split(" | ")]
        out.samples[e.step] = [dict(zip(columns, (c.strip() for c in ln.strip("|").split(" | ")), strict=True))
                               for ln in lines[2:]]
    return out


def mlflow(run_dir: Path, experiment: str = "videorl") -> Tracked:
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"   # MLflow 3 reads the file store only when told to
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    rid = run.info.run_id
    out = Tracked(config=dict(run.data.params), finished=run.info.status == "FINISHED")
    for key in run.data.metrics:
        out.scalars[key] = {m.step: m.value for m in client.get_metric_history(rid, key)}
    for art in client.list_artifacts(rid, "samples"):
        step = int(art.path.rsplit("_", 1)[1].split(".")[0])
        out.samples[step] = client.load_table(exp.experiment_id, art.path, [rid]).to_dict("records")
    return out


def wandb(run_dir: Path) -> Tracked:
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    cli = Path(sys.executable).with_name("wandb")
    lines = subprocess.run([str(cli), "leet", "inspect", "--json", str(offline)], capture_output=True, text=True,
                           check=True, timeout=120).stdout.splitlines()
    out = Tracked()
    for rec in map(json.loads, lines):
        if rec["type"] == "run":
            out.config = {k: v for k, v in rec["run"]["config"]["update"].items() if not k.startswith("_")}
        elif rec["type"] == "exit":
            out.finished = rec["exit"].get("exit_code", 0) == 0
        elif rec["type"] == "history":
            item, step = rec["history"]["item"], rec["history"]["step"]["num"]
            for k, v in item.items():
                if isinstance(v, (int, float)) and not k.startswith("_"):
                    out.scalars.setdefault(k, {})[step] = v
            if item.get("samples._type") == "table-file":
                table = json.loads((offline / "files" / item["samples.path"]).read_text())
                out.samples[step] = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    return out
