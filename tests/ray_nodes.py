"""A Ray cluster of several nodes on one machine, for the multi-node tests: each node is a raylet of its own, started
with `ray start --block` as a process of its own session on loopback, and stopped by that process's group and the pids
under it, never by name (`ray stop` would stop every Ray on the machine). The head offers no work resources (num-cpus
0), as in the RayJob (deploy/k8s/base/rayjob.yaml); worker nodes offer the custom resources of its worker groups.

Every node gets the environment rlctl/cluster.py gives a run that joins a cluster, with auth off as for a local Ray
and this checkout on PYTHONPATH (so the Ray workers it starts import the code under test). Not
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: with it a worker node refuses to join a head. Without it Ray replaces 127.0.0.1
as a node address with the machine's routable one, but not the rest of 127.0.0.0/8: each node gets an address of its
own there (127.0.0.2 for the head, then .3, .4, ...), as each pod has its own IP, and every Ray socket stays on
loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from rlctl.cluster import ClusterTarget
from services.common.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
# Each node's own socket folder: a short path (unix socket paths are limited to 107 bytes), not a pytest tmp_path.
TEMP_PREFIX = "/tmp/vrl-node-"
JOIN_TIMEOUT_S = 240.0
# The GCS marks a node dead after this many failed health checks this far apart (Ray's defaults: 5 x 3 s).
HEALTH_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
              "RAY_health_check_initial_delay_ms": "1000"}


def node_ip(index: int) -> str:
    """The loopback address of the cluster's `index`-th node launched (0: the head)."""
    return f"127.0.0.{2 + index}"


def node_env() -> dict[str, str]:
    """The environment of every Ray node, and of a driver that joins them (the RayJob's entrypoint runs in the head
    pod's environment): what rlctl sets for a run that joins a cluster, auth off, this checkout on PYTHONPATH."""
    joining = ClusterTarget(ray_address="any").process_env()
    env = {**os.environ, **joining, "RAY_AUTH_MODE": "disabled",
           **HEALTH_ENV, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)   # set to 0 by importing rlctl in this process
    return env


@dataclass
class RayNode:
    """One raylet: `ray start --block` (`proc`, leading a process group) and everything it started."""

    name: str
    args: Callable[[str], list[str]]     # `ray start` arguments for the node's address
    log: Path
    resources: dict[str, float] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    ip: str = ""
    temp_dir: Path | None = None
    node_id: str | None = None           # set once the GCS lists it alive (RayCluster.joined)

    def launch(self, ip: str) -> None:
        self.ip, self.node_id = ip, None
        self.temp_dir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(RAY), "start", "--block", "--node-ip-address", ip, "--temp-dir", str(self.temp_dir),
                 "--object-store-memory", str(100 * 2**20), "--disable-usage-stats",
                 "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
                 *self.args(ip)], env=node_env(), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)

    def processes(self) -> list[psutil.Process]:
        """`ray start` and every process under it (raylet, Ray workers, the vLLM engines they started)."""
        try:
            root = psutil.Process(self.proc.pid) if self.proc else None
            return [root, *root.children(recursive=True)] if root else []
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL the node's process group, as a pod or a machine lost at once: no raylet says goodbye. Processes
        that left the group (none should) are killed by their pids."""
        left = self.processes()
        self._kill_group()
        _kill_all(left)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM `ray start --block` (it stops what it started), then SIGKILL whatever of the node is left; its Ray
        logs are kept next to its `ray start` log (ray-<name>/), its temp folder removed."""
        left = self.processes()
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self._kill_group()
        _kill_all(left)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.wait(timeout=30)
        if self.temp_dir is not None:
            logs = self.temp_dir / "session_latest" / "logs"
            if logs.is_dir():
                shutil.copytree(logs, self.log.with_suffix(""), dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("*.sock"))
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None

    def _kill_group(self) -> None:
        try:
            if self.proc is not None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


class RayCluster:
    """A head (no work resources) and worker nodes (`add`, or `launch` then `joined`); `close()` stops them all."""

    def __init__(self, logs: Path):
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.address = ""   # the head's GCS, host:port: RAY_ADDRESS of a driver that joins
        self.nodes: list[RayNode] = []
        self.launches = 0   # every launch takes a new address

    def start(self) -> RayCluster:
        """The head (with the dashboard, which serves the state API, as the RayJob's head does)."""
        def head_args(ip: str) -> list[str]:
            port = free_port()
            self.address = f"{ip}:{port}"
            return ["--head", "--port", str(port), "--num-cpus", "0", "--ray-client-server-port", str(free_port()),
                    "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port",
                    str(free_port())]

        try:
            self.joined(self._launch(RayNode("head", head_args, self.logs / "ray-head.log")))
        except BaseException:
            self.close()
            raise
        return self

    def launch(self, name: str, resources: dict[str, float], num_cpus: int = 2) -> RayNode:
        """Start a worker node offering `resources` (and `num_cpus`); `joined()` waits for it. Its CPUs bound how many
        Ray workers its raylet starts at once (maximum_startup_concurrency): with 1, a node's two actors start one
        after the other, and on a loaded machine each can take half a minute."""
        def args(ip: str) -> list[str]:
            return ["--address", self.address, "--num-cpus", str(num_cpus), "--resources", json.dumps(resources)]

        return self._launch(RayNode(name, args, self.logs / f"ray-{name}.log", resources))

    def add(self, name: str, resources: dict[str, float], num_cpus: int = 2) -> RayNode:
        """A worker node, once the GCS lists it alive."""
        node = self.launch(name, resources, num_cpus)
        self.joined(node)
        return node

    def joined(self, *nodes: RayNode, tries: int = 3) -> None:
        """Wait until the GCS lists each of `nodes` alive, found by its address. On a loaded machine a raylet can miss
        `ray start`'s fixed 30 s to register, and `ray start` gives up: that node is started again, at a new address
        (the GCS may still list the one that gave up), up to `tries` times in all."""
        deadline, starts = time.monotonic() + JOIN_TIMEOUT_S, {n.name: 1 for n in nodes}
        while waiting := [n for n in nodes if n.node_id is None]:
            try:
                alive = {n["node_ip"]: n["node_id"] for n in self.alive_nodes()}
            except Exception:  # noqa: BLE001 - the head's GCS or dashboard may not answer yet: retried
                alive = {}
            for node in waiting:
                node.node_id = alive.get(node.ip)
                if node.node_id is None and node.proc is not None and node.proc.poll() is not None:
                    if starts[node.name] == tries:
                        raise RuntimeError(f"ray node {node.name} did not start (exit {node.proc.returncode}):\n"
                                           f"{node.log.read_text()[-3000:]}")
                    starts[node.name] += 1
                    node.stop()
                    self._start(node)
            if time.monotonic() > deadline:
                raise TimeoutError(f"ray nodes {[n.name for n in waiting]} did not join in {JOIN_TIMEOUT_S:.0f}s")
            time.sleep(0.5)

    def _launch(self, node: RayNode) -> RayNode:
        self.nodes.append(node)
        self._start(node)
        return node

    def _start(self, node: RayNode) -> None:
        node.launch(node_ip(self.launches))
        self.launches += 1

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.state("list_nodes") if n["state"] == "ALIVE"]

    def state(self, what: str, **kw) -> list[dict]:
        """A `ray.util.state` listing (list_nodes, list_actors, ...) of this cluster, as dicts."""
        from ray.util import state

        rows = getattr(state, what)(address=self.address, limit=10_000, raise_on_missing_output=False, **kw)
        return [r if isinstance(r, dict) else r.__dict__ for r in rows]

    def close(self) -> None:
        """Workers first, then the head."""
        for node in reversed(self.nodes):
            node.stop()
        self.nodes.clear()

    def __enter__(self) -> RayCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
