"""The control API of a run (FastAPI, served by uvicorn from the `rlctl run` process): what `rlctl status|scale|stop`
talk to, and what an operator's own scripts can use (OpenAPI at /docs).

  GET  /v1/status      versions per actor, queue depths, learner throughput, staleness, recent rewards, held-out
  GET  /v1/versions    the published versions (manifest of each)
  GET  /v1/events      server-sent events: one `step` event per learner step record (`?since=N` skips N)
  POST /v1/scale       {"rollout": N}: the desired number of rollout actors (the run's own loop starts/stops them)
  POST /v1/stop        graceful: the learner finishes its step and checkpoints, the actors finish what they hold

Invariants kept here:
- every /v1 route needs the run's token, as `Authorization: Bearer <token>` or as `X-Videorl-Token: <token>` (the
  Kubernetes API server's service proxy consumes the Authorization header: kubernetes/kubernetes#38775); 401
  otherwise, compared in constant time;
- locally the server listens on loopback only, a fresh token is in RUN_DIR/api-token (mode 0600) and the URL in
  run.json; in a pod, VIDEORL_API_HOST/VIDEORL_API_PORT put it on the pod network (behind a ClusterIP Service and a
  NetworkPolicy, deploy/k8s/base/api.yaml) and VIDEORL_API_TOKEN (from a Secret) is the token, never written;
- the API only writes the run's intent to Redis (desired actor count, stop request): the run's process stays the one
  owner of every process;
- errors are problem JSON (RFC 9457): {"type", "title", "status", "detail"}; bad bodies are 422 naming the field.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from rlctl.api_client import TOKEN_ENV, TOKEN_HEADER, LearnerView, learner_view
from services.common.control import ControlPlane

TOKEN_FILE = "api-token"
HOST_ENV, PORT_ENV = "VIDEORL_API_HOST", "VIDEORL_API_PORT"
PROBLEM = "application/problem+json"
EVENT_POLL_S = 0.5
KEEPALIVE_S = 15.0


class ScaleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rollout: int = Field(ge=1, le=1024, description="the number of rollout actors wanted")


class ActorView(BaseModel):
    actor_id: str
    state: str
    loaded_version: int
    host: str | None
    heartbeat: float = Field(description="unix time of its last heartbeat")
    tokens_per_s: float | None
    groups_sent: int | None


class RunStatus(BaseModel):
    run_id: str
    policy_version: int | None
    desired_actors: int | None
    prompts_queued: int
    groups_queued: int = Field(description="written and not yet read by the learner")
    groups_written: int
    completions: int = Field(description="completions the reward service received")
    stop_requested: bool
    actors: list[ActorView]
    learner: LearnerView | None


class Accepted(BaseModel):
    detail: str
    desired_actors: int | None = None


def _number(v: str | None, kind: type) -> float | int | None:
    try:
        return kind(v) if v is not None else None
    except ValueError:
        return None


def run_status(control: ControlPlane) -> RunStatus:
    c = control.counters()
    return RunStatus(
        run_id=control.run_id, policy_version=control.current_version(), desired_actors=control.desired_actors(),
        prompts_queued=control.prompts_queued(), groups_queued=control.groups_queued(),
        groups_written=c.get("groups_written", 0), completions=c.get("completions_received", 0),
        stop_requested=control.stop_requested() is not None,
        actors=[ActorView(actor_id=a.actor_id, state=a.state, loaded_version=a.loaded_version,
                          host=a.fields.get("host"), heartbeat=a.heartbeat,
                          tokens_per_s=_number(a.fields.get("tokens_per_s"), float),
                          groups_sent=_number(a.fields.get("groups_sent"), int)) for a in control.actors()],
        learner=learner_view(control.step_records()))


def _problem(status: int, title: str, detail: Any) -> JSONResponse:
    return JSONResponse({"type": "about:blank", "title": title, "status": status, "detail": detail},
                        status_code=status, media_type=PROBLEM)


def make_app(control: ControlPlane, token: str) -> FastAPI:
    app = FastAPI(title="videorl run control", version="1",
                  description="Status, scaling and stopping of one videorl run; every /v1 route needs the run's "
                              "bearer token (RUN_DIR/api-token).")
    bearer = Depends(HTTPBearer(auto_error=False))

    def authorised(creds: HTTPAuthorizationCredentials | None = bearer,
                   x_token: str | None = Header(None, alias=TOKEN_HEADER, include_in_schema=False)) -> None:
        given = creds.credentials if creds is not None else x_token
        if given is None or not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong token (the run's token: RUN_DIR/api-token; on Kubernetes the "
                                     "Secret videorl-<run>-api-token)",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(HTTPException)
    async def http_problem(request: Request, e: HTTPException) -> JSONResponse:
        response = _problem(e.status_code, {401: "Unauthorized", 404: "Not Found"}.get(e.status_code, "Error"),
                            e.detail)
        response.headers.update(e.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, e: RequestValidationError) -> JSONResponse:
        detail = [{"field": ".".join(str(p) for p in err["loc"][1:]) or "body", "error": err["msg"]}
                  for err in e.errors()]
        return _problem(422, "Unprocessable Content", detail)

    @app.get("/v1/status", dependencies=[Depends(authorised)])
    def status() -> RunStatus:
        return run_status(control)

    @app.get("/v1/versions", dependencies=[Depends(authorised)])
    def versions() -> list[dict]:
        current = control.current_version() or 0
        found = [control.manifest(v) for v in range(current + 1)]
        return [dataclasses.asdict(m) for m in found if m is not None]

    @app.post("/v1/scale", dependencies=[Depends(authorised)], status_code=202)
    def scale(body: ScaleRequest) -> Accepted:
        before = control.desired_actors()
        control.set_desired_actors(body.rollout)
        return Accepted(detail=f"rollout actors {before} -> {body.rollout}", desired_actors=body.rollout)

    @app.post("/v1/stop", dependencies=[Depends(authorised)], status_code=202)
    def stop() -> Accepted:
        control.request_stop()
        return Accepted(detail="stopping: the learner finishes its step and checkpoints, the actors finish what "
                               "they hold")

    @app.get("/v1/events", dependencies=[Depends(authorised)])
    async def events(since: int = 0) -> StreamingResponse:
        return StreamingResponse(_step_events(control, since), media_type="text/event-stream")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    return app


async def _step_events(control: ControlPlane, since: int):
    sent, quiet_since = max(0, since), time.monotonic()
    while True:
        records = await asyncio.to_thread(control.step_records, sent)
        for r in records:
            sent += 1
            yield f"id: {sent}\nevent: step\ndata: {r.model_dump_json()}\n\n"
            quiet_since = time.monotonic()
        if time.monotonic() - quiet_since > KEEPALIVE_S:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(EVENT_POLL_S)


class ApiServer:
    """The app in a thread of this process; `url`, `token`, `stop()`. Where it listens and its token: the arguments,
    else VIDEORL_API_HOST / VIDEORL_API_PORT / VIDEORL_API_TOKEN, else 127.0.0.1, a free port and a fresh token
    written to RUN_DIR/api-token. It has a Redis client of its own that gives up after 3 s: an operator's request
    answers, or fails, promptly."""

    def __init__(self, redis_url: str, run_id: str, run_dir: Path, host: str | None = None, port: int | None = None,
                 token: str | None = None):
        import uvicorn

        host = host or os.environ.get(HOST_ENV) or "127.0.0.1"
        port = int(os.environ.get(PORT_ENV) or 0) if port is None else port
        token = token or os.environ.get(TOKEN_ENV, "").strip() or None
        self.control = ControlPlane(redis_url, run_id, reconnect_s=3)
        self.token = token or secrets.token_urlsafe(32)
        if token is None:   # a token of its own: the operator's copy; a given one (a Secret's) is never written
            path = Path(run_dir) / TOKEN_FILE
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.token + "\n")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(128)   # connections wait in the backlog until uvicorn accepts: none is refused at start
        self.url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{self.sock.getsockname()[1]}"
        # An open event stream never ends by itself: at the run's end it is cut after 2 s instead of holding the stop.
        config = uvicorn.Config(make_app(self.control, self.token), log_level="warning", access_log=False,
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name="control-api",
                                       daemon=True)
        self.thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)
        self.sock.close()
        self.control.close()
