"""A rollout actor's stream to the reward service, kept open across reward-service restarts.

Invariants kept here:
- a group is held, with its completions, from the moment it is handed to `send` until the reward service acks it
  (SCORED, DUPLICATE or REJECTED); each time the stream is (re)opened every held group is written again before any
  new one, so a group the dead service lost is scored by its successor, and one it had already written comes back
  DUPLICATE (the service dedups by prompt id), which counts as done: no group is lost, none is written twice;
- a broken stream (the service died or restarted: UNAVAILABLE and the like) is reopened with exponential backoff,
  0.1 s doubling up to rollout.faults.reconnect_max_s; a service that acks nothing for
  rollout.faults.reward_outage_s after the break, or that refuses the call outright (UNAUTHENTICATED,
  UNIMPLEMENTED, ...), is a `RewardUnreachable` error naming its address;
- all writes hold one lock, so a resend never interleaves with another group's completions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from services.common import grpc_security
from services.common.config import RunConfig
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.common.pb.videorl.v1 import rollout_pb2_grpc as pb_grpc

log = logging.getLogger("videorl.rollout")
FIRST_BACKOFF_S = 0.1
# Codes a restarting or overloaded service produces; any other code will not change by asking again.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL,
                       grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED,
                       grpc.StatusCode.DEADLINE_EXCEEDED})


class RewardUnreachable(RuntimeError):
    """The reward service refused the stream, or stayed away longer than rollout.faults.reward_outage_s."""


@dataclass(frozen=True)
class Held:
    entry_id: str                      # the prompt's entry in the Redis stream, acked once the group is
    completions: list[pb.Completion]   # kept to be written again on a new stream


class RewardLink:
    """`run()` keeps the stream open and reads acks (calling `on_ack(ack, entry_id)` for each held group);
    `send()` hands it a group; `close()` waits for the acks of what was sent and ends the stream."""

    def __init__(self, cfg: RunConfig, address: str, on_ack: Callable[[pb.GroupAck, str], Awaitable[None]]):
        self.cfg, self.address, self.on_ack = cfg, address, on_ack
        self.held: dict[str, Held] = {}   # group_id -> prompt entry and completions, until acked
        self.reconnects = 0
        self.resent = 0                   # groups written again on a new stream
        self._call: grpc.aio.StreamStreamCall | None = None
        self._lock = asyncio.Lock()
        self._up = asyncio.Event()
        self._closing = False
        self._progress = False

    async def wait_up(self, timeout_s: float) -> bool:
        """True once a stream is open (at most timeout_s from now)."""
        try:
            await asyncio.wait_for(self._up.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def send(self, group_id: str, entry_id: str, completions: list[pb.Completion]) -> None:
        async with self._lock:
            self.held[group_id] = Held(entry_id, completions)
            if self._call is not None:
                await self._write(self._call, completions)   # a failure here is resent by run() on the next stream

    async def run(self) -> None:
        """Serve the stream until `close()`; raises RewardUnreachable (see the module docstring)."""
        r = self.cfg.rollout.faults
        backoff, down_since = FIRST_BACKOFF_S, None
        while not self._closing:
            try:
                if await self._serve_one():
                    return
                error = "the service ended the stream"
            except grpc.aio.AioRpcError as e:
                if e.code() not in RETRYABLE:
                    raise RewardUnreachable(f"reward service at {self.address} refused the stream: "
                                            f"{e.code().name} {e.details()}") from None
                error = f"{e.code().name} {e.details()}"
            if self._progress:
                backoff, down_since = FIRST_BACKOFF_S, None
            now = time.monotonic()
            down_since = down_since or now
            if now - down_since > r.reward_outage_s:
                raise RewardUnreachable(f"reward service at {self.address} unreachable for {now - down_since:.0f}s "
                                        f"(rollout.faults.reward_outage_s={r.reward_outage_s:g}); last error: {error}")
            log.warning("stream to the reward service at %s broke (%s); reconnecting in %.1fs, %d groups to resend",
                        self.address, error, backoff, len(self.held))
            self.reconnects += 1
            await asyncio.sleep(backoff)
            backoff = min(2 * backoff, r.reconnect_max_s)

    async def _serve_one(self) -> bool:
        """One stream: open it, write every held group again, read acks until it ends. True if it ended by close()."""
        self._progress = False   # an ack, or an open stream with nothing to prove, resets the outage clock
        cfg = self.cfg.reward
        async with grpc_security.open_channel(cfg, self.address) as channel:
            call = pb_grpc.RewardServiceStub(channel).StreamCompletions(metadata=grpc_security.call_metadata(cfg))
            try:
                await call.wait_for_connection()
                async with self._lock:
                    again = list(self.held.values())
                    for h in again:
                        if not await self._write(call, h.completions):
                            await call.wait_for_connection()   # raises the status that broke the stream
                            return False
                    if self.reconnects and again:
                        self.resent += len(again)
                        log.info("resent %d unacked groups to the reward service at %s", len(again), self.address)
                    self._call = call
                    self._progress = not self.held
                self._up.set()
                async for ack in call:
                    self._progress = True
                    held = self.held.pop(ack.group_id, None)
                    if held is not None:
                        await self.on_ack(ack, held.entry_id)
                return self._closing
            finally:
                self._up.clear()
                self._call = None
                call.cancel()

    async def _write(self, call: grpc.aio.StreamStreamCall, completions: list[pb.Completion]) -> bool:
        try:
            for c in completions:
                await call.write(c)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as e:
            log.warning("writing to the reward service at %s failed (%s): resent on the next stream", self.address,
                        e.code().name if isinstance(e, grpc.aio.AioRpcError) else e)
            return False
        return True

    async def close(self, task: asyncio.Task, timeout_s: float = 30.0) -> None:
        """Wait (up to timeout_s) for the acks of every held group, then end the stream and let `task` (this
        link's `run()`) return. What is still held then stays pending in Redis, for another actor to reclaim."""
        deadline = time.monotonic() + timeout_s
        while self.held and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.05)
        self._closing = True
        async with self._lock:
            if self._call is not None:
                try:
                    await self._call.done_writing()
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    pass   # already broken: nothing left to end
        try:
            await asyncio.wait_for(asyncio.shield(task), max(1.0, deadline - time.monotonic()))
        except TimeoutError:
            task.cancel()
