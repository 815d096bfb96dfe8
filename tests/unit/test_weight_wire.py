"""The broadcast transport's wire format (services/common/weight_wire.py): what the sender packs, bucket by bucket,
the receiver unpacks into the same tensors, whatever the bucket size; and its gloo group on loopback."""

import hashlib
import threading
import time

import pytest
import torch

from services.common.weight_wire import (
    ALIGN,
    MISMATCH,
    GroupInfo,
    Layout,
    Packer,
    broadcast,
    listen_socket,
    open_group,
)


def _state() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [("embed.weight", torch.randn(37, 11, generator=g)),
            ("norm.weight", torch.randn(11, generator=g).to(torch.bfloat16)),
            ("empty", torch.zeros(0, 4)),
            ("scale", torch.tensor(3.5)),
            ("ids", torch.arange(13, dtype=torch.int64)),
            ("mask", torch.tensor([True, False, True])),
            ("head.weight", torch.randn(5, 11, generator=g).t())]   # not contiguous


def _send(layout: Layout, tensors, bucket_bytes: int) -> torch.Tensor:
    """What a receiver holds after every span: each one's bytes (direct or packed), written at its place."""
    stream = torch.full((layout.total,), 0xEE, dtype=torch.uint8)
    packer, bucket = Packer(layout, tensors, bucket_bytes), torch.empty(bucket_bytes, dtype=torch.uint8)
    for start, end in layout.spans(bucket_bytes):
        data = packer.direct(start, end)
        if data is None:
            packer.fill(bucket, start, end)
            data = bucket[:end - start]
        stream[start:end] = data
    packer.finish()
    return stream


@pytest.mark.parametrize("bucket_bytes", [64, 100, 1000, 1 << 20])
def test_round_trip_at_any_bucket_size(bucket_bytes):
    state = _state()
    layout = Layout.of_tensors(state)
    got = dict(layout.views(_send(layout, state, bucket_bytes)))
    assert list(got) == [n for n, _ in state]
    for name, t in state:
        assert got[name].dtype == t.dtype and got[name].shape == t.shape and torch.equal(got[name], t), name


def test_spans_cover_every_byte_once_in_order_and_never_exceed_a_bucket():
    layout = Layout.of([("a", "float32", [1000]), ("b", "bfloat16", [3])] +
                       [(f"small{i}", "float32", [25]) for i in range(30)])
    assert layout.entries[1].offset == 4032 and all(e.offset % ALIGN == 0 for e in layout.entries)
    spans = layout.spans(1024)
    # `a` (4000 bytes >= a bucket) goes alone in bucket-sized pieces; the small ones are packed together
    assert spans[:4] == [(0, 1024), (1024, 2048), (2048, 3072), (3072, 4000)] and spans[4][0] == 4032
    assert all(0 < end - start <= 1024 for start, end in spans)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    covered = torch.zeros(layout.total, dtype=torch.bool)
    for start, end in spans:
        covered[start:end] = True
    assert all(covered[e.offset:e.offset + e.nbytes].all() for e in layout.entries)


def test_a_large_tensor_travels_from_its_own_memory():
    big = torch.randn(1 << 19)                                # 2 MiB: above DIRECT_BYTES
    layout = Layout.of_tensors([("small", torch.ones(3)), ("big", big)])
    bucket_bytes = 64 << 20
    packer = Packer(layout, [("small", torch.ones(3)), ("big", big)], bucket_bytes)
    (s0, e0), (s1, e1) = layout.spans(bucket_bytes)
    assert packer.direct(s0, e0) is None                      # packed
    packer.fill(torch.empty(bucket_bytes, dtype=torch.uint8), s0, e0)
    view = packer.direct(s1, e1)
    assert view is not None and view.data_ptr() == big.data_ptr() and view.numel() == big.numel() * 4
    packer.finish()


def test_the_wire_dtype_casts_floating_tensors_only():
    state = [("w", torch.randn(8, 8)), ("ids", torch.arange(4))]
    layout = Layout.of_tensors(state, dtype=torch.bfloat16)
    assert [e.dtype for e in layout.entries] == ["bfloat16", "int64"]
    got = dict(layout.views(_send(layout, state, 64)))
    assert torch.equal(got["w"], state[0][1].to(torch.bfloat16)) and torch.equal(got["ids"], torch.arange(4))


@pytest.mark.parametrize("wire", [None, torch.bfloat16], ids=["own-dtype", "bf16-wire"])
def test_the_senders_digests_check_the_received_bytes_and_name_a_changed_tensor(wire):
    state = _state()
    layout = Layout.of_tensors(state, dtype=wire)
    sums = layout.digests(state)
    as_sent = dict(state)["embed.weight"].to(wire or torch.float32)
    raw = as_sent.contiguous().view(torch.uint8).numpy().tobytes()
    assert sums["embed.weight"] == hashlib.sha256(raw).hexdigest(), "the bytes on the wire"
    stream = _send(layout, state, 100)
    layout.check(stream, sums)
    e = next(e for e in layout.entries if e.name == "ids")
    stream[e.offset + 3] ^= 1   # one bit of one tensor
    with pytest.raises(ValueError, match=f"ids {MISMATCH}"):
        layout.check(stream, sums)
    with pytest.raises(ValueError, match="'nope', which is not in the version's layout"):
        layout.check(stream, {"nope": "0" * 64})


def test_an_empty_version_has_no_bucket():
    layout = Layout.of([])
    assert layout.total == 0 and layout.spans(64) == []
    assert list(layout.views(_send(layout, [], 64))) == []


def test_update_info_rebuilds_the_same_layout_and_digest():
    layout = Layout.of_tensors(_state())
    again = Layout.from_update_info(layout.update_info())
    assert again == layout and again.digest() == layout.digest()
    assert Layout.of([("x", "float32", [2])]).digest() != Layout.of([("x", "float32", [3])]).digest()


@pytest.mark.parametrize("tensors, message", [
    ([("b", torch.ones(2)), ("a", torch.ones(2))], "expected 'a'"),
    ([("a", torch.ones(3)), ("b", torch.ones(2))], r"expected 'a' \(2,\)"),
    ([("a", torch.ones(2))], "ended before 'b'"),
    ([("a", torch.ones(2)), ("b", torch.ones(2)), ("c", torch.ones(1))], "more tensors"),
])
def test_tensors_that_disagree_with_the_layout_are_named(tensors, message):
    layout = Layout.of([("a", "float32", [2]), ("b", "float32", [2])])
    with pytest.raises(ValueError, match=message):
        _send(layout, tensors, 64)


def test_bad_metadata_is_refused():
    with pytest.raises(ValueError, match="unknown dtype"):
        Layout.of([("a", "float33", [2])])
    with pytest.raises(ValueError, match="twice"):
        Layout.of([("a", "float32", [2]), ("a", "float32", [2])])
    with pytest.raises(ValueError, match="bucket_bytes"):
        Layout.of([("a", "float32", [2])]).spans(8)


def _group(world: int, timeout_s: float = 5.0):
    listener = listen_socket("127.0.0.1")
    info = GroupInfo("127.0.0.1", listener.getsockname()[1], world, "test/epoch0", 1 << 10, timeout_s)
    return info, listener


def test_a_group_on_loopback_broadcasts_from_rank_0():
    info, listener = _group(3)
    got: dict[int, torch.Tensor] = {}

    def receive(rank: int) -> None:
        group, _store = open_group(info, rank, "127.0.0.1")
        got[rank] = torch.zeros(1000, dtype=torch.uint8)
        broadcast(group, got[rank], info.timeout_s)

    threads = [threading.Thread(target=receive, args=(r,)) for r in (1, 2)]
    for t in threads:
        t.start()
    group, _store = open_group(info, 0, "127.0.0.1", listener)
    sent = torch.arange(1000).to(torch.uint8)
    broadcast(group, sent, info.timeout_s)
    for t in threads:
        t.join(10)
    assert all(torch.equal(got[r], sent) for r in (1, 2))
    listening = {c.laddr for c in __import__("psutil").Process().net_connections() if c.status == "LISTEN"}
    assert ("127.0.0.1", info.master_port) in listening and ("::", info.master_port) not in listening


def test_a_receiver_whose_sender_never_sends_fails_within_the_timeout():
    info, listener = _group(2, timeout_s=1.0)
    ready = threading.Event()

    def sender() -> None:
        group, store = open_group(info, 0, "127.0.0.1", listener)
        ready.set()
        time.sleep(4)                      # joined, alive, silent
        del group, store

    threading.Thread(target=sender, daemon=True).start()
    group, _store = open_group(info, 1, "127.0.0.1")
    ready.wait(5)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError):
        broadcast(group, torch.zeros(10, dtype=torch.uint8), info.timeout_s)
    assert time.monotonic() - t0 < 3.5


@pytest.mark.parametrize("accelerator", ["cpu", "gpu"], ids=["on-cpu", "on-gpu"])  # an id "gpu" reads as the mark
def test_the_engine_gets_the_weight_transfer_arguments_only_for_broadcast(accelerator, tmp_path):
    from services.common.config import RunConfig
    from services.rollout.engine import engine_args

    disk = engine_args(tmp_path, RunConfig(cluster={"accelerator": accelerator}, weights={"transport": "disk"}))
    assert "weight_transfer_config" not in disk and "worker_extension_cls" not in disk
    auto = engine_args(tmp_path, RunConfig(cluster={"accelerator": accelerator}))   # broadcast on CPU, disk on GPU
    assert ("weight_transfer_config" in auto) == (accelerator == "cpu")
    args = engine_args(tmp_path, RunConfig(cluster={"accelerator": accelerator}, weights={"transport": "broadcast"}))
    # the learner's one sender is gloo, on GPUs too; the module vLLM imports in its worker process registers it
    assert args["weight_transfer_config"] == {"backend": "videorl_gloo"}
    assert args["worker_extension_cls"] == "services.rollout.weight_transfer.GlooWorkerExtension"
