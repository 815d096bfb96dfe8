"""Redis AUTH: a control plane with the password in its URL works; without it, or with a wrong one, the first
command fails with AuthenticationError, whose message does not carry the password."""

import time

import pytest
import redis

from services.common.control import ControlPlane
from services.common.redis_server import EmbeddedRedis

PASSWORD = "hunter2-but-longer-0123456789"


def test_only_clients_with_the_password_reach_the_control_plane(tmp_path):
    with EmbeddedRedis(tmp_path / "redis", password=PASSWORD) as server:
        assert f":{PASSWORD}@" in server.url
        cp = ControlPlane(server.url, "auth")
        cp.ensure_streams()
        cp.add_prompt(b"p")
        assert [payload for _, payload in cp.take_prompts("a0", 1, 10, 60_000)] == [b"p"]
        for url in (f"redis://127.0.0.1:{server.port}/0", f"redis://:wrong@127.0.0.1:{server.port}/0"):
            stranger = ControlPlane(url, "auth")
            t0 = time.monotonic()
            with pytest.raises(redis.AuthenticationError) as e:
                stranger.current_version()
            assert PASSWORD not in str(e.value)
            # refused at once, not retried like a lost connection for redis.reconnect_s (60 s)
            assert time.monotonic() - t0 < 10
            stranger.close()
        cp.close()
