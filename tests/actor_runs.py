"""What the tests that run a RolloutActor against an in-process reward server share (importable from any test:
tests/ is on sys.path through tests/conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_for(condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.02) -> bool:
    """Poll `condition` until it holds (True) or `timeout_s` passed (False); the caller's assertions say what failed."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(poll_s)
    return True


async def stop_actor(actor, task: asyncio.Task, server) -> dict:
    """Stop the actor, wait for its run() to return its totals, then stop the reward server."""
    await actor.stop()
    stats = await task
    await server.stop(1)
    return stats
