"""The control plane in Redis. Every key lives under `videorl:<run_id>:`.

Keys:
  policy:version          current policy version (int); only ever raised, by `publish_version`
  manifest:<v>            hash: the Manifest of version v (uri, bytes, sha256, step, created_at)
  events                  pub/sub channel; the new version number is published after each bump
  actors                  set of actor ids; actor:<id> hash {loaded_version, heartbeat, state, pid, ...}; state is
                          loading, waiting (for the current version), running, stopped or dead
  weights:*               the broadcast transport's epoch, group and offer (services/common/weight_plane.py)
  swaps:<id>              hash: version -> unix time actor <id> started serving it
  desired:rollout         the number of rollout actors an operator asked for
  stop                    unix time an operator asked the run to stop (the learner checkpoints and ends)
  stream:prompts          prompts for the actors (consumer group `rollout`)
  stream:groups           scored train groups (consumer group `learner`)
  stream:evals            scored held-out groups (consumer group `learner`)
  fed                     set of prompt ids queued by the learner's feeder: a prompt is queued once
  scored                  set of prompt ids already scored: a prompt is written to a stream once
  counters                hash of run-wide counters (completions_received, groups_written, ...)
  learner:steps           list of the learner's step records (JSON), for status views
  ledger                  set of group ids the learner has trained on (a restarted learner skips them)
  metrics                 hash: process name -> host:port of its Prometheus exporter (for `rlctl status`)

Every client rides out a Redis restart (a pod rescheduled, the local server replaced after a crash): each command
is retried on a lost connection, with backoff capped at 1 s, for up to `reconnect_s` (60 s by default), and then
raises. Commands replayed after a reply was lost are safe: the scripts below are idempotent by prompt id and
version, and a replayed publish of the version that is already current counts as done.

Invariants kept here: a version becomes current in the same atomic step that records its manifest,
and only if it is above the current one (so versions are monotonic across learner restarts); a scored
group is written at most once per prompt id (atomic check-and-add in a Lua script).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from services.common.records import StepRecord
from services.common.weights import Manifest

PROMPTS, GROUPS, EVALS = "stream:prompts", "stream:groups", "stream:evals"
ROLLOUT_GROUP, LEARNER_GROUP = "rollout", "learner"
RECONNECT_S = 60.0


class _RetryLostConnections(Retry):
    """redis-py's Retry, except that a refused password is never retried: AuthenticationError is a ConnectionError
    in redis-py, and retrying it would only hide the wrong password behind a minute of waiting."""

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):
        def retryable(e: Exception) -> bool:
            return not isinstance(e, redis.AuthenticationError) and (is_retryable is None or is_retryable(e))

        return super().call_with_retry(do, fail, retryable, with_failure_count)


def retry_policy(reconnect_s: float) -> Retry:
    """Retry a command on a lost connection for about `reconnect_s`: backoff from 50 ms doubling to 1 s, so
    reconnects are quick after a short blip and about one a second during a longer outage."""
    warmup = 5   # 0.1 + 0.2 + 0.4 + 0.8 s before the cap
    retries = warmup + max(0, int(reconnect_s - 1.5))
    return _RetryLostConnections(ExponentialBackoff(cap=1.0, base=0.05), retries=retries)

_PUBLISH = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
local v = tonumber(ARGV[1])
if v <= cur then return redis.error_reply('version ' .. v .. ' is not above current ' .. cur) end
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('SET', KEYS[1], v)
redis.call('PUBLISH', ARGV[2], v)
return v
"""

_WRITE_GROUP = """
redis.call('HINCRBY', KEYS[3], 'completions_scored', tonumber(ARGV[3]))
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then
  redis.call('HINCRBY', KEYS[3], 'groups_duplicate', 1)
  return 0
end
redis.call('XADD', KEYS[2], '*', 'group', ARGV[2])
redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
return 1
"""

_ADD_PROMPT = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', 'prompt', ARGV[2])
if ARGV[3] ~= '' then redis.call('HINCRBY', KEYS[3], ARGV[3], 1) end
return 1
"""

# Returns how many group ids were new to the ledger, or -1 when nothing changed at all: every id was in the ledger
# and every entry acked already, which is this same call replayed after its reply was lost (the first one did it).
_MARK_TRAINED = """
local new = redis.call('SADD', KEYS[1], unpack(ARGV, 1, #ARGV / 2))
local acked = redis.call('XACK', KEYS[2], 'learner', unpack(ARGV, #ARGV / 2 + 1))
if new == 0 and acked == 0 then return -1 end
return new
"""

# A dead rollout consumer's prompts, handed to the live ones: each pending entry is appended again as a new entry
# and the old one acked and deleted, in one step, so every prompt id is in the stream once and none is lost. A
# replay finds the consumer gone (deleted here) and moves nothing.
_HAND_OVER = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[3]), ARGV[2])
local moved = 0
for _, p in ipairs(pending) do
  local entry = redis.call('XRANGE', KEYS[1], p[1], p[1])
  if #entry > 0 then
    redis.call('XADD', KEYS[1], '*', unpack(entry[1][2]))
    moved = moved + 1
  end
  redis.call('XACK', KEYS[1], ARGV[1], p[1])
  redis.call('XDEL', KEYS[1], p[1])
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
if moved > 0 then redis.call('HINCRBY', KEYS[2], 'prompts_handed_over', moved) end
return moved
"""


@dataclass(frozen=True)
class ActorInfo:
    actor_id: str
    loaded_version: int
    heartbeat: float
    state: str
    fields: dict[str, str]

    def alive(self, timeout_s: float, now: float | None = None) -> bool:
        return (now or time.time()) - self.heartbeat <= timeout_s


class ControlPlane:
    """Typed access to one run's keys. Thread-safe (redis-py pools connections)."""

    def __init__(self, url: str, run_id: str, reconnect_s: float = RECONNECT_S):
        self.url, self.run_id = url, run_id
        # Any: redis-py types every reply as a union of its sync and async forms, which says nothing useful here.
        self.r: Any = redis.Redis.from_url(url, decode_responses=False, health_check_interval=30,
                                           socket_connect_timeout=5, retry=retry_policy(reconnect_s),
                                           retry_on_error=[redis.ConnectionError, redis.TimeoutError])
        self.prefix = f"videorl:{run_id}:"
        self._publish = self.r.register_script(_PUBLISH)
        self._write_group = self.r.register_script(_WRITE_GROUP)
        self._add_prompt = self.r.register_script(_ADD_PROMPT)
        self._mark_trained = self.r.register_script(_MARK_TRAINED)
        self._hand_over = self.r.register_script(_HAND_OVER)

    def key(self, name: str) -> str:
        return self.prefix + name

    def ensure_streams(self) -> None:
        for stream, group in ((PROMPTS, ROLLOUT_GROUP), (GROUPS, LEARNER_GROUP), (EVALS, LEARNER_GROUP)):
            try:
                self.r.xgroup_create(self.key(stream), group, id="0", mkstream=True)
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    # -- policy versions -------------------------------------------------------------------------
    def current_version(self) -> int | None:
        v = self.r.get(self.key("policy:version"))
        return None if v is None else int(v)

    def publish_version(self, manifest: Manifest) -> None:
        """Record the manifest and make its version current, atomically; refuses non-increasing versions."""
        flat = [x for kv in manifest.to_redis().items() for x in kv]
        try:
            self._publish(keys=[self.key("policy:version"), self.key(f"manifest:{manifest.version}")],
                          args=[manifest.version, self.key("events"), *flat])
        except redis.ResponseError:
            # Replayed after a lost reply: the first call made it current. Anything else is a real refusal.
            replayed = self.manifest(manifest.version)
            if not (self.current_version() == manifest.version and replayed and replayed.sha256 == manifest.sha256):
                raise

    def manifest(self, version: int) -> Manifest | None:
        h = self.r.hgetall(self.key(f"manifest:{version}"))
        return Manifest.from_redis({k.decode(): v.decode() for k, v in h.items()}) if h else None

    def subscribe_versions(self) -> redis.client.PubSub:
        ps = self.r.pubsub(ignore_subscribe_messages=True)
        ps.subscribe(self.key("events"))
        return ps

    # -- actor registry --------------------------------------------------------------------------
    def heartbeat(self, actor_id: str, loaded_version: int, state: str, **extra: object) -> None:
        fields = {"loaded_version": loaded_version, "heartbeat": time.time(), "state": state, "pid": os.getpid(),
                  "host": socket.gethostname(), **extra}   # host: the pod's name on Kubernetes (rlctl scale)
        pipe = self.r.pipeline()
        pipe.sadd(self.key("actors"), actor_id)
        pipe.hset(self.key(f"actor:{actor_id}"), mapping={k: str(v) for k, v in fields.items()})
        pipe.execute()

    def set_actor_state(self, actor_id: str, state: str) -> None:
        """Overwrite an actor's state only (the supervisor marks one Ray declared dead: `dead`)."""
        self.r.eval("if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'state', ARGV[1]) end",
                    1, self.key(f"actor:{actor_id}"), state)

    def actors(self) -> list[ActorInfo]:
        ids = sorted(x.decode() for x in self.r.smembers(self.key("actors")))
        pipe = self.r.pipeline()
        for a in ids:
            pipe.hgetall(self.key(f"actor:{a}"))
        out = []
        for a, h in zip(ids, pipe.execute(), strict=True):
            d = {k.decode(): v.decode() for k, v in h.items()}
            if d:
                out.append(ActorInfo(a, int(d["loaded_version"]), float(d["heartbeat"]), d["state"], d))
        return out

    def record_swap(self, actor_id: str, version: int, at: float) -> None:
        """When `actor_id` started serving `version` (hash swaps:<actor>: version -> unix time)."""
        self.r.hset(self.key(f"swaps:{actor_id}"), str(version), at)

    def swaps(self, actor_id: str) -> dict[int, float]:
        return {int(k): float(v) for k, v in self.r.hgetall(self.key(f"swaps:{actor_id}")).items()}

    def set_desired_actors(self, n: int) -> None:
        self.r.set(self.key("desired:rollout"), n)

    def desired_actors(self) -> int | None:
        v = self.r.get(self.key("desired:rollout"))
        return None if v is None else int(v)

    def request_stop(self) -> None:
        """Ask the run to stop gracefully (the first request's time is kept)."""
        self.r.set(self.key("stop"), time.time(), nx=True)

    def clear_stop(self) -> None:
        """A run that starts (or resumes) is not stopping."""
        self.r.delete(self.key("stop"))

    def stop_requested(self) -> float | None:
        v = self.r.get(self.key("stop"))
        return None if v is None else float(v)

    # -- prompts -----------------------------------------------------------------------------------
    def add_prompt(self, payload: bytes) -> str:
        return self.r.xadd(self.key(PROMPTS), {"prompt": payload}).decode()

    def feed_prompts(self, prompts: list[tuple[str, bytes]], counter: str = "") -> int:
        """Queue (prompt id, payload) pairs in one round trip, each once per prompt id (a replay after a lost reply
        adds nothing) and counted under `counter` in the same step. Returns how many were queued now."""
        if not prompts:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for prompt_id, payload in prompts:
            self._add_prompt(keys=[self.key("fed"), self.key(PROMPTS), self.key("counters")],
                             args=[prompt_id, payload, counter], client=pipe)
        return sum(int(x) for x in pipe.execute())

    def group_backlog(self, stream: str, group: str) -> tuple[int, int]:
        """(entries not yet delivered to `group`, entries delivered to it but not acked)."""
        info = {g["name"].decode(): g for g in self.r.xinfo_groups(self.key(stream))}
        g = info.get(group)
        return (0, 0) if g is None else self._backlog_of(stream, g)

    def _backlog_of(self, stream: str, g: dict) -> tuple[int, int]:
        lag = g.get("lag")
        if lag is None:   # Redis cannot tell (e.g. after it reloaded its append-only file): count them
            lag = len(self.r.xrange(self.key(stream), b"(" + g["last-delivered-id"], "+"))
        return int(lag), int(g["pending"])

    def _backlog(self, stream: str, group: str) -> int:
        return sum(self.group_backlog(stream, group))

    def in_flight(self) -> int:
        """prompts_queued() + groups_queued(), in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        pipe.xinfo_groups(self.key(PROMPTS))
        pipe.xinfo_groups(self.key(GROUPS))
        total, pairs = 0, ((PROMPTS, ROLLOUT_GROUP), (GROUPS, LEARNER_GROUP))
        for (stream, group), groups in zip(pairs, pipe.execute(), strict=True):
            g = next((g for g in groups if g["name"].decode() == group), None)
            total += 0 if g is None else sum(self._backlog_of(stream, g))
        return total

    def prompts_queued(self) -> int:
        """Prompts not yet delivered to any actor, plus those delivered but not acknowledged."""
        return self._backlog(PROMPTS, ROLLOUT_GROUP)

    def groups_queued(self) -> int:
        """Scored train groups the learner has not consumed yet (undelivered or unacked)."""
        return self._backlog(GROUPS, LEARNER_GROUP)

    def take_prompts(self, consumer: str, count: int, block_ms: int, reclaim_idle_ms: int) -> list[tuple[str, bytes]]:
        """Prompts for `consumer`: first any held too long by another (dead) consumer, then new ones."""
        _, claimed, _ = self.r.xautoclaim(self.key(PROMPTS), ROLLOUT_GROUP, consumer, reclaim_idle_ms, count=count)
        entries = [(eid, f) for eid, f in claimed if f]
        if len(entries) < count:
            res = self.r.xreadgroup(ROLLOUT_GROUP, consumer, {self.key(PROMPTS): ">"}, count=count - len(entries),
                                    block=block_ms)
            for _, items in res or []:
                entries.extend(items)
        return [(eid.decode(), f[b"prompt"]) for eid, f in entries]

    def pending_prompts(self, consumer: str, count: int) -> list[tuple[str, bytes]]:
        """Prompts delivered to `consumer` and not acked yet, oldest first: what it holds, plus any whose delivery
        reply it never received (a Redis crash between the delivery and its reply)."""
        return self._unacked(PROMPTS, ROLLOUT_GROUP, consumer, count, b"prompt")

    def hand_over_prompts(self, dead: str, limit: int = 100_000) -> int:
        """Give every prompt delivered to `dead` (a rollout consumer known to be gone) back to the stream at once,
        for the live actors to take, instead of leaving them for the reclaim timeout; returns how many.
        Counted as `prompts_handed_over`. Only for a consumer that cannot ack any more: a live one would generate
        them twice (scored once all the same: groups are written once per prompt id)."""
        return int(self._hand_over(keys=[self.key(PROMPTS), self.key("counters")], args=[ROLLOUT_GROUP, dead, limit]))

    def ack_prompt(self, entry_id: str) -> None:
        self.r.xack(self.key(PROMPTS), ROLLOUT_GROUP, entry_id)

    # -- scored groups -----------------------------------------------------------------------------
    def write_group(self, prompt_id: str, payload: bytes, n_completions: int, held_out: bool) -> bool:
        """Append a scored group unless this prompt was scored before. True if written."""
        stream = EVALS if held_out else GROUPS
        counter = "eval_groups_written" if held_out else "groups_written"
        return bool(self._write_group(keys=[self.key("scored"), self.key(stream), self.key("counters")],
                                      args=[prompt_id, payload, n_completions, counter]))

    def read_groups(self, stream: str, consumer: str, count: int, block_ms: int | None) -> list[tuple[str, bytes]]:
        """New groups for `consumer`; waits up to block_ms for the first one (None: do not wait; 0 would be forever)."""
        res = self.r.xreadgroup(LEARNER_GROUP, consumer, {self.key(stream): ">"}, count=count, block=block_ms or None)
        return [(eid.decode(), f[b"group"]) for _, items in res or [] for eid, f in items]

    def ack_group(self, stream: str, entry_id: str) -> None:
        self.r.xack(self.key(stream), LEARNER_GROUP, entry_id)

    def pending_groups(self, stream: str, consumer: str, count: int) -> list[tuple[str, bytes]]:
        """Groups delivered to `consumer` but never acked (a restarted consumer of the same name gets them back)."""
        return self._unacked(stream, LEARNER_GROUP, consumer, count, b"group")

    def _unacked(self, stream: str, group: str, consumer: str, count: int, field: bytes) -> list[tuple[str, bytes]]:
        """(entry id, payload) of the entries delivered to `consumer` and not acked, oldest first; entries trimmed
        from the stream since (no fields left) are skipped."""
        res = self.r.xreadgroup(group, consumer, {self.key(stream): "0"}, count=count)
        return [(eid.decode(), f[field]) for _, items in res or [] for eid, f in items if f]

    # -- group ledger ------------------------------------------------------------------------------
    def mark_trained(self, stream: str, entries: list[tuple[str, str]]) -> int:
        """Record (entry id, group id) pairs as trained and ack the entries, in one transaction.

        Returns how many group ids were new to the ledger (fewer than len(entries) means a repeat), or
        len(entries) when this is the same call replayed after a lost reply (nothing left to do: see _MARK_TRAINED)."""
        if not entries:
            return 0
        new = int(self._mark_trained(keys=[self.key("ledger"), self.key(stream)],
                                     args=[*(gid for _, gid in entries), *(eid for eid, _ in entries)]))
        return len(entries) if new < 0 else new

    def trained(self, group_ids: list[str]) -> list[bool]:
        """For each group id, whether the ledger holds it."""
        return [bool(x) for x in self.r.smismember(self.key("ledger"), group_ids)] if group_ids else []

    def ledger(self) -> set[str]:
        return {x.decode() for x in self.r.smembers(self.key("ledger"))}

    def restore_ledger(self, group_ids: list[str]) -> None:
        """Add ids from a checkpoint (a fresh Redis after a full restart starts with an empty ledger)."""
        if group_ids:
            self.r.sadd(self.key("ledger"), *group_ids)

    def stream_len(self, stream: str) -> int:
        return int(self.r.xlen(self.key(stream)))

    # -- counters and status -------------------------------------------------------------------------
    def incr(self, name: str, by: int = 1) -> None:
        self.r.hincrby(self.key("counters"), name, by)

    def counters(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.r.hgetall(self.key("counters")).items()}

    def register_exporter(self, name: str, address: str) -> None:
        """Record where a process serves its Prometheus metrics (`metrics` hash: name -> host:port)."""
        self.r.hset(self.key("metrics"), name, address)

    def exporters(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.r.hgetall(self.key("metrics")).items()}

    def record_step(self, record: StepRecord) -> None:
        """Append a learner step record (list `learner:steps`) for status views."""
        self.r.rpush(self.key("learner:steps"), record.model_dump_json())

    def step_records(self, start: int = 0) -> list[StepRecord]:
        """The learner's step records; one pushed twice by a replayed RPUSH (a lost reply) is listed once."""
        raw = self.r.lrange(self.key("learner:steps"), start, -1)
        return [StepRecord.model_validate_json(x) for i, x in enumerate(raw) if i == 0 or x != raw[i - 1]]

    def close(self) -> None:
        self.r.close()
