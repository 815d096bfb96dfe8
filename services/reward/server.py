"""The reward service: a grpc.aio server that assembles groups of K completions, scores them and
writes each scored group to Redis exactly once.

Invariants kept here: a group is written only when all K completions of one prompt arrived and all
carry the same policy version (else it is rejected with a reason); the write is atomic with the
dedupe check (ControlPlane.write_group), so a prompt resent after a reconnect is acked DUPLICATE and
never written twice; every completion received is counted before anything else can fail.

Within one stream, groups are scored concurrently (up to MAX_INFLIGHT_GROUPS awaiting their ack; more stops
reading the stream) so a slow judge does not serialise an actor's groups, while writes and acks keep the order in
which the groups completed: a prompt resent on the same stream is always the DUPLICATE one.

Memory stays bounded however many actors stream at once (HeldBudget): a group takes K slots of
reward.max_held_completions when its first completion arrives and gives them back once acked or rejected; a stream
that needs slots while none are free is not read until some are (first come, first served), so gRPC flow control
stops its actor's writes. A stream holds at most reward.max_open_groups_per_stream unfinished groups (one more
rejects its oldest, with the reason), and one that must wait for slots first rejects its own unfinished groups: their
missing completions lie behind the read that waits, so streams could otherwise wait on each other forever. Actors
send each group's completions together (RewardLink), so neither rejection happens to them. Every pause is counted
(videorl_reward_backpressure_*), by the bound that caused it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from services.common import grpc_security
from services.common.config import RunConfig
from services.common.control import ControlPlane
from services.common.metrics import exporter_address
from services.common.metrics import serve as serve_metrics
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.common.pb.videorl.v1 import rollout_pb2_grpc as pb_grpc
from services.common.reward_config import RewardConfig
from services.reward.budget import HeldBudget, paused
from services.reward.scoring import Scorer
from services.reward.service_metrics import RewardMetrics

log = logging.getLogger("videorl.reward")
MAX_GROUP = 1024
MAX_INFLIGHT_GROUPS = 256  # per stream, awaiting their write and ack
SERVICE_NAME = "videorl.v1.RewardService"


@dataclass
class _Open:
    """A group whose first completion arrived; its `size` slots are taken."""
    size: int
    completions: dict[int, pb.Completion] = field(default_factory=dict)


@dataclass(frozen=True)
class _Scored:
    group: pb.ScoredGroup
    started: float  # perf_counter when scoring began


def _done(ack: pb.GroupAck) -> asyncio.Future[pb.GroupAck | _Scored]:
    future: asyncio.Future[pb.GroupAck | _Scored] = asyncio.get_running_loop().create_future()
    future.set_result(ack)
    return future


Outcome = asyncio.Future[pb.GroupAck | _Scored]


class _Stream:
    """One StreamCompletions call's share of the service: its unfinished groups, its queue of outcomes awaiting their
    ack (in order, each with the slots it gives back once acked) and the slots it holds in all."""

    def __init__(self, budget: HeldBudget, metrics: RewardMetrics):
        self.budget, self.metrics = budget, metrics
        self.open: dict[str, _Open] = {}  # oldest first
        self.queue: asyncio.Queue[tuple[Outcome, int] | None] = asyncio.Queue(MAX_INFLIGHT_GROUPS)
        self.slots = 0

    def open_group(self, group_id: str, size: int) -> _Open:
        """Record a group whose `size` slots were just taken."""
        self.slots += size
        self.metrics.open_groups.inc()
        group = self.open[group_id] = _Open(size)
        return group

    def finish_group(self, group_id: str) -> _Open:
        """The group leaves the unfinished ones; its slots stay held (by its outcome) until given back."""
        self.metrics.open_groups.dec()
        return self.open.pop(group_id)

    def give(self, n: int) -> None:
        self.slots -= n
        self.budget.give(n)

    def close(self) -> None:
        """Give back everything still held: unfinished groups and outcomes never acked."""
        self.metrics.open_groups.dec(len(self.open))
        self.open.clear()
        self.give(self.slots)


class RewardServicer(pb_grpc.RewardServiceServicer):
    def __init__(self, control: ControlPlane, scorer: Scorer, metrics: RewardMetrics, limits: RewardConfig):
        self.control, self.scorer, self.metrics, self.limits = control, scorer, metrics, limits
        self.budget = HeldBudget(limits.max_held_completions, metrics)

    async def StreamCompletions(self, request_iterator, context):  # noqa: N802 - gRPC method name
        stream = _Stream(self.budget, self.metrics)
        self.metrics.streams.inc()
        reader = asyncio.create_task(self._read(request_iterator, stream))
        try:
            while (item := await stream.queue.get()) is not None:
                outcome, slots = item
                ack = await self._finish(await outcome)
                stream.give(slots)
                yield ack
            await reader  # re-raises what ended the stream, if anything did
        finally:
            reader.cancel()
            while not stream.queue.empty():
                if (item := stream.queue.get_nowait()) is not None:
                    item[0].cancel()
            stream.close()
            self.metrics.streams.dec()

    async def _read(self, request_iterator, stream: _Stream) -> None:
        """Assemble groups from the stream and start scoring each; the queue keeps their order.

        Completions are counted in Redis (completions_received) once per group, before the completion that ends it
        is added (so before the group can be scored), and at the stream's end: one round trip per group instead of
        one per completion, which at 64 actors held each group's ack back by most of a second."""
        uncounted = 0
        try:
            async for c in request_iterator:
                self.metrics.completions.inc()
                uncounted += 1
                if c.sample_index >= c.group_size - 1:
                    await asyncio.to_thread(self.control.incr, "completions_received", uncounted)
                    uncounted = 0
                await self._add(c, stream)
        except asyncio.CancelledError:
            raise  # the answering side is gone: nobody waits for the end mark
        except BaseException:
            await stream.queue.put(None)
            raise
        finally:
            if uncounted:
                await asyncio.shield(asyncio.to_thread(self.control.incr, "completions_received", uncounted))
        await stream.queue.put(None)

    async def _add(self, c: pb.Completion, stream: _Stream) -> None:
        """Put a completion into its group: reject it, open the group, or complete it and start scoring."""
        group = stream.open.get(c.group_id)
        problem = _invalid(c)
        if not problem and group is not None and c.group_size != group.size:
            problem = f"group_size {c.group_size} differs from {group.size} of the group's first completion"
        if problem:
            if group is not None:
                stream.give(stream.finish_group(c.group_id).size)
            await self._put(stream, _done(self._ack(c, pb.GroupAck.REJECTED, problem)), 0)
            return
        if group is None:
            group = await self._open(c, stream)
        group.completions[c.sample_index] = c
        if len(group.completions) == group.size:
            stream.finish_group(c.group_id)
            await self._put(stream, asyncio.ensure_future(
                self._score([group.completions[i] for i in range(group.size)])), group.size)

    async def _open(self, c: pb.Completion, stream: _Stream) -> _Open:
        """Take the slots of the group `c` opens, first rejecting what the module docstring says must go."""
        rejected: list[pb.GroupAck] = []
        if len(stream.open) >= self.limits.max_open_groups_per_stream:
            rejected.append(self._drop(stream, next(iter(stream.open)), (
                f"the stream opened a group beyond {self.limits.max_open_groups_per_stream} unfinished ones "
                "(reward.max_open_groups_per_stream): its oldest unfinished group is dropped")))
        if stream.open and self.budget.must_wait(c.group_size):  # no await from here to take()
            rejected += [self._drop(stream, gid, (
                f"unfinished when the service held reward.max_held_completions={self.budget.limit} completions: a "
                "stream that waits for room keeps no unfinished group (send a group's completions together)"))
                for gid in list(stream.open)]
        await self.budget.take(c.group_size)
        group = stream.open_group(c.group_id, c.group_size)
        for ack in rejected:
            await self._put(stream, _done(ack), 0)
        return group

    def _drop(self, stream: _Stream, group_id: str, reason: str) -> pb.GroupAck:
        group = stream.finish_group(group_id)
        stream.give(group.size)
        return self._ack(next(iter(group.completions.values())), pb.GroupAck.REJECTED, reason)

    async def _put(self, stream: _Stream, outcome: Outcome, slots: int) -> None:
        """Queue an outcome for its ack, in stream order; a full queue stops reading (counted as a pause)."""
        try:
            if stream.queue.full():
                with paused(self.metrics, "stream"):
                    await stream.queue.put((outcome, slots))
            else:
                stream.queue.put_nowait((outcome, slots))
        except asyncio.CancelledError:
            outcome.cancel()
            raise

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
        except Exception as e:  # noqa: BLE001 - a scorer bug on one input must not break the stream: else the
            # actor resends the same group forever. The group is rejected, named, counted; the stream goes on.
            log.exception("scoring group %s (prompt %s) failed", first.group_id, first.prompt_id)
            await asyncio.to_thread(self.control.incr, "groups_scoring_failed")
            return self._ack(first, pb.GroupAck.REJECTED, f"scoring failed: {type(e).__name__}: {str(e)[:200]}")
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
                       security: RewardConfig | None = None, limits: RewardConfig | None = None
                       ) -> tuple[grpc.aio.Server, int]:
    """Start the reward gRPC server with the standard health service; returns (server, bound port).

    With `security` (the run's reward config): TLS and the token check as it sets them (grpc_security). The bounds
    on held work (max_held_completions, max_open_groups_per_stream) are `limits`', else `security`'s, else the
    defaults."""
    limits = limits or security or RewardConfig()
    # No BDP probing: a stream's flow-control window stays at gRPC's 64 KiB instead of growing to the estimated
    # bandwidth-delay product. What an actor wrote before its stream was paused waits in gRPC's buffers, outside
    # max_held_completions; with probing, 80 flooding streams on loopback held ~40 MB more there (bench/results/
    # reward_load.md). A LAN's round trip is well under a millisecond, so 64 KiB per stream still moves >60 MB/s.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.http2.bdp_probe", 0)],
                             interceptors=grpc_security.server_interceptors(security) if security else None)
    servicer = RewardServicer(control, scorer, RewardMetrics(registry), limits)
    pb_grpc.add_RewardServiceServicer_to_server(servicer, server)
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
                                               self.cfg.reward.host, self.cfg.reward.port, security=self.cfg.reward,
                                               limits=self.cfg.reward)
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
