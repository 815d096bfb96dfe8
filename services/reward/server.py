"""The reward service: a grpc.aio server that assembles groups of K completions, scores them and
writes each scored group to Redis exactly once.

Invariants kept here: a group is written only when all K completions of one prompt arrived and all
carry the same policy version (else it is rejected with a reason); the write is atomic with the
dedupe check (ControlPlane.write_group), so a prompt resent after a reconnect is acked DUPLICATE and
never written twice; every completion received is counted before anything else can fail.

Within one stream, groups are scored concurrently (up to MAX_INFLIGHT_GROUPS; more stops reading the
stream, which is the backpressure) so a slow judge does not serialise an actor's groups, while writes and
acks keep the order in which the groups completed: a prompt resent on the same stream is always the
DUPLICATE one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common import grpc_security
from services.common.config import RewardConfig, RunConfig
from services.common.control import ControlPlane
from services.common.metrics import check_name, exporter_address
from services.common.metrics import serve as serve_metrics
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.common.pb.videorl.v1 import rollout_pb2_grpc as pb_grpc
from services.reward.scoring import Scorer

log = logging.getLogger("videorl.reward")
MAX_GROUP = 1024
MAX_INFLIGHT_GROUPS = 256  # per stream
SERVICE_NAME = "videorl.v1.RewardService"


class RewardMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.completions = Counter(check_name("videorl_reward_completions_total"), "completions received",
                                   registry=registry)
        self.groups = Counter(check_name("videorl_reward_groups_total"), "groups handled", ["status"],
                              registry=registry)
        self.score_seconds = Histogram(check_name("videorl_reward_score_seconds"), "time to score and write a group",
                                       registry=registry)
        self.inflight = Gauge(check_name("videorl_reward_groups_inflight_count"), "groups being scored",
                              registry=registry)
        for status in (pb.GroupAck.SCORED, pb.GroupAck.DUPLICATE, pb.GroupAck.REJECTED):
            self.groups.labels(pb.GroupAck.Status.Name(status).lower())  # 0 from the start, not "no data"


@dataclass
class _Pending:
    completions: dict[int, pb.Completion] = field(default_factory=dict)


@dataclass(frozen=True)
class _Scored:
    group: pb.ScoredGroup
    started: float  # perf_counter when scoring began


def _done(ack: pb.GroupAck) -> asyncio.Future[pb.GroupAck | _Scored]:
    future: asyncio.Future[pb.GroupAck | _Scored] = asyncio.get_running_loop().create_future()
    future.set_result(ack)
    return future


class RewardServicer(pb_grpc.RewardServiceServicer):
    def __init__(self, control: ControlPlane, scorer: Scorer, metrics: RewardMetrics):
        self.control, self.scorer, self.metrics = control, scorer, metrics

    async def StreamCompletions(self, request_iterator, context):  # noqa: N802 - gRPC method name
        queue: asyncio.Queue[asyncio.Future[pb.GroupAck | _Scored] | None] = asyncio.Queue(MAX_INFLIGHT_GROUPS)
        reader = asyncio.create_task(self._read(request_iterator, queue))
        try:
            while (item := await queue.get()) is not None:
                yield await self._finish(await item)
            await reader  # re-raises what ended the stream, if anything did
        finally:
            reader.cancel()
            while not queue.empty():
                if (item := queue.get_nowait()) is not None:
                    item.cancel()

    async def _read(self, request_iterator, queue: asyncio.Queue[asyncio.Future[pb.GroupAck | _Scored] | None]
                    ) -> None:
        """Assemble groups from the stream and start scoring each; the queue keeps their order."""
        pending: dict[str, _Pending] = {}
        try:
            async for c in request_iterator:
                self.metrics.completions.inc()
                await asyncio.to_thread(self.control.incr, "completions_received")
                problem = _invalid(c)
                if problem:
                    pending.pop(c.group_id, None)
                    await queue.put(_done(self._ack(c, pb.GroupAck.REJECTED, problem)))
                    continue
                group = pending.setdefault(c.group_id, _Pending())
                group.completions[c.sample_index] = c
                if len(group.completions) == c.group_size:
                    del pending[c.group_id]
                    await queue.put(asyncio.ensure_future(
                        self._score([group.completions[i] for i in range(c.group_size)])))
        except asyncio.CancelledError:
            raise  # the answering side is gone: nobody waits for the end mark
        except BaseException:
            await queue.put(None)
            raise
        await queue.put(None)

    async def _score(self, group: list[pb.Completion]) -> pb.GroupAck | _Scored:
        """The scored group, or the ack that rejects it."""
        first = group[0]
        versions = {c.policy_version for c in group}
        if len(versions) != 1 or {c.prompt_id for c in group} != {first.prompt_id}:
            return self._ack(first, pb.GroupAck.REJECTED, f"group mixes versions {sorted(versions)} or prompts")
        t0 = time.perf_counter()
        self.metrics.inflight.inc()
        try:
            score = await self.scorer.score(first.prompt, [c.text for c in group])
        finally:
            self.metrics.inflight.dec()
        if score.errors:
            await asyncio.to_thread(self.control.incr, "reward_errors", len(score.errors))
        scored = pb.ScoredGroup(
            run_id=first.run_id, group_id=first.group_id, prompt_id=first.prompt_id,
            policy_version=first.policy_version, prompt=first.prompt, completions=group, rewards=score.totals,
            components=[pb.RewardComponent(name=n, weight=score.weights[n], values=v)
                        for n, v in score.components.items()],
            actor_id=first.actor_id, scored_at=time.time())
        for c in scored.completions:
            c.ClearField("prompt")  # the row is stored once per group, not K times
        return _Scored(scored, t0)

    async def _finish(self, result: pb.GroupAck | _Scored) -> pb.GroupAck:
        """Write a scored group (in stream order) and ack it."""
        if isinstance(result, pb.GroupAck):
            return result
        g = result.group
        written = await asyncio.to_thread(self.control.write_group, g.prompt_id, g.SerializeToString(),
                                          len(g.completions), g.prompt.split == "eval")
        self.metrics.score_seconds.observe(time.perf_counter() - result.started)
        status = pb.GroupAck.SCORED if written else pb.GroupAck.DUPLICATE
        return self._ack(g, status, "" if written else "prompt already scored", list(g.rewards))

    def _ack(self, c: pb.Completion | pb.ScoredGroup, status: pb.GroupAck.Status, reason: str,
             rewards: list[float] | None = None) -> pb.GroupAck:
        self.metrics.groups.labels(pb.GroupAck.Status.Name(status).lower()).inc()
        if status == pb.GroupAck.REJECTED:
            log.warning("group %s rejected: %s", c.group_id, reason)
        return pb.GroupAck(group_id=c.group_id, prompt_id=c.prompt_id, status=status, reason=reason,
                           rewards=rewards or [])


def _invalid(c: pb.Completion) -> str:
    """Why a completion cannot belong to any group, or '' if it can."""
    if not c.group_id or not c.prompt_id:
        return "completion without group_id or prompt_id"
    if not 1 <= c.group_size <= MAX_GROUP:
        return f"group_size {c.group_size} outside 1..{MAX_GROUP}"
    if c.sample_index >= c.group_size:
        return f"sample_index {c.sample_index} >= group_size {c.group_size}"
    if len(c.logprobs) != len(c.completion_token_ids):
        return f"{len(c.logprobs)} logprobs for {len(c.completion_token_ids)} tokens"
    return ""


async def start_server(control: ControlPlane, scorer: Scorer, registry: CollectorRegistry,
                       host: str = "127.0.0.1", port: int = 0,
                       security: RewardConfig | None = None) -> tuple[grpc.aio.Server, int]:
    """Start the reward gRPC server with the standard health service; returns (server, bound port).

    With `security` (the run's reward config): TLS and the token check as it sets them (grpc_security)."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)],
                             interceptors=grpc_security.server_interceptors(security) if security else None)
    pb_grpc.add_RewardServiceServicer_to_server(RewardServicer(control, scorer, RewardMetrics(registry)), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    creds = grpc_security.server_credentials(security) if security else None
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    if bound == 0:
        raise RuntimeError(f"reward service cannot bind {host}:{port}")
    await server.start()
    for name in (SERVICE_NAME, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, bound


async def start_health_server(host: str, port: int) -> grpc.aio.Server:
    """A plaintext server with only the health service, SERVING: for Kubernetes' gRPC probes, which speak neither
    TLS nor tokens. Started after the main server, so SERVING here means the main server is up too."""
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise RuntimeError(f"reward service cannot bind its health port {host}:{port}")
    await server.start()
    for name in (SERVICE_NAME, ""):
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server


class RewardService:
    """The reward server as a long-lived object (a Ray actor locally; `python -m services.reward` in a pod)."""

    def __init__(self, cfg: RunConfig, redis_url: str):
        self.cfg, self.control = cfg, ControlPlane(redis_url, cfg.run_id)
        self.registry = CollectorRegistry()
        self.server: grpc.aio.Server | None = None
        self.probe: grpc.aio.Server | None = None      # the plaintext health-only server (reward.health_port)
        self.scorer: Scorer | None = None

    async def start(self) -> int:
        self.scorer = Scorer(self.cfg.reward, self.registry)
        self.server, port = await start_server(self.control, self.scorer, self.registry,
                                               self.cfg.reward.host, self.cfg.reward.port, security=self.cfg.reward)
        if self.cfg.reward.health_port is not None:
            self.probe = await start_health_server(self.cfg.reward.host, self.cfg.reward.health_port)
        self.control.register_exporter("reward", exporter_address(serve_metrics(self.registry)))
        return port

    async def wait(self) -> None:
        """Return when the server has stopped. `rlctl run` keeps this call pending: its error is how the run
        learns that the service's process died (and starts another on the same port)."""
        assert self.server is not None, "start() first"
        await self.server.wait_for_termination()

    async def stop(self, grace_s: float = 5.0) -> None:
        if self.probe is not None:
            await self.probe.stop(0)
        if self.server is not None:
            await self.server.stop(grace_s)
        if self.scorer is not None:
            await self.scorer.aclose()
