"""`python -m services.reward CONFIG [--set key=value ...]`: the reward service as a process of its own, the
command of the reward Deployment (deploy/k8s/base/reward.yaml). Locally `rlctl run` runs the same RewardService
as a Ray actor instead.

Story: config (+ --set) -> Redis URL -> wait for Redis -> RewardService.start (gRPC on reward.host:reward.port,
health SERVING once it listens, metrics exporter on VIDEORL_METRICS_HOST:VIDEORL_METRICS_PORT) -> record the
exporter's reachable address -> serve until SIGTERM/SIGINT -> graceful stop.

Invariants: the Redis URL (it carries the password) is never logged; SIGTERM stops the server gracefully within
GRACE_S, below the pod's terminationGracePeriodSeconds (30), so streams in flight finish their groups or the actors
resend them after the stop (groups are written exactly once either way, see server.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path

import redis

from services.common.config import ConfigError, RunConfig, load_config
from services.reward.server import RewardService

log = logging.getLogger("videorl.reward")
REDIS_URL_ENV = "VIDEORL_REDIS_URL"
GRACE_S = 20.0          # the pod gets 30 s after SIGTERM before SIGKILL
REDIS_WAIT_S = 120.0    # pods start together: Redis may come up after this one


def redis_url(cfg: RunConfig, overrides: list[str], env: Mapping[str, str] = os.environ) -> str:
    """`--set redis.url=...` wins, then VIDEORL_REDIS_URL (a pod's, built from the Secret), then the config file's."""
    if any(o.startswith("redis.url=") for o in overrides) and cfg.redis.url:
        return cfg.redis.url
    url = env.get(REDIS_URL_ENV) or cfg.redis.url
    if not url:
        raise SystemExit(f"reward service: no Redis: set {REDIS_URL_ENV} or redis.url (it starts no embedded Redis)")
    return url


def wait_for_redis(service: RewardService, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            service.control.r.ping()
            return
        except redis.ConnectionError as e:   # retried on purpose: Redis may still be starting
            if time.monotonic() > deadline:
                raise
            log.info("waiting for Redis: %s", e)
            time.sleep(2.0)


async def serve(cfg: RunConfig, url: str, redis_wait_s: float = REDIS_WAIT_S) -> None:
    """Serve until SIGTERM or SIGINT (or until the gRPC server ends), then stop gracefully."""
    service = RewardService(cfg, url)
    await asyncio.to_thread(wait_for_redis, service, redis_wait_s)
    port = await service.start()   # registers its exporter's reachable address (the pod's, in a pod)
    log.info("reward service for run %s: gRPC on %s:%d, metrics on %s", cfg.run_id, cfg.reward.host, port,
             service.control.exporters()["reward"])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    assert service.server is not None
    stopping = asyncio.ensure_future(stop.wait())
    # left to finish by the shutdown itself: cancelling it while the server shuts down cancels the shutdown
    ended = asyncio.ensure_future(service.server.wait_for_termination())
    try:
        await asyncio.wait([stopping, ended], return_when=asyncio.FIRST_COMPLETED)
        log.info("stopping (grace %.0fs)", GRACE_S)
    finally:
        stopping.cancel()
        await service.stop(GRACE_S)
        await asyncio.wait([ended], timeout=GRACE_S)
        service.control.close()
    log.info("reward service stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.reward", description="Run the videorl reward service.")
    parser.add_argument("config", type=Path, nargs="?", help="run config YAML (default: all defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set reward.port=50051")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        raise SystemExit(str(e)) from None
    asyncio.run(serve(cfg, redis_url(cfg, args.overrides)))


if __name__ == "__main__":
    main()
