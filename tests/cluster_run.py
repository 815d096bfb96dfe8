"""A run as the RayJob runs it, on a RayCluster of tests/ray_nodes.py: a standalone redis-server with a password (the
cluster's Redis), the reward service as its own process (`python -m services.reward`, the reward Deployment's command)
and `rlctl run` as the entrypoint (deploy/k8s/base/config/run.sh) with RAY_ADDRESS, VIDEORL_REWARD_ADDRESS and
`redis.url` set. Every process is stopped by its pid."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ray_nodes import ROOT, RayCluster, node_env

from services.common.control import ControlPlane
from services.common.processes import free_port, stop_process
from services.common.redis_server import EmbeddedRedis

PASSWORD = "multinode-test-password-0123456789"


def run_config(tmp_path: Path, steps: int, **sections: dict) -> dict:
    """A short run: the tiny embedded model, 2 rollout actors, a learner of 2 ranks, a version every 2 steps, a
    checkpoint every 3. `sections` are merged into the config's (e.g. supervisor={...})."""
    cfg: dict = {"run_id": f"mn-{uuid.uuid4().hex[:6]}", "run_dir": str(tmp_path / "run"), "group_size": 4,
                 "rollout": {"num_actors": 2, "prompts_per_batch": 2, "max_new_tokens": 16},
                 "learner": {"steps": steps, "groups_per_step": 2, "publish_every": 2, "checkpoint_every": 3,
                             "eval_every": 0, "ranks": 2},
                 "data": {"synth_eval": 4}}
    for name, fields in sections.items():
        cfg[name] = {**cfg.get(name, {}), **fields}
    return cfg


def actors_by_class(cluster: RayCluster, run_id: str) -> dict[str, list[dict]]:
    """The run's Ray actors by class name, from the state API (which keeps dead actors for a while)."""
    out: dict[str, list[dict]] = {}
    for a in cluster.state("list_actors"):
        if (a.get("name") or "").startswith(f"{run_id}-"):
            out.setdefault(a["class_name"], []).append(a)
    return out


class ClusterRun:
    """`config` (a dict) is written where both the reward service and `rlctl run` read it, like the ConfigMap."""

    def __init__(self, cluster: RayCluster, tmp: Path, config: dict):
        self.cluster, self.tmp = cluster, tmp
        self.run_id = config["run_id"]
        self.config = tmp / "config.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.redis = EmbeddedRedis(tmp / "redis", password=PASSWORD)
        self.reward_port = free_port()
        self.reward: subprocess.Popen | None = None
        self.proc: subprocess.Popen | None = None     # rlctl run
        self.log = tmp / "rlctl.log"
        self.control: ControlPlane | None = None

    def start_services(self, timeout_s: float = 120.0) -> ControlPlane:
        """Redis (with AUTH) and the reward service, SERVING; a control plane on the run's keys."""
        self.redis.start()
        env = {**node_env(), "VIDEORL_REDIS_URL": self.redis.url}
        log = self.tmp / "reward.log"
        with open(log, "wb") as out:
            self.reward = subprocess.Popen(
                [sys.executable, "-m", "services.reward", str(self.config), "--set", "reward.host=127.0.0.1",
                 "--set", f"reward.port={self.reward_port}"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        _wait_serving(f"127.0.0.1:{self.reward_port}", timeout_s, self.reward, log)
        self.control = ControlPlane(self.redis.url, self.run_id)
        return self.control

    def start_run(self) -> subprocess.Popen:
        """`rlctl run CONFIG --set redis.url=...`, joining the cluster as the RayJob's entrypoint does."""
        env = {**node_env(), "RAY_ADDRESS": self.cluster.address,
               "VIDEORL_REWARD_ADDRESS": f"127.0.0.1:{self.reward_port}", "COLUMNS": "200"}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rlctl.cli", "run", str(self.config), "--set", f"redis.url={self.redis.url}"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        return self.proc

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, timeout_s: float) -> None:
        """Until `rlctl run` exits; fails with its output unless it exited 0."""
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"rlctl run did not finish in {timeout_s:.0f}s:\n{self.output()[-6000:]}") from None
        assert rc == 0, f"rlctl run exited with {rc}:\n{self.output()[-6000:]}"

    def close(self) -> None:
        # SIGINT first: rlctl stops what it started (on KeyboardInterrupt), then everything else by pid
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        stop_process(self.reward, term_timeout_s=30)
        if self.control is not None:
            self.control.close()
        self.redis.stop()

    def __enter__(self) -> ClusterRun:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
            assert time.monotonic() < deadline, f"reward service not SERVING after {timeout_s}s:\n{log.read_text()}"
            time.sleep(0.5)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
