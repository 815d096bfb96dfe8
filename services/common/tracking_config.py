"""`tracking`: the experiment trackers a run (and `rlctl sft`) reports to, beside stats.jsonl and Prometheus."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from services.common.config_base import Strict

Backend = Literal["tensorboard", "wandb", "mlflow"]


class TrackingConfig(Strict):
    backends: list[Backend] = Field(default_factory=list, description=(
        "trackers to report to: tensorboard (<run_dir>/tb), wandb, mlflow; each needs its extra "
        "(pip install 'videorl[wandb]'; the locked venv holds all three). Empty: none"))
    project: str = Field("videorl", min_length=1, max_length=128, description=(
        "W&B project and MLflow experiment the run is logged under"))
    run_name: str | None = Field(None, max_length=128, description="the run's name in the trackers; None: run_id")
    tags: list[str] = Field(default_factory=list, description="tags of the run in W&B and MLflow")
    samples_every: int = Field(10, ge=0, le=1_000_000, description=(
        "every N learner steps, a table of a few prompts with their K completions, rewards and video (0: never)"))
    samples_prompts: int = Field(2, ge=1, le=64, description="prompts per samples table")
    wandb_mode: Literal["online", "offline"] | None = Field(None, description=(
        "None: WANDB_MODE if set, else online when WANDB_API_KEY is set, else offline (sync later with "
        "`wandb sync <run_dir>/wandb/offline-run-*`)"))
    mlflow_uri: str | None = Field(None, description=(
        "MLflow tracking URI (http://..., sqlite:///... with a full mlflow install); None: the file store "
        "<run_dir>/mlruns"))
    queue: int = Field(1000, ge=1, le=1_000_000, description=(
        "records held per tracker while it is slow; beyond that the oldest are dropped (counted), training never "
        "waits for a tracker"))
    close_timeout_s: float = Field(30.0, ge=0, le=3600, description=(
        "at the end of the run, how long to wait for each tracker to write what it holds"))

    @field_validator("backends")
    @classmethod
    def _once(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"a backend is named twice: {v}")
        return v
