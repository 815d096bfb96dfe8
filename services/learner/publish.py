"""Publishing a version over the broadcast weight transport (`weights.transport: broadcast`): the learner is rank 0
of one weight group per membership epoch (services/learner/broadcast.py), Redis says who is in it and what is being
sent (services/common/weight_plane.py), and a disk copy serves everyone the group does not reach.

A version, read top to bottom (`publish`): gather the weights (every learner rank takes part under ZeRO-3); the
actors that hold the current version and are running form the group, rebuilt as a new epoch when they differ from
the last one's; offer the version (its tensor metadata) and send it; make it current. When every member runs on
the learner's machine (weights.shared_memory), the version is written into a /dev/shm file instead, offered by its
path, and current once every member has mapped it (a member that dies meanwhile fails it at once). When no actor
is ready, or the broadcast fails (an actor died, a collective timed out), the version is written to disk first and
published with its disk copy instead, so the survivors and the replacements still get it, and the next version
goes to a new group. Every `weights.disk_every` versions, and whenever an actor waits for the current version (a late
joiner, a replacement), a disk copy is written in the background from the tensors kept since the send.

Invariants kept here: a version becomes current only after every member received it, or after its disk copy is
complete; versions stay monotonic (the driver numbers them); at most one disk copy is written at a time, from
tensors no training step touches (full_state_dict copies them); the newest disk copy is never pruned while no newer
one exists (the driver's _prune_versions).
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram

from services.common.config import RunConfig
from services.common.control import ControlPlane
from services.common.metrics import check_name
from services.common.weight_plane import WeightPlane
from services.common.weight_wire import Layout
from services.common.weights import Manifest, write_version
from services.learner.broadcast import SendStats, WeightSender, write_shared

log = logging.getLogger("videorl.learner")
READY, WAITING = "running", "waiting"   # actor states (services/rollout/actor.py heartbeats them)
SHM = Path("/dev/shm")


class BroadcastMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.bytes = Counter(check_name("videorl_learner_weights_sent_bytes_total"),
                             "bytes of weights broadcast to the rollout workers", registry=registry)
        self.buckets = Counter(check_name("videorl_learner_weights_collectives_total"),
                               "collectives (buckets or pieces of large tensors) the weights went out in",
                               registry=registry)
        self.send = Histogram(check_name("videorl_learner_weights_send_seconds"),
                              "time to broadcast one version to its group", registry=registry)
        self.epochs = Counter(check_name("videorl_learner_weight_epochs_total"),
                              "weight groups formed (one per membership epoch)", registry=registry)
        self.failed = Counter(check_name("videorl_learner_weight_broadcasts_failed_total"),
                              "versions whose broadcast failed and went out as a disk copy", registry=registry)
        self.disk = Histogram(check_name("videorl_learner_weights_disk_copy_seconds"),
                              "time to write one version's disk copy", registry=registry)
        for c in (self.bytes, self.buckets, self.epochs, self.failed):
            c.inc(0)


def own_address() -> str:
    """Where the group's rendezvous listens: this Ray node's address (loopback outside Ray, as in tests)."""
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"


class BroadcastPublisher:
    def __init__(self, cfg: RunConfig, control: ControlPlane, engine, root: Path, registry: CollectorRegistry):
        """`engine`: what the driver trains through (ranks.RankGroup): full_state_dict and save_state."""
        self.cfg, self.control, self.engine, self.root = cfg, control, engine, Path(root)
        self.plane = WeightPlane(control)
        self.metrics = BroadcastMetrics(registry)
        self.sender: WeightSender | None = None
        self.members: dict[str, int] = {}
        self.epoch = 0
        self.kept: tuple[Manifest, dict] | None = None   # the newest version and its tensors, for a disk copy
        self._copy: threading.Thread | None = None
        self.address = own_address()
        self._remove_shared()   # left by a learner of this run that died

    def publish(self, version: int, step: int) -> Manifest:
        state = self.engine.full_state_dict()
        layout = Layout.of_tensors(state.items())
        manifest = Manifest(version=version, uri="", bytes=layout.total, step=step, created_at=time.time(),
                            transport="broadcast", layout=layout.digest())
        sent = False
        if members := self._ready_actors():
            try:
                epoch = self._group_for(members)
                stats = self._hand_over(version, epoch, manifest.layout, layout, state)
                self.metrics.bytes.inc(stats.bytes)
                self.metrics.buckets.inc(stats.collectives)
                self.metrics.send.observe(stats.seconds)
                manifest, sent = replace(manifest, epoch=epoch), True
                log.info("version %d to %d actors (epoch %d): %.1f MB %s, %.2fs", version, len(members), epoch,
                         stats.bytes / 1e6, f"in {stats.collectives} collectives" if stats.collectives else
                         "in shared memory", stats.seconds)
            except Exception as e:   # a member died or stalled: this version goes out on disk, the next to a new group
                log.warning("broadcast of version %d failed (%s): it is published with a disk copy instead, and the "
                            "next version goes to a new weight group", version, e)
                self.metrics.failed.inc()
                self.control.incr("weight_broadcasts_failed")
                self.close()
        self.wait_copy()
        self.kept = (manifest, state)
        if sent:
            self.control.publish_version(manifest)
            if version % self.cfg.weights.disk_every == 0:
                self._copy_in_background()
        else:
            manifest = self._write_copy(manifest, state)
            self.control.publish_version(replace(manifest, transport="disk"))
            self.plane.attach_disk_copy(manifest)
        return manifest

    def _hand_over(self, version: int, epoch: int, digest: str, layout: Layout, state: dict) -> SendStats:
        """Send the version over the group; or, when every member runs on this machine (and weights.shared_memory),
        write it into a shared-memory file, offer its path and wait until every member has mapped it. On a sample
        of versions (weights.checksum_every) the offer carries the sha256 of each tensor, which each worker checks."""
        every = self.cfg.weights.checksum_every
        sums = layout.digests(state.items()) if every and version % every == 0 else None
        if not self._shared(layout.total):
            self.plane.offer(version, epoch, digest, layout.update_info(), sums=sums)
            assert self.sender is not None
            return self.sender.send(layout, state.items())
        # Two files, used in turn: version v overwrites v-2's, which every member finished with before it took v-1
        # (an actor takes versions one at a time); rewriting a file's pages is cheaper than faulting in new ones.
        path = str(SHM / f"videorl-{self.cfg.run_id}-slot{version % 2}")
        stats = write_shared(layout, state.items(), path)
        self.plane.offer(version, epoch, digest, layout.update_info(), shm=path, sums=sums)
        try:
            self._wait_received(version)
        finally:
            self.plane.forget_answers(version)
        return stats

    def _shared(self, total: int) -> bool:
        if not self.cfg.weights.shared_memory or not SHM.is_dir():
            return False
        host = socket.gethostname()
        hosts = {a.fields.get("host") for a in self.control.actors() if a.actor_id in self.members}
        return hosts == {host} and shutil.disk_usage(SHM).free > 2 * total

    def _wait_received(self, version: int) -> None:
        """Until every member has acknowledged the version's bytes; a member that refuses them (a failed checksum, a
        file it cannot map), dies, stops or stays silent for weights.timeout_s fails the hand-over."""
        deadline, silent_s = time.monotonic() + self.cfg.weights.timeout_s, 3 * self.cfg.rollout.heartbeat_s
        while (missing := set(self.members) - self.plane.received(version)):
            if refused := self.plane.refused(version):
                raise RuntimeError("; ".join(f"{a} refused version {version}: {why}"
                                             for a, why in sorted(refused.items())))
            gone = [a.actor_id for a in self.control.actors()
                    if a.actor_id in missing and (a.state in ("dead", "stopped") or not a.alive(silent_s))]
            if gone:
                raise RuntimeError(f"{', '.join(sorted(gone))} left before taking version {version}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{', '.join(sorted(missing))} did not take version {version} within "
                                   f"{self.cfg.weights.timeout_s:.0f}s (weights.timeout_s)")
            time.sleep(0.005)

    def serve_joiners(self) -> None:
        """Between steps: an actor that waits for the current version (it joined late, or replaces one that died)
        gets its disk copy, written in the background from the kept tensors."""
        if self.kept is None or self.kept[0].on_disk or (self._copy is not None and self._copy.is_alive()):
            return
        silent_s = 3 * self.cfg.rollout.heartbeat_s
        waiting = [a.actor_id for a in self.control.actors() if a.state == WAITING and a.alive(silent_s)]
        if waiting:
            log.info("writing a disk copy of version %d for %s, waiting for it", self.kept[0].version,
                     ", ".join(waiting))
            self._copy_in_background()

    def _ready_actors(self) -> list[str]:
        """Running actors in the current group (one may still be loading the last version: it receives the next after
        it), and those that hold the current version: the members of the group the next version goes to."""
        current, silent_s = self.control.current_version() or 0, 3 * self.cfg.rollout.heartbeat_s
        return sorted(a.actor_id for a in self.control.actors() if a.state == READY and a.alive(silent_s)
                      and (a.actor_id in self.members or a.loaded_version == current))

    def _group_for(self, actors: list[str]) -> int:
        """The epoch `actors` form: the current one, or a new group every one of them has joined."""
        if self.sender is not None and set(actors) == set(self.members):
            return self.epoch
        self.close()
        w, tp = self.cfg.weights, self.cfg.rollout.engine.tensor_parallel_size
        members = {a: 1 + i * tp for i, a in enumerate(actors)}
        sender = WeightSender(self.address, 1 + len(actors) * tp, f"videorl/{self.cfg.run_id}/{time.time_ns()}",
                              w.bucket_mib << 20, w.timeout_s)
        epoch = self.plane.open_epoch(sender.info.to_dict(), members)
        self.metrics.epochs.inc()
        log.info("weight group epoch %d: %s (%d ranks) joining at %s:%d", epoch, ", ".join(actors),
                 sender.info.world_size, sender.info.master_address, sender.info.master_port)
        try:
            sender.connect()
        except BaseException:
            sender.close()
            raise
        self.sender, self.members, self.epoch = sender, members, epoch
        return epoch

    def _write_copy(self, manifest: Manifest, state: dict) -> Manifest:
        t0 = time.perf_counter()
        disk = write_version(self.root, manifest.version, manifest.step, lambda d: self.engine.save_state(state, d))
        self.metrics.disk.observe(time.perf_counter() - t0)
        return replace(manifest, uri=disk.uri, bytes=disk.bytes, sha256=disk.sha256)

    def _copy_in_background(self) -> None:
        assert self.kept is not None
        manifest, state = self.kept

        def copy() -> None:
            try:
                done = self._write_copy(manifest, state)
                self.plane.attach_disk_copy(done)
                if self.kept is not None and self.kept[0].version == done.version:
                    self.kept = (done, state)
                log.info("disk copy of version %d in %s", done.version, done.uri)
            except Exception:   # the broadcast already delivered the version: a failed copy costs only the copy
                log.exception("disk copy of version %d failed", manifest.version)

        self._copy = threading.Thread(target=copy, name="videorl-disk-copy", daemon=True)
        self._copy.start()

    def wait_copy(self) -> None:
        if self._copy is not None:
            self._copy.join()

    def _remove_shared(self) -> None:
        for path in SHM.glob(f"videorl-{self.cfg.run_id}-slot*"):
            path.unlink(missing_ok=True)   # members still loading keep their mappings

    def close(self) -> None:
        """Leave the weight group (the next version goes to a new one) and free the shared-memory files."""
        if self.sender is not None:
            self.sender.close()
        self.sender, self.members = None, {}
        self._remove_shared()
