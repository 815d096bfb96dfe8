"""What the broadcast weight transport keeps in Redis: never the weights, only who is in the weight group and what
is being sent over it. The learner writes (services/learner/publish.py), the rollout actors read
(services/rollout/actor.py). Keys, under the run's prefix (services/common/control.py):

  weights:epoch           the membership epoch counter; only ever raised (a restarted learner continues it)
  weights:group           hash {epoch, info: GroupInfo JSON without rank_offset, members: JSON actor -> rank_offset}
  weights:offer           hash {version, epoch, layout, shm, sums}: the version being sent to that epoch's group now
                          (shm: the shared-memory file it is in instead, when every member is on the learner's
                          machine; sums: JSON {tensor: sha256} on a sample of versions, which each worker checks)
  weights:rx:<v>          set of actors that hold version v's bytes from shared memory (the learner waits for all)
  weights:refused:<v>     hash actor -> why it could not take version v from shared memory (fails it at once)
  weights:layout:<sha>    a version's tensor metadata (weight_wire.Layout.update_info), by its digest
  weights:disk            the newest version that has a complete disk copy (late joiners start from it)
  weights:sums:<v>        hash actor -> digest of vLLM's checksums of its weights at version v (a sample of versions)

Every write is followed by a message on the run's `events` channel, so actors waiting there wake at once.
Invariants kept here: an epoch number is never reused, so an actor can tell a new group from the one it is in; a
version's manifest gets its disk copy's fields only once that copy is complete (weights.write_version).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from services.common.control import ControlPlane
from services.common.weights import Manifest

ANSWER_TTL_S = 3600   # an actor's answer to a shared-memory offer outlives any wait for it


@dataclass(frozen=True)
class Group:
    epoch: int
    info: dict               # weight_wire.GroupInfo's fields but rank_offset
    members: dict[str, int]  # actor id -> the rank of its first worker

    def join_info(self, actor_id: str) -> dict:
        """The GroupInfo dict `actor_id` joins with."""
        return {**self.info, "rank_offset": self.members[actor_id]}


@dataclass(frozen=True)
class Offer:
    version: int
    epoch: int
    layout: str              # the digest of its metadata: WeightPlane.update_info(layout)
    shm: str = ""            # the shared-memory file holding its bytes ("": sent over the group)
    sums: dict[str, str] = field(default_factory=dict)   # the learner's sha256 per tensor (a sample of versions)


class WeightPlane:
    def __init__(self, control: ControlPlane):
        self.control, self.r = control, control.r

    def _key(self, name: str) -> str:
        return self.control.key(f"weights:{name}")

    def _announce(self, what: str) -> None:
        self.r.publish(self.control.key("events"), what)

    # -- the learner's side ------------------------------------------------------------------------
    def open_epoch(self, info: dict, members: dict[str, int]) -> int:
        """A new membership epoch: the group `members` are to join now. Returns its number."""
        epoch = int(self.r.incr(self._key("epoch")))
        info = {k: v for k, v in info.items() if k != "rank_offset"}
        self.r.hset(self._key("group"), mapping={"epoch": epoch, "info": json.dumps(info),
                                                 "members": json.dumps(members)})
        self._announce(f"epoch:{epoch}")
        return epoch

    def offer(self, version: int, epoch: int, layout: str, update_info: dict, shm: str = "",
              sums: dict[str, str] | None = None) -> None:
        """Tell the epoch's members that `version` is being sent now, or is in the shared-memory file `shm`; `sums`:
        the sha256 of each tensor's bytes, for the workers to check."""
        self.r.set(self._key(f"layout:{layout}"), json.dumps(update_info))
        self.r.hset(self._key("offer"), mapping={"version": version, "epoch": epoch, "layout": layout, "shm": shm,
                                                 "sums": json.dumps(sums or {})})
        self._announce(f"offer:{version}")

    def received(self, version: int) -> set[str]:
        """The actors that acknowledged holding `version`'s bytes from shared memory."""
        return {a.decode() for a in self.r.smembers(self._key(f"rx:{version}"))}

    def refused(self, version: int) -> dict[str, str]:
        """The actors that could not take `version` from shared memory, and why."""
        return {k.decode(): v.decode() for k, v in self.r.hgetall(self._key(f"refused:{version}")).items()}

    def forget_answers(self, version: int) -> None:
        """The learner is done waiting for `version`'s answers (an answer that comes later expires by itself)."""
        self.r.delete(self._key(f"rx:{version}"), self._key(f"refused:{version}"))

    def attach_disk_copy(self, manifest: Manifest) -> None:
        """Record a version's completed disk copy in its manifest (kept from publish: transport, epoch, layout)."""
        disk = manifest.to_redis()
        self.r.hset(self.control.key(f"manifest:{manifest.version}"),
                    mapping={k: disk[k] for k in ("uri", "bytes", "sha256")})
        self.r.eval("if tonumber(redis.call('GET', KEYS[1]) or '-1') < tonumber(ARGV[1]) then "
                    "redis.call('SET', KEYS[1], ARGV[1]) end", 1, self._key("disk"), manifest.version)
        self._announce(f"disk:{manifest.version}")

    # -- the actors' side --------------------------------------------------------------------------
    def group(self) -> Group | None:
        h = {k.decode(): v.decode() for k, v in self.r.hgetall(self._key("group")).items()}
        if not h:
            return None
        return Group(int(h["epoch"]), json.loads(h["info"]), json.loads(h["members"]))

    def offered(self) -> Offer | None:
        h = {k.decode(): v.decode() for k, v in self.r.hgetall(self._key("offer")).items()}
        if not h:
            return None
        return Offer(int(h["version"]), int(h["epoch"]), h["layout"], h.get("shm", ""), json.loads(h.get("sums", "{}")))

    def ack_received(self, version: int, actor_id: str) -> None:
        key = self._key(f"rx:{version}")
        self.r.pipeline().sadd(key, actor_id).expire(key, ANSWER_TTL_S).execute()

    def refuse(self, version: int, actor_id: str, why: str) -> None:
        key = self._key(f"refused:{version}")
        self.r.pipeline().hset(key, actor_id, why).expire(key, ANSWER_TTL_S).execute()

    def update_info(self, layout: str) -> dict:
        raw = self.r.get(self._key(f"layout:{layout}"))
        if raw is None:
            raise KeyError(f"no tensor metadata under layout {layout[:12]} in Redis")
        return json.loads(raw)

    def record_checksum(self, version: int, actor_id: str, digest: str) -> dict[str, str]:
        """Record `actor_id`'s digest of its weights at `version`; returns every actor's recorded so far."""
        key = self._key(f"sums:{version}")
        pipe = self.r.pipeline()
        pipe.hset(key, actor_id, digest)
        pipe.hgetall(key)
        return {k.decode(): v.decode() for k, v in pipe.execute()[1].items()}

    def checksums(self, version: int) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.r.hgetall(self._key(f"sums:{version}")).items()}

    def disk_version(self) -> int | None:
        v = self.r.get(self._key("disk"))
        return None if v is None else int(v)
