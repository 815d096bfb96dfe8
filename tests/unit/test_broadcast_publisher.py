"""The learner's publishing over the broadcast transport (services/learner/publish.py) against a real redis-server
and receivers that are real gloo ranks on loopback threads, joining as the rollout actors do: from the group Redis
names them in. The learner's engine is a small stand-in that holds a few tensors and writes them as safetensors."""

import threading
import time

import pytest
import torch
from prometheus_client import CollectorRegistry
from safetensors.torch import load_file, save_file

from services.common.config import RunConfig
from services.common.weight_plane import WeightPlane
from services.common.weight_wire import GroupInfo, Layout, broadcast, open_group, shared_stream
from services.learner.publish import SHM, BroadcastPublisher


class Weights:
    """What BroadcastPublisher uses of the learner: its gathered tensors (changing with each version) and a writer."""

    def __init__(self):
        self.version = 0

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        self.version += 1
        return {"a.weight": torch.full((4, 8), float(self.version)), "b.bias": torch.arange(3.0) + self.version}

    def save_state(self, state, out_dir) -> None:
        save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})


def _publisher(control, tmp_path, **weights) -> BroadcastPublisher:
    weights = {"transport": "broadcast", "timeout_s": 3.0, "disk_every": 100, "shared_memory": False, **weights}
    cfg = RunConfig(run_id=control.run_id, run_dir=tmp_path, weights=weights)
    return BroadcastPublisher(cfg.on("cpu"), control, Weights(), tmp_path / "weights", CollectorRegistry())


def _actor(control, actor_id: str, versions: int, got: dict) -> threading.Thread:
    """A receiver that heartbeats as a running actor holding the current version, joins the group Redis names it in
    and receives `versions` offers."""
    plane = WeightPlane(control)

    def run() -> None:
        while (group := plane.group()) is None or actor_id not in group.members:
            time.sleep(0.02)
        info = GroupInfo(**group.join_info(actor_id))
        pg, _store = open_group(info, info.rank_offset, "127.0.0.1")
        for _ in range(versions):
            while (offer := plane.offered()) is None or offer.version in got:
                time.sleep(0.02)
            layout = Layout.from_update_info(plane.update_info(offer.layout))
            if offer.shm:   # on the learner's machine: the bytes are in a file to map
                stream = shared_stream(offer.shm, layout.total)
                got.setdefault("shm", []).append(offer.version)
            else:
                stream = torch.empty(layout.total, dtype=torch.uint8)
                for start, end in layout.spans(info.bucket_bytes):
                    broadcast(pg, stream[start:end], info.timeout_s)
            try:
                layout.check(stream, offer.sums)   # as the worker does (rollout/weight_transfer.py)
            except ValueError as e:
                got.setdefault("refused", []).append(offer.version)
                plane.refuse(offer.version, actor_id, str(e))
                continue
            got[offer.version] = {n: t.clone() for n, t in layout.views(stream)}
            if offer.sums:
                got.setdefault("sums", []).append(offer.version)
            if offer.shm:
                plane.ack_received(offer.version, actor_id)

    control.heartbeat(actor_id, control.current_version() or 0, "running")
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_with_no_actor_ready_a_version_is_published_with_its_disk_copy(control, tmp_path):
    pub = _publisher(control, tmp_path)
    m = pub.publish(1, step=2)
    current = control.manifest(1)
    assert control.current_version() == 1 and current.on_disk and current.transport == "disk"
    assert load_file(f"{m.uri}/model.safetensors")["a.weight"].eq(1.0).all()
    assert WeightPlane(control).disk_version() == 1 and WeightPlane(control).group() is None


@pytest.mark.parametrize("shared", [False, True], ids=["over-gloo", "in-shared-memory"])
def test_ready_actors_get_each_version_over_one_group_until_membership_changes(control, tmp_path, shared):
    pub = _publisher(control, tmp_path, shared_memory=shared)
    got: dict = {}
    t = _actor(control, "rollout-0", 2, got)
    m1 = pub.publish(1, step=1)
    m2 = pub.publish(2, step=2)   # its heartbeat still says version 0: a member is kept while it catches up
    t.join(10)
    assert got[1]["a.weight"].eq(1.0).all() and got[2]["b.bias"].tolist() == [2.0, 3.0, 4.0]
    assert (m1.transport, m1.on_disk, m1.epoch) == ("broadcast", False, m2.epoch) and m1.epoch > 0
    assert control.current_version() == 2 and not (tmp_path / "weights").exists()
    assert pub.metrics.epochs._value.get() == 1 and pub.metrics.bytes._value.get() == 2 * Layout.of_tensors(
        pub.kept[1].items()).total
    assert got.get("shm", []) == ([1, 2] if shared else []), "every actor is on this machine: shared memory"
    assert len(list(SHM.glob(f"videorl-{control.run_id}-slot*"))) == (2 if shared else 0), "two files, in turn"
    pub.close()
    assert not list(SHM.glob(f"videorl-{control.run_id}-*")), "the files go with the publisher"


def test_a_shared_memory_hand_over_fails_fast_when_a_member_dies_before_taking_it(control, tmp_path):
    pub = _publisher(control, tmp_path, timeout_s=30.0, shared_memory=True)
    got: dict = {}
    t = _actor(control, "rollout-0", 1, got)
    pub.publish(1, step=1)
    t.join(10)
    assert got["shm"] == [1]
    plane = WeightPlane(control)

    def die_once_offered() -> None:   # it will never map version 2: the supervisor marks it dead meanwhile
        while (offer := plane.offered()) is None or offer.version != 2:
            time.sleep(0.01)
        control.set_actor_state("rollout-0", "dead")

    threading.Thread(target=die_once_offered, daemon=True).start()
    t0 = time.monotonic()
    m = pub.publish(2, step=2)
    assert time.monotonic() - t0 < 5, "a member marked dead fails the hand-over at once, not at weights.timeout_s"
    assert m.on_disk and control.manifest(2).transport == "disk" and pub.metrics.failed._value.get() == 1
    assert not list(SHM.glob(f"videorl-{control.run_id}-*")), "a failed hand-over closes the group and frees the files"


def test_sampled_versions_carry_the_learners_checksums_and_a_member_that_refuses_them_fails_it_at_once(
        control, tmp_path, monkeypatch):
    pub = _publisher(control, tmp_path, timeout_s=30.0, shared_memory=True, checksum_every=2)
    got: dict = {}
    t = _actor(control, "rollout-0", 4, got)
    pub.publish(1, step=1)
    pub.publish(2, step=2)
    assert got["sums"] == [2] and got[2]["a.weight"].eq(2.0).all(), "every checksum_every-th version is checked"
    sent = Layout.digests   # version 4 goes out with a wrong checksum for one tensor, as if its bytes were damaged
    monkeypatch.setattr(Layout, "digests", lambda self, ts: {**sent(self, ts), "b.bias": "0" * 64})
    pub.publish(3, step=3)
    t0 = time.monotonic()
    m = pub.publish(4, step=4)
    t.join(10)
    assert got["refused"] == [4] and 4 not in got
    assert time.monotonic() - t0 < 5, "a refusal fails the hand-over at once, not at weights.timeout_s"
    assert m.on_disk and control.manifest(4).transport == "disk" and pub.metrics.failed._value.get() == 1
    assert WeightPlane(control).refused(4) == {}, "the learner forgets the answers it waited for"
    pub.close()


def test_a_member_that_never_joins_fails_the_broadcast_into_a_disk_copy_and_the_next_goes_to_a_new_group(
        control, tmp_path):
    pub = _publisher(control, tmp_path, timeout_s=1.0)
    control.heartbeat("rollout-0", 0, "running")   # alive in Redis, but nobody joins for it
    t0 = time.monotonic()
    m = pub.publish(1, step=1)
    assert time.monotonic() - t0 < 10, "the join waits at most weights.timeout_s"
    assert m.on_disk and control.manifest(1).transport == "disk" and pub.metrics.failed._value.get() == 1
    assert control.counters()["weight_broadcasts_failed"] == 1
    first = WeightPlane(control).group().epoch
    control.set_actor_state("rollout-0", "dead")   # the supervisor's mark: out of every later group
    got: dict = {}
    t = _actor(control, "rollout-1", 1, got)
    assert pub.publish(2, step=2).epoch == WeightPlane(control).group().epoch > first
    t.join(10)
    assert got[2]["a.weight"].eq(2.0).all() and set(WeightPlane(control).group().members) == {"rollout-1"}
    pub.close()


def test_an_actor_waiting_for_the_current_version_gets_its_disk_copy(control, tmp_path):
    pub = _publisher(control, tmp_path)
    got: dict = {}
    t = _actor(control, "rollout-0", 1, got)
    pub.publish(1, step=1)
    t.join(10)
    assert not control.manifest(1).on_disk
    pub.serve_joiners()
    assert pub._copy is None, "nobody waits: no copy"
    control.heartbeat("rollout-1", 0, "waiting")
    pub.serve_joiners()
    pub.wait_copy()
    m = control.manifest(1)
    assert m.on_disk and m.transport == "broadcast" and WeightPlane(control).disk_version() == 1
    assert load_file(f"{m.uri}/model.safetensors")["a.weight"].eq(1.0).all(), "the copy is of the version sent"
    pub.serve_joiners()
    pub.wait_copy()   # the kept version is on disk now: nothing more is written
    assert len(list((tmp_path / "weights").iterdir())) == 1
    pub.close()
