"""rlctl status|scale|stop on Kubernetes against a fake cluster: an HTTP server that answers the Kubernetes API paths
rlctl uses (the run's API token Secret, the RayJob and its RayCluster, the rollout pods, JSON patches) and, like
kube-apiserver, proxies /services/<service>:http/proxy/... to the run's real control API (rlctl/api.py over a real
Redis) after consuming the Authorization header (kubernetes/kubernetes#38775). rlctl runs as the CLI, with the
official kubernetes client and a kubeconfig that points at the fake. A thread stands in for the run's actors: it
follows the desired count in Redis, and a retired actor stops 0.5 s later (it sends what it held first)."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from click.testing import CliRunner

from rlctl.api import ApiServer
from rlctl.cli import main
from services.common.control import ControlPlane
from services.common.redis_server import EmbeddedRedis
from services.common.weights import Manifest

NS, RUN = "ml", "r1"
KUBE_TOKEN = "kube-user-token"
PROXY = f"/api/v1/namespaces/{NS}/services/videorl-{RUN}-api:http/proxy"
HOSTS = {"rollout-0": "pod-b", "rollout-1": "pod-a", "rollout-2": "pod-c"}   # actor -> the pod it runs in


class FakeCluster(ThreadingHTTPServer):
    def __init__(self, api: ApiServer, replicas: int):
        super().__init__(("127.0.0.1", 0), Handler)
        self.api, self.replicas = api, replicas
        self.log: list[tuple[str, str]] = []          # (method, path) of every request, in order
        self.forwarded_auth: list[str | None] = []    # the Authorization header the run's API got through the proxy
        self.patches: list[list[dict]] = []
        self.api_token = api.token
        self.endpoints = True                         # False: the Service has no ready pod (503 from the proxy)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def answer(self, h: Handler, method: str) -> tuple[int, dict | bytes]:
        if h.headers.get("Authorization") != f"Bearer {KUBE_TOKEN}":
            return 401, _status(401, "Unauthorized")
        url = urlparse(h.path)
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        self.log.append((method, url.path))
        if url.path.startswith(PROXY + "/"):
            return self.proxy(h, method, url.path[len(PROXY):], body)
        if url.path == f"/api/v1/namespaces/{NS}/secrets/videorl-{RUN}-api-token":
            return 200, {"kind": "Secret", "apiVersion": "v1", "metadata": {"name": f"videorl-{RUN}-api-token"},
                         "data": {"token": base64.b64encode(self.api_token.encode()).decode()}}
        if url.path.startswith(f"/api/v1/namespaces/{NS}/secrets/"):
            return 404, _status(404, f'secrets "{url.path.rsplit("/", 1)[1]}" not found')
        if url.path == f"/apis/ray.io/v1/namespaces/{NS}/rayjobs/videorl-{RUN}-run":
            return 200, {"status": {"rayClusterName": "r1-raycluster-x"}}
        if url.path == f"/apis/ray.io/v1/namespaces/{NS}/rayclusters/r1-raycluster-x":
            if method == "PATCH":
                ops = json.loads(body)
                self.patches.append(ops)
                self.replicas = next(op["value"] for op in ops if op["path"].endswith("/replicas"))
            return 200, {"metadata": {"name": "r1-raycluster-x"}, "spec": {"workerGroupSpecs": [
                {"groupName": "learner", "replicas": 1}, {"groupName": "rollout", "replicas": self.replicas}]}}
        if url.path == f"/api/v1/namespaces/{NS}/pods":
            assert parse_qs(url.query)["labelSelector"] == ["ray.io/cluster=r1-raycluster-x,ray.io/group=rollout"]
            pods = sorted(HOSTS.values())[: self.replicas]
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {},
                         "items": [{"metadata": {"name": p}, "status": {"phase": "Running"}} for p in pods]}
        return 404, _status(404, f"the server could not find {url.path}")

    def proxy(self, h: Handler, method: str, path: str, body: bytes) -> tuple[int, dict | bytes]:
        if not self.endpoints:
            return 503, _status(503, f'no endpoints available for service "videorl-{RUN}-api"')
        headers = {k: v for k, v in h.headers.items() if k.lower() not in ("authorization", "host")}
        self.forwarded_auth.append(headers.get("Authorization"))
        req = urllib.request.Request(self.api.url + path, data=body or None, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()


class Handler(BaseHTTPRequestHandler):
    server: FakeCluster

    def _do(self, method: str) -> None:
        status, body = self.server.answer(self, method)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server's names
        self._do("GET")

    def do_POST(self):  # noqa: N802
        self._do("POST")

    def do_PATCH(self):  # noqa: N802
        self._do("PATCH")

    def log_message(self, *args):
        pass


def _status(code: int, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code}


def _follow_desired(control: ControlPlane, stop: threading.Event) -> None:
    """The run's side: actors rollout-0.. up to the desired count serve v0 from their pods; the others stop."""
    retiring: dict[str, float] = {}
    while not stop.wait(0.05):
        want = control.desired_actors() or 0
        for i, actor in enumerate(HOSTS):
            if i < want:
                retiring.pop(actor, None)
                control.heartbeat(actor, 0, "running", host=HOSTS[actor])
            elif actor in {a.actor_id for a in control.actors() if a.state == "running"}:
                if time.time() - retiring.setdefault(actor, time.time()) < 0.5:
                    control.heartbeat(actor, 0, "running", host=HOSTS[actor])   # still sending what it held
                else:
                    control.heartbeat(actor, 0, "stopped", host=HOSTS[actor])


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    with EmbeddedRedis() as redis:
        control = ControlPlane(redis.url, RUN)
        control.ensure_streams()
        control.publish_version(Manifest(version=0, uri="/m", bytes=10))
        control.set_desired_actors(1)
        api = ApiServer(redis.url, RUN, tmp_path, token="from-the-secret")
        fake = FakeCluster(api, replicas=1)
        threading.Thread(target=fake.serve_forever, daemon=True).start()
        stop = threading.Event()
        run = threading.Thread(target=_follow_desired, args=(control, stop), daemon=True)
        run.start()
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
            "users": [{"name": "me", "user": {"token": KUBE_TOKEN}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me", "namespace": NS}}]}))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        try:
            yield fake, control
        finally:
            stop.set()
            run.join(5)
            fake.shutdown()
            api.stop()
            control.close()


def rlctl(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_status_scale_and_stop_go_through_the_api_servers_proxy_with_the_runs_token(cluster):
    fake, control = cluster
    r = rlctl("status", "-n", NS, "--run-id", RUN, "--json")
    assert r.exit_code == 0, r.output
    st = json.loads(r.output)
    assert st["run_id"] == RUN and st["desired_actors"] == 1 and st["policy_version"] == 0
    assert fake.forwarded_auth == [None]   # the proxy consumed the kube token; the run's token went as X-Videorl-Token
    assert ("GET", f"/api/v1/namespaces/{NS}/secrets/videorl-{RUN}-api-token") in fake.log
    assert not [p for m, p in fake.log if "/exec" in p]

    fake.log.clear()
    r = rlctl("scale", "rollout", "3", "-n", NS, "--run-id", RUN, "--timeout", "30")
    assert r.exit_code == 0, r.output
    patch = fake.log.index(("PATCH", "/apis/ray.io/v1/namespaces/ml/rayclusters/r1-raycluster-x"))
    assert patch < fake.log.index(("POST", PROXY + "/v1/scale"))    # pods first, then actors
    assert control.desired_actors() == 3 and fake.replicas == 3
    assert "3 rollout actors serve v0" in r.output

    fake.log.clear()
    r = rlctl("scale", "rollout", "1", "-n", NS, "--run-id", RUN, "--timeout", "30")
    assert r.exit_code == 0, r.output
    assert fake.log.index(("POST", PROXY + "/v1/scale")) < len(fake.log) - 1   # actors first
    assert fake.log[-1] == ("PATCH", "/apis/ray.io/v1/namespaces/ml/rayclusters/r1-raycluster-x")
    ops = fake.patches[-1]
    assert {"op": "replace", "path": "/spec/workerGroupSpecs/1/replicas", "value": 1} in ops
    delete = next(op["value"]["workersToDelete"] for op in ops if op["path"].endswith("scaleStrategy"))
    assert delete == ["pod-a", "pod-c"]          # never pod-b: rollout-0, which still serves, runs there
    states = {a.actor_id: a.state for a in control.actors()}
    assert states == {"rollout-0": "running", "rollout-1": "stopped", "rollout-2": "stopped"}

    r = rlctl("stop", "-n", NS, "--run-id", RUN)
    assert r.exit_code == 0, r.output
    assert control.stop_requested() is not None and "stopping" in r.output


def test_kubernetes_failures_are_named(cluster):
    fake, _ = cluster
    r = rlctl("status", "-n", NS, "--run-id", "r2")
    assert r.exit_code != 0 and "secret/videorl-r2-api-token in namespace ml" in r.output
    assert "does not exist" in r.output

    fake.endpoints = False                       # the head pod is not ready: kube-apiserver answers 503
    r = rlctl("scale", "rollout", "2", "-n", NS, "--run-id", RUN)
    assert r.exit_code != 0 and "503" in r.output and "no endpoints available for service" in r.output
    fake.endpoints = True

    fake.api_token = "an-old-token"             # the Secret and the running API disagree
    r = rlctl("stop", "-n", NS, "--run-id", RUN)
    assert r.exit_code != 0 and "401" in r.output and "videorl-<run>-api-token" in r.output
    assert "an-old-token" not in r.output and "from-the-secret" not in r.output

    r = rlctl("status", "-n", NS)
    assert r.exit_code != 0 and "--namespace and --run-id" in r.output
