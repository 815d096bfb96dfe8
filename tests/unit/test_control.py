"""The Redis control plane against a real redis-server."""

import os
import signal
import threading
import time

import pytest
import redis
from step_records import step_record

from services.common.control import EVALS, GROUPS, PROMPTS, ControlPlane
from services.common.redis_server import EmbeddedRedis
from services.common.weights import Manifest


def _manifest(v: int, digest: str = "ab") -> Manifest:
    return Manifest(version=v, uri=f"/w/v{v}", bytes=10 * v, sha256={"model.safetensors": digest * 32}, step=v,
                    created_at=1.5)


def test_embedded_redis_starts_and_stops_by_pid(tmp_path):
    server = EmbeddedRedis(tmp_path).start()
    r = redis.Redis.from_url(server.url)
    assert r.ping()
    pid = server.proc.pid
    server.stop()
    assert server.proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        import os
        os.kill(pid, 0)


def test_embedded_redis_is_version_7_or_newer(redis_server):
    info = redis.Redis.from_url(redis_server.url).info("server")
    assert tuple(int(x) for x in info["redis_version"].split(".")[:2]) >= (7, 0)


def test_version_publish_is_atomic_and_monotonic(control):
    assert control.current_version() is None
    control.publish_version(_manifest(0))
    control.publish_version(_manifest(1))
    assert control.current_version() == 1
    assert control.manifest(1) == _manifest(1)
    for stale in (_manifest(1, digest="cd"), _manifest(0)):
        with pytest.raises(redis.ResponseError, match="not above current 1"):
            control.publish_version(stale)
    assert control.current_version() == 1
    assert control.manifest(1) == _manifest(1)  # a refused publish writes nothing


def test_a_replayed_publish_of_the_current_version_counts_as_done(control):
    """A publish whose reply was lost to a dropped connection is sent again by the retry: same manifest, no error."""
    control.publish_version(_manifest(4))
    control.publish_version(_manifest(4))
    assert control.current_version() == 4 and control.manifest(4) == _manifest(4)


def test_version_monotonic_across_a_new_client(control):
    """A restarted learner (a new client) continues from Redis, it cannot go back."""
    control.publish_version(_manifest(3))
    again = ControlPlane(control.url, control.run_id)
    assert again.current_version() == 3
    with pytest.raises(redis.ResponseError):
        again.publish_version(_manifest(2))


def test_publish_sends_event(control):
    ps = control.subscribe_versions()
    time.sleep(0.05)
    control.publish_version(_manifest(7))
    deadline = time.time() + 2
    msg = None
    while msg is None and time.time() < deadline:
        msg = ps.get_message(timeout=0.1)
    assert msg is not None and int(msg["data"]) == 7


def test_actor_registry_and_heartbeat(control):
    control.heartbeat("a0", 0, "loading")
    control.heartbeat("a1", 2, "running", tokens_per_s=12.5)
    actors = {a.actor_id: a for a in control.actors()}
    assert set(actors) == {"a0", "a1"}
    assert actors["a1"].loaded_version == 2 and actors["a1"].fields["tokens_per_s"] == "12.5"
    assert actors["a0"].alive(5.0) and not actors["a0"].alive(5.0, now=time.time() + 60)


def test_prompts_are_delivered_once_and_reclaimed_from_a_dead_consumer(control):
    ids = [control.add_prompt(f"p{i}".encode()) for i in range(3)]
    assert control.prompts_queued() == 3
    got = control.take_prompts("a0", 2, block_ms=10, reclaim_idle_ms=60_000)
    assert [p for _, p in got] == [b"p0", b"p1"]
    got2 = control.take_prompts("a1", 5, block_ms=10, reclaim_idle_ms=60_000)
    assert [p for _, p in got2] == [b"p2"]          # not p0/p1: they are held by a0
    control.ack_prompt(ids[2])
    time.sleep(0.03)
    # a0 died holding p0, p1: with a short idle bound a1 reclaims them
    got3 = control.take_prompts("a1", 5, block_ms=10, reclaim_idle_ms=10)
    assert sorted(p for _, p in got3) == [b"p0", b"p1"]
    for eid, _ in got3:
        control.ack_prompt(eid)
    assert control.prompts_queued() == 0


def test_a_dead_consumers_prompts_are_handed_to_the_live_ones_at_once(control):
    for i in range(4):
        control.add_prompt(f"p{i}".encode())
    held = control.take_prompts("dead", 3, block_ms=10, reclaim_idle_ms=60_000)
    assert control.take_prompts("live", 5, block_ms=10, reclaim_idle_ms=60_000)[0][1] == b"p3"
    assert control.hand_over_prompts("dead") == 3
    assert control.hand_over_prompts("dead") == 0                       # a replay moves nothing
    # no reclaim timeout to wait for: the live actor takes them as new prompts
    got = control.take_prompts("live", 5, block_ms=10, reclaim_idle_ms=60_000)
    assert sorted(p for _, p in got) == sorted(p for _, p in held)
    payloads = [f[b"prompt"] for _, f in control.r.xrange(control.key(PROMPTS))]
    assert sorted(payloads) == [b"p0", b"p1", b"p2", b"p3"]           # each prompt in the stream once
    assert "dead" not in {c["name"].decode() for c in control.r.xinfo_consumers(control.key(PROMPTS), "rollout")}
    assert control.counters()["prompts_handed_over"] == 3


def test_write_group_dedupes_by_prompt_id_and_counts(control):
    assert control.write_group("p1", b"g", 4, held_out=False)
    assert not control.write_group("p1", b"g-again", 4, held_out=False)
    assert control.write_group("e1", b"e", 4, held_out=True)
    assert control.stream_len(GROUPS) == 1 and control.stream_len(EVALS) == 1
    c = control.counters()
    assert c["groups_written"] == 1 and c["eval_groups_written"] == 1 and c["groups_duplicate"] == 1
    assert c["completions_scored"] == 12
    got = control.read_groups(GROUPS, "learner-0", 10, block_ms=10)
    assert [p for _, p in got] == [b"g"]


def test_write_group_is_exactly_once_under_concurrency(control):
    """Many writers racing on the same prompt ids: each prompt is written exactly once."""
    def writer():
        for i in range(50):
            control.write_group(f"p{i}", b"x", 2, held_out=False)
    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert control.stream_len(GROUPS) == 50
    assert control.counters()["groups_duplicate"] == 150


def test_keys_are_namespaced_by_run(control, redis_server):
    other = ControlPlane(redis_server.url, control.run_id + "-other")
    other.ensure_streams()
    control.add_prompt(b"x")
    assert other.prompts_queued() == 0
    assert all(k.decode().startswith("videorl:") for k in control.r.keys("*"))
    assert control.key(PROMPTS).startswith(f"videorl:{control.run_id}:")


def test_clients_ride_out_a_redis_restart_with_persistence(tmp_path):
    """kill -9 the server, start it again on the same port and data dir (append-only file, fsync always): a client
    blocked on a command retries until it answers, and nothing acknowledged before the crash is lost."""
    server = EmbeddedRedis(tmp_path, appendonly=True).start()
    control = ControlPlane(server.url, "restart", reconnect_s=20)
    control.ensure_streams()
    control.publish_version(_manifest(2))
    control.incr("groups_written", 3)
    for i in range(4):
        control.add_prompt(b"p%d" % i)
    (done, _), _ = control.take_prompts("a", 2, 10, 60_000)
    control.ack_prompt(done)
    assert len(control.take_prompts("b", 1, 10, 0)) == 1    # b reclaims a's other prompt (XAUTOCLAIM)
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    started = threading.Timer(1.5, server.start)   # the server is down for 1.5 s while the client retries
    started.start()
    t0 = time.monotonic()
    try:
        assert control.current_version() == 2
        assert time.monotonic() - t0 >= 1.0, "the command did not wait for the server"
        assert control.counters()["groups_written"] == 3 and control.manifest(2) == _manifest(2)
        assert {g["name"] for g in control.r.xinfo_groups(control.key(PROMPTS))} == {b"rollout"}
        # After an ack and a reclaim, a reloaded append-only file leaves Redis unable to report the group's lag
        # (XINFO GROUPS says null): the backlog is counted instead (else the feeder, seeing none, queues forever)
        (info,) = control.r.xinfo_groups(control.key(PROMPTS))
        assert info["lag"] is None
        assert control.prompts_queued() == 3 and control.take_prompts("a", 1, 10, 60_000)
        assert control.group_backlog(PROMPTS, "rollout") == (1, 2)
    finally:
        started.join()
        server.stop()


def test_a_client_gives_up_after_reconnect_s_naming_the_error(tmp_path):
    server = EmbeddedRedis(tmp_path).start()
    control = ControlPlane(server.url, "gone", reconnect_s=2)
    control.incr("x")
    server.stop()
    t0 = time.monotonic()
    with pytest.raises(redis.ConnectionError, match=str(server.port)):
        control.counters()
    assert 1.0 <= time.monotonic() - t0 <= 15


def test_replayed_writes_change_nothing(control):
    """What redis-py's retry sends again when a reply was lost: a prompt is queued once per id (and counted once),
    a replayed mark_trained reports its groups as new rather than as trained twice, a step record pushed twice is
    listed once."""
    assert control.feed_prompts([("train-0-a", b"p0"), ("train-1-a", b"p1")], "prompts_fed") == 2
    assert control.feed_prompts([("train-1-a", b"p1"), ("train-2-a", b"p2")], "prompts_fed") == 1
    assert control.stream_len(PROMPTS) == 3 and control.counters()["prompts_fed"] == 3
    assert control.in_flight() == 3 == control.prompts_queued() + control.groups_queued()
    ids = [control.r.xadd(control.key(GROUPS), {"group": b"g%d" % i}).decode() for i in range(2)]
    control.read_groups(GROUPS, "learner-0", 2, None)
    entries = [(ids[0], "g0"), (ids[1], "g1")]
    assert control.mark_trained(GROUPS, entries) == 2
    assert control.mark_trained(GROUPS, entries) == 2          # the replay: already done, not a repeat
    again = control.r.xadd(control.key(GROUPS), {"group": b"g0"}).decode()
    control.read_groups(GROUPS, "learner-0", 1, None)
    assert control.mark_trained(GROUPS, [(again, "g0")]) == 0  # a group delivered again really is a repeat
    first = step_record(1)
    control.record_step(first)
    control.record_step(first)
    control.record_step(step_record(2))
    assert [r.step for r in control.step_records()] == [1, 2]
