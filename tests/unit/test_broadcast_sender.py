"""The learner's weight sender (services/learner/broadcast.py) against receivers made of the wire module alone, on
loopback threads: every receiver gets every tensor, and a send that fails closes the group at once."""

import contextlib
import threading
import time

import pytest
import torch

from services.common.weight_wire import Layout, broadcast, open_group
from services.learner.broadcast import WeightSender


def _receivers(sender: WeightSender, layout: Layout, n: int, versions: int = 1) -> tuple[list[threading.Thread], dict]:
    out: dict = {}

    def receive(rank: int) -> None:
        group, _store = open_group(sender.info, rank, "127.0.0.1")
        stream = torch.empty(layout.total, dtype=torch.uint8)
        t0 = time.monotonic()
        try:
            for _ in range(versions):
                for start, end in layout.spans(sender.info.bucket_bytes):
                    broadcast(group, stream[start:end], sender.info.timeout_s)
                out.setdefault(rank, []).append({n: t.clone() for n, t in layout.views(stream)})
        except RuntimeError as e:
            out[rank] = (time.monotonic() - t0, e)

    threads = [threading.Thread(target=receive, args=(r,)) for r in range(1, n + 1)]
    for t in threads:
        t.start()
    return threads, out


def test_every_receiver_gets_every_tensor():
    g = torch.Generator().manual_seed(0)
    state = [(f"layer{i}.weight", torch.randn(64, 33, generator=g)) for i in range(6)]
    state += [("big", torch.randn(5000, generator=g)), ("norm", torch.randn(33, generator=g).to(torch.bfloat16))]
    layout = Layout.of_tensors(state)
    sender = WeightSender("127.0.0.1", 3, "t/epoch0", bucket_bytes=4096, timeout_s=10)
    threads, got = _receivers(sender, layout, 2, versions=2)
    sender.connect()
    stats = sender.send(layout, iter(state))
    state2 = [(n, t * 2) for n, t in state]
    second = sender.send(layout, iter(state2))      # the same group carries the next version
    for t in threads:
        t.join(10)
    sender.close()
    assert stats.bytes == layout.total and stats.collectives == len(layout.spans(4096)) > 10
    assert second.collectives == stats.collectives and 0 <= stats.pack_s <= stats.seconds
    for rank in (1, 2):
        first, then = got[rank]
        assert all(torch.equal(first[n], t) for n, t in state) and all(torch.equal(then[n], t) for n, t in state2)


def test_a_bad_tensor_fails_the_send_and_the_receivers_at_once():
    layout = Layout.of([("a", "float32", [3000]), ("b", "float32", [3000])])
    sender = WeightSender("127.0.0.1", 2, "t/epoch1", bucket_bytes=1024, timeout_s=30)
    threads, got = _receivers(sender, layout, 1)
    sender.connect()

    def tensors():
        yield "a", torch.ones(3000)
        time.sleep(0.5)
        yield "b", torch.ones(2999)

    with pytest.raises(ValueError, match="expected 'b'"):
        sender.send(layout, tensors())
    threads[0].join(20)
    waited, error = got[1]
    assert isinstance(error, RuntimeError) and waited < 10, "the receiver must not wait for its 30 s timeout"
    with pytest.raises(RuntimeError, match="closed"):
        sender.send(layout, iter([]))


def test_a_receiver_that_never_joins_fails_connect_within_the_timeout():
    sender = WeightSender("127.0.0.1", 3, "t/epoch2", bucket_bytes=1024, timeout_s=1.0)

    def join() -> None:
        with contextlib.suppress(RuntimeError):      # it times out too
            open_group(sender.info, 1, "127.0.0.1")

    threading.Thread(target=join, daemon=True).start()   # rank 1 joins; rank 2 never does
    t0 = time.monotonic()
    with pytest.raises(RuntimeError):
        sender.connect()
    assert time.monotonic() - t0 < 10
    sender.close()
