"""`python -m services.reward` (the reward Deployment's command) as a real process on loopback, with a real Redis:
health, metrics on the configured address, that address recorded in Redis, graceful stop on SIGTERM. Stopped by pid.
"""

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.control import ControlPlane
from services.common.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
# 127.0.0.2 (loopback on Linux) differs from the 127.0.0.1 RewardService records by itself, so the recorded address
# shows the entrypoint's own, configured one.
METRICS_HOST = "127.0.0.2"


def _wait_serving(address: str, timeout_s: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            assert proc.poll() is None, f"reward service exited with {proc.returncode}:\n{log.read_text()}"
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service="videorl.v1.RewardService"), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"not SERVING after {timeout_s}s:\n{log.read_text()}"
            time.sleep(0.2)


def test_reward_entrypoint_serves_health_and_metrics_and_stops_on_sigterm(redis_server, tmp_path):
    run_id = f"t-{uuid.uuid4().hex[:8]}"
    grpc_port, metrics_port = free_port(), free_port()
    config = tmp_path / "config.yaml"   # as the pod's ConfigMap: pod-network host, no redis.url
    config.write_text(f"run_id: {run_id}\nrun_dir: {tmp_path / 'run'}\nreward:\n  host: 0.0.0.0\n  port: 50051\n")
    env = {**os.environ, "VIDEORL_REDIS_URL": redis_server.url, "VIDEORL_METRICS_HOST": METRICS_HOST,
           "VIDEORL_METRICS_PORT": str(metrics_port)}
    env.pop("POD_IP", None)
    log = tmp_path / "reward.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.reward", str(config), "--set", "reward.host=127.0.0.1",
             "--set", f"reward.port={grpc_port}"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    control = ControlPlane(redis_server.url, run_id)
    try:
        _wait_serving(f"127.0.0.1:{grpc_port}", 60, proc, log)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:   # "" = the whole server (liveness probe)
            whole = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert whole.status == health_pb2.HealthCheckResponse.SERVING
        with urllib.request.urlopen(f"http://{METRICS_HOST}:{metrics_port}/metrics", timeout=5) as r:
            body = r.read().decode()
        assert "videorl_reward_completions_total" in body and "videorl_reward_groups_total" in body
        assert control.exporters()["reward"] == f"{METRICS_HOST}:{metrics_port}"
        assert "redis://" not in log.read_text()   # the URL carries the password in a pod: never logged

        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log.read_text()   # graceful: nothing in flight, so well within GRACE_S
        assert "reward service stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        control.close()
