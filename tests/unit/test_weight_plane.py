"""What the broadcast transport keeps in Redis (services/common/weight_plane.py), against a real redis-server."""

import pytest

from services.common.weight_plane import WeightPlane
from services.common.weights import Manifest

INFO = {"master_address": "127.0.0.1", "master_port": 4567, "world_size": 3, "group_name": "g", "bucket_bytes": 64,
        "timeout_s": 5.0, "rank_offset": 1}


def test_epochs_only_rise_and_each_member_joins_at_its_own_rank(control):
    plane = WeightPlane(control)
    assert plane.group() is None and plane.offered() is None and plane.disk_version() is None
    first = plane.open_epoch(INFO, {"rollout-0": 1, "rollout-1": 2})
    second = plane.open_epoch({**INFO, "master_port": 4568}, {"rollout-1": 1})
    assert second == first + 1
    group = plane.group()
    assert group is not None and group.epoch == second and group.members == {"rollout-1": 1}
    assert group.join_info("rollout-1") == {**INFO, "master_port": 4568, "rank_offset": 1}
    with pytest.raises(KeyError):
        group.join_info("rollout-0")   # no longer a member: it must not join


def test_an_offer_carries_the_metadata_by_its_digest_and_wakes_subscribers(control):
    plane = WeightPlane(control)
    ps = control.subscribe_versions()
    ps.get_message(timeout=1.0)
    info = {"names": ["w"], "dtype_names": ["float32"], "shapes": [[2, 3]]}
    plane.offer(4, 2, "abc", info)
    offer = plane.offered()
    assert offer is not None and (offer.version, offer.epoch, offer.layout) == (4, 2, "abc")
    assert plane.update_info("abc") == info
    with pytest.raises(KeyError, match="no tensor metadata"):
        plane.update_info("def")
    assert ps.get_message(timeout=2.0)["data"] == b"offer:4"
    ps.close()
    assert offer.sums == {} and offer.shm == ""
    plane.offer(5, 2, "abc", info, shm="/dev/shm/x", sums={"w": "ab" * 32})
    assert plane.offered().sums == {"w": "ab" * 32}
    plane.offer(6, 2, "abc", info)
    assert plane.offered().sums == {} and plane.offered().shm == "", "an offer never inherits the last one's fields"


def test_answers_to_a_shared_memory_offer_expire_and_the_learner_forgets_them(control):
    plane = WeightPlane(control)
    plane.ack_received(3, "rollout-0")
    plane.refuse(3, "rollout-1", "w arrived with other bytes")
    assert plane.received(3) == {"rollout-0"} and plane.refused(3) == {"rollout-1": "w arrived with other bytes"}
    assert 0 < control.r.ttl(control.key("weights:refused:3")) <= 3600, "a late answer cannot pile up"
    plane.forget_answers(3)
    assert plane.received(3) == set() and plane.refused(3) == {}


def test_a_disk_copy_completes_a_broadcast_manifest_and_the_newest_copy_only_rises(control):
    plane = WeightPlane(control)
    sent = Manifest(version=3, uri="", bytes=100, step=6, created_at=1.0, transport="broadcast", epoch=2, layout="ab")
    control.publish_version(sent)
    assert not control.manifest(3).on_disk and control.manifest(3).transport == "broadcast"
    plane.attach_disk_copy(Manifest(version=3, uri="/w/v3", bytes=120, sha256={"model.safetensors": "f" * 64}))
    got = control.manifest(3)
    assert got.on_disk and (got.uri, got.bytes, got.transport, got.epoch, got.layout) == ("/w/v3", 120, "broadcast",
                                                                                         2, "ab")
    plane.attach_disk_copy(Manifest(version=1, uri="/w/v1", bytes=1, sha256={"m.safetensors": "0" * 64}))
    assert plane.disk_version() == 3   # an older copy finishing late does not move it back


def test_the_supervisor_marks_a_dead_actor_without_creating_a_record(control):
    control.heartbeat("rollout-0", 2, "running")
    control.set_actor_state("rollout-0", "dead")
    control.set_actor_state("rollout-9", "dead")   # never heartbeated: nothing to mark
    assert [(a.actor_id, a.state, a.loaded_version) for a in control.actors()] == [("rollout-0", "dead", 2)]


def test_each_actor_sees_the_checksums_recorded_before_its_own(control):
    plane = WeightPlane(control)
    assert plane.record_checksum(5, "rollout-0", "aa") == {"rollout-0": "aa"}
    assert plane.record_checksum(5, "rollout-1", "bb") == {"rollout-0": "aa", "rollout-1": "bb"}
    assert plane.record_checksum(6, "rollout-1", "cc") == {"rollout-1": "cc"} == plane.checksums(6)
    assert plane.checksums(7) == {}
