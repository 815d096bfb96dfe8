"""A run's control API (rlctl/api.py), served by uvicorn on loopback over a real Redis, driven with plain HTTP and
with `rlctl` itself: the token is required (401), bodies are validated (422), errors are problem JSON, status,
versions and the step events reflect Redis, scale and stop only record the operator's intent."""

from __future__ import annotations

import json
import os
import stat
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner
from step_records import step_record

from rlctl.api import HOST_ENV, PROBLEM, ApiServer
from rlctl.api_client import TOKEN_ENV, TOKEN_HEADER
from rlctl.cli import main
from services.common.control import ControlPlane
from services.common.redis_server import EmbeddedRedis
from services.common.weights import Manifest


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    run = tmp_path_factory.mktemp("api")
    with EmbeddedRedis() as redis:
        control = ControlPlane(redis.url, "r1")
        control.ensure_streams()
        control.set_desired_actors(1)
        control.publish_version(Manifest(version=0, uri="/m", bytes=10))
        control.publish_version(Manifest(version=1, uri="/w/v1", bytes=20, step=4))
        control.heartbeat("rollout-0", 1, "running", tokens_per_s=120.5, groups_sent=7, host="10.0.0.3")
        for step in (1, 2, 3):
            control.record_step(step_record(step, reward_mean=0.1 * step, time=100.0 + step, staleness_max=1))
        api = ApiServer(redis.url, "r1", run)
        yield api, control, run
        api.stop()
        control.close()


def call(api, method, path, body=None, token: str | None = "valid", headers=None):
    """(status, content type, parsed body) of one request; `token` "valid" is the server's own."""
    h = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        h["Authorization"] = f"Bearer {api.token if token == 'valid' else token}"
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(api.url + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers["Content-Type"], json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], json.loads(e.read())


def test_the_token_file_is_private_and_every_route_refuses_a_missing_or_wrong_token(served):
    api, _, run = served
    token_file = run / "api-token"
    assert token_file.read_text().strip() == api.token
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    for method, path, body in (("GET", "/v1/status", None), ("GET", "/v1/versions", None),
                               ("POST", "/v1/scale", {"rollout": 2}), ("POST", "/v1/stop", {}),
                               ("GET", "/v1/events", None)):
        for token in (None, "wrong-token"):
            code, ctype, problem = call(api, method, path, body, token=token)
            assert code == 401 and ctype == PROBLEM, (method, path, token)
            assert problem["status"] == 401 and problem["title"] == "Unauthorized" and "token" in problem["detail"]
    assert call(api, "GET", "/health", token=None)[0] == 200
    assert api.url.startswith("http://127.0.0.1:")
    # Behind the Kubernetes API server's proxy (which consumes Authorization), the token comes as X-Videorl-Token.
    assert call(api, "GET", "/v1/status", token=None, headers={TOKEN_HEADER: api.token})[0] == 200
    assert call(api, "GET", "/v1/status", token=None, headers={TOKEN_HEADER: "wrong-token"})[0] == 401


def test_in_a_pod_the_token_comes_from_the_environment_and_is_never_written(tmp_path, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "the-secrets-token\n")
    monkeypatch.setenv(HOST_ENV, "0.0.0.0")
    with EmbeddedRedis() as redis:
        ControlPlane(redis.url, "r3").ensure_streams()
        api = ApiServer(redis.url, "r3", tmp_path)
        try:
            assert api.token == "the-secrets-token" and not (tmp_path / "api-token").exists()
            assert api.sock.getsockname()[0] == "0.0.0.0" and api.url.startswith("http://127.0.0.1:")
            assert call(api, "GET", "/v1/status")[0] == 200
        finally:
            api.stop()


@pytest.mark.parametrize("body, field", [({"rollout": 0}, "rollout"), ({"rollout": "many"}, "rollout"),
                                         ({}, "rollout"), ({"rollout": 2, "learner": 1}, "learner"),
                                         (b"{not json", "body")])
def test_bad_bodies_are_422_problems_naming_the_field(served, body, field):
    api, control, _ = served
    code, ctype, problem = call(api, "POST", "/v1/scale", body)
    assert code == 422 and ctype == PROBLEM and problem["title"] == "Unprocessable Content"
    assert field in {d["field"] for d in problem["detail"]} or (field == "body" and problem["detail"]), problem
    assert control.desired_actors() == 1                          # nothing was changed


def test_status_and_versions_are_what_redis_holds(served):
    api, _, _ = served
    code, _, st = call(api, "GET", "/v1/status")
    assert code == 200 and st["run_id"] == "r1" and st["policy_version"] == 1 and st["desired_actors"] == 1
    (actor,) = st["actors"]
    assert actor == {**actor, "actor_id": "rollout-0", "state": "running", "loaded_version": 1, "host": "10.0.0.3",
                     "tokens_per_s": 120.5, "groups_sent": 7}
    assert st["learner"]["step"] == 3 and st["learner"]["steps_per_s"] == pytest.approx(1.0)
    assert st["learner"]["recent_rewards"] == pytest.approx([0.1, 0.2, 0.3]) and st["learner"]["eval_accuracy"] is None
    code, _, versions = call(api, "GET", "/v1/versions")
    assert [(v["version"], v["uri"], v["step"]) for v in versions] == [(0, "/m", 0), (1, "/w/v1", 4)]
    code, _, spec = call(api, "GET", "/openapi.json", token=None)
    assert {"/v1/status", "/v1/scale", "/v1/stop", "/v1/versions", "/v1/events"} <= set(spec["paths"])


def test_events_stream_every_step_record_as_server_sent_events(served):
    api, control, _ = served
    req = urllib.request.Request(api.url + "/v1/events?since=1", headers={"Authorization": f"Bearer {api.token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events, lines = [], []
        control.record_step(step_record(4, reward_mean=0.4, time=104.0))   # arrives while the stream is open
        while len(events) < 3:
            line = r.readline().decode().rstrip("\n")
            if line:
                lines.append(line)
                continue
            fields = dict(x.split(": ", 1) for x in lines)
            lines = []
            events.append((fields["id"], fields["event"], json.loads(fields["data"])["step"]))
    assert events == [("2", "step", 2), ("3", "step", 3), ("4", "step", 4)]


def test_scale_and_stop_record_the_operators_intent_and_the_cli_reaches_a_given_api(served, monkeypatch):
    api, control, _ = served
    code, _, answer = call(api, "POST", "/v1/scale", {"rollout": 2})
    assert code == 202 and answer["desired_actors"] == 2 and control.desired_actors() == 2
    monkeypatch.setenv("VIDEORL_API_TOKEN", api.token)
    r = CliRunner().invoke(main, ["scale", "rollout", "1", "--api", api.url, "--no-wait"])
    assert r.exit_code == 0 and "rollout actors 2 -> 1" in r.output and control.desired_actors() == 1
    r = CliRunner().invoke(main, ["status", "--api", api.url, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["desired_actors"] == 1
    monkeypatch.setenv("VIDEORL_API_TOKEN", "not-the-token")
    r = CliRunner().invoke(main, ["status", "--api", api.url])
    assert r.exit_code == 1 and "401 missing or wrong token" in r.output
    assert control.stop_requested() is None
    code, _, answer = call(api, "POST", "/v1/stop", {})
    assert code == 202 and "checkpoint" in answer["detail"] and control.stop_requested() is not None
    control.clear_stop()


def test_the_server_stops_even_while_an_event_stream_is_open(tmp_path):
    with EmbeddedRedis() as redis:
        api = ApiServer(redis.url, "r2", tmp_path)
        req = urllib.request.Request(api.url + "/v1/events", headers={"Authorization": f"Bearer {api.token}"})
        with urllib.request.urlopen(req, timeout=10) as stream:
            assert stream.status == 200
            api.stop()                    # the run ends while an operator still follows its events
            assert not api.thread.is_alive()
