"""The reward service's memory bound: completion slots held over all its streams (reward.max_held_completions),
granted in arrival order, and the pause metrics of a stream whose reading waits for room (the backpressure: gRPC
flow control then stops the actor's writes). See services/reward/server.py's module docstring for the rules."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Iterator

from services.reward.service_metrics import RewardMetrics


@contextlib.contextmanager
def paused(metrics: RewardMetrics, limit: str) -> Iterator[None]:
    """Count a pause of one stream's reading, caused by `limit` (one of LIMITS), and its length."""
    metrics.pauses.labels(limit).inc()
    metrics.paused.labels(limit).inc()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        metrics.paused.labels(limit).dec()
        metrics.pause_seconds.labels(limit).inc(time.perf_counter() - t0)


class HeldBudget:
    """Completion slots held over all streams, at most `limit` (reward.max_held_completions), see the module
    docstring. Waiters are served in arrival order, so a large group is not starved by small ones. A group larger
    than the whole limit is let in only when nothing else is held: it could never fit otherwise."""

    def __init__(self, limit: int, metrics: RewardMetrics):
        self.limit, self.held, self.peak, self.metrics = limit, 0, 0, metrics
        self._line: deque[tuple[int, asyncio.Future[None]]] = deque()
        metrics.held_limit.set(limit)

    def must_wait(self, n: int) -> bool:
        return bool(self._line) or not self._fits(n)

    async def take(self, n: int) -> None:
        if not self.must_wait(n):
            self._add(n)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._line.append((n, waiter))
        with paused(self.metrics, "service"):
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self.give(n)  # granted just as the stream went away
                else:
                    with contextlib.suppress(ValueError):
                        self._line.remove((n, waiter))
                    self._grant()  # those behind it may fit now
                raise

    def give(self, n: int) -> None:
        self.held -= n
        self.metrics.held.set(self.held)
        self._grant()

    def _fits(self, n: int) -> bool:
        return self.held == 0 or self.held + n <= self.limit

    def _add(self, n: int) -> None:
        self.held += n
        self.metrics.held.set(self.held)
        if self.held > self.peak:
            self.peak = self.held
            self.metrics.held_peak.set(self.held)

    def _grant(self) -> None:
        while self._line:
            n, waiter = self._line[0]
            if waiter.done():  # cancelled: its stream is gone
                self._line.popleft()
                continue
            if not self._fits(n):
                return
            self._line.popleft()
            self._add(n)
            waiter.set_result(None)
