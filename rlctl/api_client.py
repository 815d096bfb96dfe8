"""The client side of a run's control API (rlctl/api.py) for `rlctl status|scale|stop`, and the learner's view
that both sides share (`learner_view`, `learner_text`). The API is found through the run's record (run.json `api`,
token in RUN_DIR/api-token) or given (`--api URL`, token from --token-file or VIDEORL_API_TOKEN). No web framework
is imported here: the CLI stays light."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel, Field

from services.common.records import StepRecord

TOKEN_ENV = "VIDEORL_API_TOKEN"
TOKEN_HEADER = "X-Videorl-Token"   # the token where a proxy in between consumes the Authorization header


class LearnerView(BaseModel):
    step: int
    steps_per_s: float | None = Field(description="over the last 10 steps")
    staleness_max: int
    recent_rewards: list[float] = Field(description="mean reward of the last 5 steps")
    eval_accuracy: float | None = Field(description="held-out accuracy of the newest finished round")
    eval_round: int | None


def learner_view(records: list[StepRecord]) -> LearnerView | None:
    if not records:
        return None
    recent = records[-10:]
    span = recent[-1].time - recent[0].time if len(recent) > 1 else 0.0
    ev = next((r.eval for r in reversed(records) if r.eval), None)
    return LearnerView(step=records[-1].step, steps_per_s=(len(recent) - 1) / span if span > 0 else None,
                       staleness_max=records[-1].staleness_max,
                       recent_rewards=[r.train.reward_mean for r in records[-5:]],
                       eval_accuracy=ev.accuracy if ev else None, eval_round=ev.round if ev else None)


def learner_text(lv: dict) -> str:
    """One line of a LearnerView (as JSON) for `rlctl status`."""
    rate = f"{lv['steps_per_s']:.2f} steps/s" if lv["steps_per_s"] else "-"
    acc = f"  held-out {lv['eval_accuracy']:.3f} (round {lv['eval_round']})" if lv["eval_accuracy"] is not None \
        else ""
    return (f"learner step {lv['step']}  {rate}  staleness max {lv['staleness_max']}  recent rewards "
            + " ".join(f"{r:.2f}" for r in lv["recent_rewards"]) + acc)


@dataclass(frozen=True)
class ApiClient:
    """A run's API at `url`. `_send` is the transport (plain HTTP here; rlctl.k8s_api goes through the Kubernetes
    API server); the answers and errors are the same whatever carries them."""

    url: str
    token: str
    timeout_s: float = 10.0

    def get(self, path: str) -> Any:
        return self._call("GET", path, None)

    def post(self, path: str, body: dict | None = None) -> Any:
        return self._call("POST", path, body or {})

    def _call(self, method: str, path: str, body: dict | None) -> Any:
        try:
            status, data = self._send(method, path, body)
        except OSError as e:
            raise click.ClickException(f"{method} {self.url}{path}: the run's control API does not answer ({e}); "
                                       "is the run still going? (`rlctl status`)") from None
        if status >= 400:
            raise click.ClickException(f"{method} {self.url}{path}: {status} {problem_text(data)}")
        return json.loads(data or b"null")

    def _send(self, method: str, path: str, body: dict | None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url.rstrip("/") + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()


def serving(st: dict) -> set[str]:
    """The actors of a /v1/status answer that serve: running (heartbeat fresh) with a loaded policy. An actor retired
    by a scale-down runs until it has sent what it held, then stops."""
    now = time.time()
    return {a["actor_id"] for a in st["actors"]
            if a["state"] == "running" and a["loaded_version"] >= 0 and now - a["heartbeat"] < 30}


def wait_serving(client: ApiClient, n: int, timeout_s: float) -> dict:
    """Poll the run's status until exactly `n` actors serve; that status. Fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    st = client.get("/v1/status")
    while len(serving(st)) != n:
        if time.monotonic() >= deadline:
            raise click.ClickException(f"after {timeout_s:.0f}s, {len(serving(st))} of {n} actors serve the current "
                                       "version; see `rlctl status` and `rlctl logs`")
        time.sleep(0.5)
        st = client.get("/v1/status")
    return st


def problem_text(data: bytes) -> str:
    """The reason in an error body: a problem's detail (each field of a 422), a Kubernetes Status' message."""
    try:
        body = json.loads(data)
    except ValueError:
        return data.decode(errors="replace").strip()[:300] or "(no body)"
    if not isinstance(body, dict):
        return str(body)
    detail = body.get("detail", body.get("message", body))
    if isinstance(detail, list):
        return "; ".join(f"{d.get('field')}: {d.get('error')}" for d in detail if isinstance(d, dict))
    return str(detail)


def client_for(record: dict | None, run_dir: Path | None, api: str | None, token_file: Path | None) -> ApiClient:
    """The API of `--api URL` (token from --token-file, else VIDEORL_API_TOKEN), else the run record's."""
    url = api or (record or {}).get("api")
    if not url:
        raise click.ClickException("this run has no control API in its record (started by an older rlctl?); "
                                   "give --api URL")
    if token_file is not None:
        token = token_file.read_text().strip()
    elif os.environ.get(TOKEN_ENV):
        token = os.environ[TOKEN_ENV].strip()
    elif api is None and run_dir is not None and (run_dir / "api-token").exists():
        token = (run_dir / "api-token").read_text().strip()
    else:
        raise click.ClickException(f"no token for {url}: give --token-file or set {TOKEN_ENV}")
    return ApiClient(url, token)
