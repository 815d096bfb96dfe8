"""A rollout actor: prompts from Redis -> K samples from vLLM -> completions over gRPC to the reward service.

Invariants kept here:
- a prompt is acked in Redis only after the reward service acked its group (SCORED or DUPLICATE), so a
  prompt held by an actor that dies stays pending: the supervisor hands it back to the live actors once Ray reports
  the death, and any actor reclaims it after rollout.faults.reclaim_idle_s otherwise;
- a reward service that dies or restarts costs nothing: the stream is reopened and every unacked group resent
  (services/rollout/reward_link.py); while it is down the actor takes no new prompts;
- weights change only while no request is in flight: a published version is picked up at once (pub/sub
  event, polled as a fallback); the gate stops new requests, in-flight ones are aborted (rollout.swap=abort)
  or finished (=wait), and aborted prompts are generated again under the new version. So every completion
  is stamped with the one version whose weights produced all of its tokens;
- a version whose files do not match their recorded hashes is never loaded: the actor keeps (and reports)
  the version it has;
- with weights.transport broadcast, a version arrives whole before the model is touched (rollout/weight_transfer.py):
  its bytes are received while generation goes on, and only loading them goes through the same gate as a disk swap.
  An actor joins each weight group it is named in (services/common/weight_plane.py); one that is in none (it started
  late, replaces one that died, or a broadcast failed) loads disk copies, and does not generate until it holds the
  current version;
- a video that cannot be read quarantines its prompt (acked, counted, logged with the reason) instead
  of stopping the actor;
- a prompt delivered to this actor whose delivery it never saw (Redis crashed before the reply) is found among
  its pending entries within ORPHAN_CHECK_S and generated, instead of waiting rollout.faults.reclaim_idle_s.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.config import RunConfig
from services.common.control import ControlPlane
from services.common.media import FrameCache, MediaError
from services.common.metrics import check_name, exporter_address
from services.common.metrics import serve as serve_metrics
from services.common.pb.videorl.v1 import rollout_pb2 as pb
from services.common.prompts import chat_text
from services.common.records import ActorStats
from services.common.weight_plane import Offer, WeightPlane
from services.common.weight_wire import MISMATCH, Layout
from services.common.weights import WeightIntegrityError, verify
from services.rollout.engine import BroadcastEngine, Engine, EngineFactory, VLLMEngine
from services.rollout.reward_link import RewardLink

log = logging.getLogger("videorl.rollout")
ORPHAN_CHECK_S = 5.0   # how often an actor compares its pending prompts in Redis with those it holds


class RolloutMetrics:
    """One actor's metrics, labelled with its id: a Ray node (or pod) may host several actors, each with its own
    exporter, and dashboards show them side by side."""

    def __init__(self, registry: CollectorRegistry, actor_id: str):
        a = ["actor"]
        self.tokens = Counter(check_name("videorl_rollout_generated_tokens_total"), "completion tokens generated",
                              a, registry=registry).labels(actor_id)
        self.generate = Histogram(check_name("videorl_rollout_generate_seconds"), "time to sample one group",
                                  a, registry=registry).labels(actor_id)
        self.swap = Histogram(check_name("videorl_rollout_swap_seconds"), "generation paused per weight swap",
                              a, registry=registry).labels(actor_id)
        self.version = Gauge(check_name("videorl_rollout_loaded_policy_version"), "policy version loaded",
                             a, registry=registry).labels(actor_id)
        self.requests = Gauge(check_name("videorl_rollout_requests_inflight_count"),
                              "engine requests (one group each) being generated", a, registry=registry).labels(actor_id)
        self.unacked = Gauge(check_name("videorl_rollout_groups_unacked_count"),
                             "groups sent to the reward service and not yet acked", a,
                             registry=registry).labels(actor_id)
        self.receive = Histogram(check_name("videorl_rollout_weights_receive_seconds"),
                                 "broadcast: time to receive one version's bytes (generation goes on meanwhile)", a,
                                 registry=registry).labels(actor_id)
        self.retry = Gauge(check_name("videorl_rollout_prompts_retry_count"),
                           "prompts a weight swap aborted, waiting to be generated again", a,
                           registry=registry).labels(actor_id)
        self.orphaned = Counter(check_name("videorl_rollout_prompts_orphaned_total"),
                                "prompts delivered to this actor that it never saw (a lost reply), found and generated",
                                a, registry=registry).labels(actor_id)
        self._quarantined = Counter(check_name("videorl_rollout_prompts_quarantined_total"),
                                    "prompts whose video could not be read", ["actor", "reason"], registry=registry)
        self.actor_id = actor_id
        for reason in MediaError.REASONS:   # every series exists from the start: a clean run shows 0, not "no data"
            self._quarantined.labels(actor_id, reason)

    def quarantined(self, reason: str) -> None:
        self._quarantined.labels(self.actor_id, reason).inc()


class RolloutActor:
    def __init__(self, cfg: RunConfig, redis_url: str, reward_addr: str, actor_id: str, model_dir: str,
                 engine_factory: EngineFactory | None = None):
        self.cfg, self.actor_id, self.reward_addr, self.model_dir = cfg, actor_id, reward_addr, model_dir
        self.engine_factory = engine_factory   # None: VLLMEngine.create (bench/scale_sim_bench.py: a timed one)
        self.control = ControlPlane(redis_url, cfg.run_id, cfg.redis.reconnect_s)
        self.frames = FrameCache(max_bytes=256 << 20)
        self.loaded_version = -1
        self.link = RewardLink(cfg, reward_addr, self._on_ack)   # holds each sent group until it is acked
        self.refused: set[int] = set()       # versions whose files failed their hash check
        self.stats = ActorStats(actor_id=actor_id)
        self.retry: list[tuple[str, bytes]] = []    # prompts whose generation a swap aborted
        self._holding: set[str] = set()               # prompt entry ids taken and not acked yet
        self._orphans_checked = time.monotonic()
        self._requests: set[str] = set()              # engine request ids in flight
        self._seq = 0
        self._swapping = False
        self._gate = asyncio.Condition()              # guards _requests, _swapping and loaded_version changes
        self._swap_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self.engine: Engine | None = None
        self.broadcast = cfg.resolved().weights.transport == "broadcast"
        self.plane = WeightPlane(self.control)
        self.epoch = 0          # the newest weight-group epoch this actor has seen named in
        self.joined = False     # whether it is in that epoch's group now
        self.registry = CollectorRegistry()
        self.metrics = RolloutMetrics(self.registry, actor_id)
        self.metrics.version.set_function(lambda: self.loaded_version)   # read at scrape time: -1 while loading
        self.metrics.requests.set_function(lambda: len(self._requests))
        self.metrics.unacked.set_function(lambda: len(self.link.held))
        self.metrics.retry.set_function(lambda: len(self.retry))

    # -- lifecycle -------------------------------------------------------------------------------
    async def run(self) -> ActorStats:
        """Serve until `stop()`; returns this actor's totals."""
        self.control.register_exporter(f"rollout:{self.actor_id}", exporter_address(serve_metrics(self.registry)))
        self.control.heartbeat(self.actor_id, self.loaded_version, "loading")
        self.engine = (self.engine_factory or VLLMEngine.create)(Path(self.model_dir), self.cfg)
        self.loaded_version = 0
        await self._maybe_swap()   # an actor that joins late starts from the current version
        if self.broadcast:
            await self._wait_for_current()
        link = asyncio.create_task(self.link.run())
        background = [asyncio.create_task(self._heartbeat_loop()), asyncio.create_task(self._watch_versions()), link]
        running: set[asyncio.Task] = set()   # one rollout per prompt in flight
        try:
            # After stop(): finish the prompts in flight and those a swap aborted (they are this actor's, pending
            # in Redis), take no new ones, so a scaled-down actor hands back nothing half done.
            while not self._stop.is_set() or self.retry or running:
                for task in background:
                    if task.done():
                        task.result()   # a dead watcher, heartbeat or reward link is this actor's failure too
                t0, busy = time.perf_counter(), bool(running)
                # No new work while the reward service is away; the prompts in flight finish and wait to be sent.
                full = len(running) >= self.cfg.rollout.prompts_per_batch
                started = 0 if full or not await self.link.wait_up(0.5) else await self._top_up(running)
                if running and not started:
                    await asyncio.wait(running, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                for task in [t for t in running if t.done()]:
                    running.discard(task)
                    task.result()   # a rollout's failure is the actor's
                if busy:
                    self.stats.busy_seconds += time.perf_counter() - t0
            await self.link.close(link)
        finally:
            for task in [*background, *running]:
                task.cancel()
            self.engine.shutdown()
            self.control.heartbeat(self.actor_id, self.loaded_version, "stopped", **self._rates())
        return self.stats.model_copy(update={"loaded_version": self.loaded_version, "reconnects": self.link.reconnects,
                                             "groups_resent": self.link.resent})

    async def stop(self) -> None:
        self._stop.set()

    # -- phases ----------------------------------------------------------------------------------
    async def _top_up(self, running: set[asyncio.Task]) -> int:
        """Fill the free slots of rollout.prompts_per_batch: prompts a swap aborted first, then new ones (none after
        stop()). A finished prompt's slot is refilled at once, so the engine is never left waiting for the slowest
        prompt of a batch. Blocks in Redis for up to 0.2 s when the stream is empty. Returns how many started."""
        if time.monotonic() - self._orphans_checked >= ORPHAN_CHECK_S:
            await self._adopt_orphans()
        free = self.cfg.rollout.prompts_per_batch - len(running)
        entries, self.retry = self.retry[:free], self.retry[free:]
        want = 0 if self._stop.is_set() else free - len(entries)
        if want > 0:
            taken = await asyncio.to_thread(self.control.take_prompts, self.actor_id, want, 200,
                                            int(self.cfg.rollout.faults.reclaim_idle_s * 1000))
            # XAUTOCLAIM may hand back a prompt this actor still works on (held past reclaim_idle_s): keep one copy.
            taken = [(eid, payload) for eid, payload in taken if eid not in self._holding]
            self._holding.update(eid for eid, _ in taken)
            entries += taken
        for entry_id, payload in entries:
            running.add(asyncio.create_task(self._rollout(entry_id, payload)))
        return len(entries)

    async def _rollout(self, entry_id: str, payload: bytes) -> None:
        prompt = pb.Prompt.FromString(payload)
        try:
            frames = await asyncio.to_thread(self.frames.get_for_prompt, prompt, self.cfg.media)
        except MediaError as e:
            log.warning("prompt %s quarantined: %s", prompt.prompt_id, e)
            self.metrics.quarantined(e.reason)
            await asyncio.to_thread(self._quarantine, entry_id, e.reason)
            self._holding.discard(entry_id)
            return
        t0 = time.perf_counter()
        version, samples = await self._generate(prompt, frames)
        if samples is None:
            self.retry.append((entry_id, payload))   # aborted by a swap: again, under the new version
            return
        self.stats.gen_seconds += time.perf_counter() - t0
        self.stats.tokens += sum(len(s.token_ids) for s in samples)
        self.metrics.generate.observe(time.perf_counter() - t0)
        self.metrics.tokens.inc(sum(len(s.token_ids) for s in samples))
        group_id = f"{prompt.prompt_id}/v{version}"
        await self.link.send(group_id, entry_id, [pb.Completion(
            run_id=self.cfg.run_id, prompt_id=prompt.prompt_id, group_id=group_id, sample_index=i,
            group_size=len(samples), policy_version=version, prompt_token_ids=s.prompt_token_ids,
            completion_token_ids=s.token_ids, logprobs=s.logprobs, text=s.text,
            finish_reason=s.finish_reason, actor_id=self.actor_id, prompt=prompt) for i, s in enumerate(samples)])
        self.stats.groups_sent += 1

    async def _generate(self, prompt: pb.Prompt, frames) -> tuple[int, list | None]:
        """Sample K completions; returns (the version that produced them, samples or None if aborted)."""
        r = self.cfg.rollout
        engine = self._engine()
        text = chat_text(engine.tokenizer, prompt.question, list(prompt.options))
        async with self._gate:
            await self._gate.wait_for(lambda: not self._swapping)
            self._seq += 1
            request_id = f"{self.actor_id}-{self._seq}"
            self._requests.add(request_id)
            version = self.loaded_version
        try:
            held_out = prompt.split == "eval"  # scored, never trained on: greedy (or eval_samples) by default
            samples = await engine.generate(request_id, text, frames,
                                                 r.eval_samples if held_out else self.cfg.group_size, r.max_new_tokens,
                                                 r.eval_temperature if held_out else r.temperature)
        finally:
            async with self._gate:
                self._requests.discard(request_id)
                self._gate.notify_all()
        return version, samples

    async def _adopt_orphans(self) -> None:
        """Queue (as retries) the prompts pending under this actor's name that it does not hold. Runs between
        takes, so every prompt a take returned is already held."""
        self._orphans_checked = time.monotonic()
        held = set(self._holding)   # one acked meanwhile leaves _holding but was read as pending: not an orphan
        pending = await asyncio.to_thread(self.control.pending_prompts, self.actor_id, 10_000)
        orphans = [(eid, payload) for eid, payload in pending if eid not in held and eid not in self._holding]
        if orphans:
            log.warning("%s found %d prompts delivered to it but never seen; generating them", self.actor_id,
                        len(orphans))
            self.metrics.orphaned.inc(len(orphans))
            await asyncio.to_thread(self.control.incr, "prompts_orphaned", len(orphans))
            self._holding.update(eid for eid, _ in orphans)
            self.retry.extend(orphans)

    def _quarantine(self, entry_id: str, reason: str) -> None:
        self.control.incr(f"prompts_quarantined:{reason}")
        self.control.ack_prompt(entry_id)

    async def _on_ack(self, ack: pb.GroupAck, entry_id: str) -> None:
        """The reward service is done with a group (SCORED, DUPLICATE: scored before, or REJECTED): ack its prompt."""
        if ack.status == pb.GroupAck.REJECTED:
            log.warning("group %s rejected by the reward service: %s", ack.group_id, ack.reason)
            await asyncio.to_thread(self.control.incr, "groups_rejected")
        await asyncio.to_thread(self.control.ack_prompt, entry_id)
        self._holding.discard(entry_id)

    async def _watch_versions(self) -> None:
        """Swap as soon as a version is published: on its pub/sub event, and by polling once a second."""
        ps = await asyncio.to_thread(self.control.subscribe_versions)
        try:
            while True:
                await asyncio.to_thread(ps.get_message, timeout=1.0)
                await self._maybe_swap()
        finally:
            ps.close()

    def _engine(self) -> Engine:
        if self.engine is None:
            raise RuntimeError(f"{self.actor_id}: the engine is used before run() built it")
        return self.engine

    async def _maybe_swap(self) -> None:
        async with self._swap_lock:
            await self._swap_if_newer()

    async def _swap_if_newer(self) -> None:
        if self.broadcast:
            await self._follow_group()
            if await self._receive_offer():
                return
        current = await asyncio.to_thread(self.control.current_version)
        if current is None or current <= self.loaded_version or current in self.refused:
            return
        manifest = await asyncio.to_thread(self.control.manifest, current)
        if manifest is not None and not manifest.uri:
            return   # broadcast to a group this actor is not in: it loads the disk copy once there is one
        try:
            if manifest is None:
                raise WeightIntegrityError(f"version {current} is current but has no manifest in Redis")
            await asyncio.to_thread(verify, manifest)
        except WeightIntegrityError as e:
            # Keep serving the version we have (and keep reporting it) rather than load damaged weights.
            log.error("%s refuses version %d: %s", self.actor_id, current, e)
            self.refused.add(current)
            await asyncio.to_thread(self.control.incr, "versions_refused")
            return
        await self._swap(current, lambda: self._engine().load_weights(manifest.uri))

    async def _swap(self, version: int, load) -> None:
        """Stop new requests, abort (or finish) those in flight, `await load()`, then serve `version`."""
        t0 = time.perf_counter()
        async with self._gate:
            self._swapping = True
        try:
            if self.cfg.rollout.swap == "abort":
                await self._engine().abort(list(self._requests))
            async with self._gate:
                await self._gate.wait_for(lambda: not self._requests)
            await load()
            self.loaded_version = version
        finally:
            async with self._gate:
                self._swapping = False
                self._gate.notify_all()
        paused = time.perf_counter() - t0
        await asyncio.to_thread(self.control.record_swap, self.actor_id, version, time.time())
        self.stats.swaps += 1
        self.stats.swap_seconds += paused
        self.metrics.swap.observe(paused)
        await asyncio.to_thread(self.control.heartbeat, self.actor_id, version, "running", last_swap_s=round(paused, 4),
                                **self._rates())
        log.info("%s loaded version %d in %.3fs", self.actor_id, version, paused)

    # -- the broadcast transport -----------------------------------------------------------------
    def _receiver(self) -> BroadcastEngine:
        engine = self._engine()
        if not isinstance(engine, BroadcastEngine):
            raise RuntimeError(f"weights.transport is broadcast, but {type(engine).__name__} cannot receive weights")
        return engine

    async def _follow_group(self) -> None:
        """Join the newest weight group this actor is named in (once: a failed join waits for the next epoch)."""
        group = await asyncio.to_thread(self.plane.group)
        if group is None or group.epoch <= self.epoch or self.actor_id not in group.members:
            return
        self.epoch, self.joined = group.epoch, False
        try:
            await self._receiver().join_weight_group(group.join_info(self.actor_id))
        except Exception as e:   # the learner gave up on this epoch too: its next version comes as a disk copy
            log.warning("%s could not join weight group epoch %d: %s", self.actor_id, group.epoch, e)
            return
        self.joined = True
        log.info("%s joined weight group epoch %d", self.actor_id, group.epoch)

    async def _receive_offer(self) -> bool:
        """Receive the version offered to this actor's group, if newer than the loaded one; True when it swapped."""
        offer = await asyncio.to_thread(self.plane.offered)
        if offer is None or not self.joined or offer.epoch != self.epoch or offer.version <= self.loaded_version:
            return False
        engine = self._receiver()
        update_info = await asyncio.to_thread(self.plane.update_info, offer.layout)
        if Layout.from_update_info(update_info).digest() != offer.layout:
            raise RuntimeError(f"version {offer.version}: its tensor metadata in Redis does not match its digest")
        # on this machine, in shared memory: mapped; on a sample of versions, checked against the learner's sha256
        update_info = {**update_info, "shm_path": offer.shm, "sums": offer.sums}
        try:
            received = await engine.prefetch_weights(update_info)
        except Exception as e:   # the group is gone (the learner left it, a member died), no file, other bytes
            await asyncio.to_thread(self._refused, offer, str(e))
            return False
        if offer.shm:
            await asyncio.to_thread(self.plane.ack_received, offer.version, self.actor_id)
        self.metrics.receive.observe(received)
        await self._swap(offer.version, lambda: engine.apply_weights(update_info, offer.version))
        every = self.cfg.weights.checksum_every
        if every and offer.version % every == 0:
            await self._check_weights(offer.version)
        return True

    def _refused(self, offer: Offer, why: str) -> None:
        """A version that did not arrive comes as a disk copy; a shared-memory one is refused at once, so the learner
        need not wait out weights.timeout_s for this actor."""
        log.warning("%s: version %d did not arrive over epoch %d (%s); it comes as a disk copy", self.actor_id,
                    offer.version, offer.epoch, why)
        if MISMATCH in why:
            self.control.incr("weight_checksum_mismatch")
        if offer.shm:
            self.plane.refuse(offer.version, self.actor_id, why)
        self.joined = offer.shm != ""   # a failed mapping leaves the group as it was

    async def _check_weights(self, version: int) -> None:
        """Integrity across actors: the digest of vLLM's checksum of every parameter, recorded in Redis and compared
        with the other actors' at the same version. A mismatch is logged and counted, never silent."""
        sums = await self._receiver().weight_checksums()
        digest = hashlib.sha256(json.dumps(sorted(sums.items())).encode()).hexdigest()
        recorded = await asyncio.to_thread(self.plane.record_checksum, version, self.actor_id, digest)
        if differ := sorted(a for a, d in recorded.items() if d != digest):
            log.error("%s: the weights of version %d differ from those of %s", self.actor_id, version,
                      ", ".join(differ))
            await asyncio.to_thread(self.control.incr, "weight_checksum_mismatch")

    async def _wait_for_current(self) -> None:
        """An actor that starts while the current version has no disk copy waits (state `waiting`: the learner writes
        one) instead of generating with older weights, unless it is stopped meanwhile."""
        while not self._stop.is_set():
            current = await asyncio.to_thread(self.control.current_version)
            if current is None or self.loaded_version >= current:
                return
            await asyncio.to_thread(self.control.heartbeat, self.actor_id, self.loaded_version, "waiting")
            await asyncio.sleep(0.5)
            await self._maybe_swap()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.to_thread(self.control.heartbeat, self.actor_id, self.loaded_version, "running",
                                    **self._rates())
            await asyncio.sleep(self.cfg.rollout.heartbeat_s)

    def _rates(self) -> dict:
        s = self.stats
        return {"tokens": s.tokens, "groups_sent": s.groups_sent, "swaps": s.swaps, "reconnects": self.link.reconnects,
                "groups_resent": self.link.resent, "tokens_per_s": s.tokens_per_s}
