"""The learner's end of the broadcast weight transport: rank 0 of a weight group, sending one version at a time to
every rollout worker in it (services/rollout/weight_transfer.py receives).

Invariants kept here: the tensors are sent in the order of the layout the receivers were given, and a tensor that
disagrees with it fails the send before its bytes go out; preparing span i+1 (a thread: pulling the next tensors,
packing small ones into a bucket) overlaps broadcasting span i; large tensors go out from their own memory and small
ones through two buckets allocated once per sender, so the sender holds at most two spans beyond the tensors it is
given; a send that fails for any reason (a peer gone, the timeout, bad tensors) closes the group, so every receiver
fails too instead of waiting: the next version goes to a new group. No vLLM import: the learner image may not have
it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from services.common.weight_wire import (
    ALIGN,
    GroupInfo,
    Layout,
    Packer,
    broadcast,
    listen_socket,
    open_group,
    shared_stream,
)


@dataclass(frozen=True)
class SendStats:
    bytes: int          # the stream's length, padding included
    collectives: int    # one per span: a bucket of small tensors, or (a piece of) a large one
    seconds: float      # from the first tensor pulled to the last span sent
    pack_s: float       # of which pulling and packing tensors (in its thread, overlapping the broadcasts)


class WeightSender:
    """Rank 0 of one weight group. `info` is what the receivers need to join (publish it before `connect`)."""

    def __init__(self, address: str, world_size: int, group_name: str, bucket_bytes: int, timeout_s: float,
                 port: int = 0):
        self._listener = listen_socket(address, port)
        self.info = GroupInfo(address, self._listener.getsockname()[1], world_size, group_name, bucket_bytes,
                              timeout_s)
        self._group = self._store = None
        self._buffers = [torch.empty(bucket_bytes, dtype=torch.uint8) for _ in range(2)]

    def connect(self) -> None:
        """Wait for every receiver to join (at most the timeout)."""
        self._group, self._store = open_group(self.info, 0, self.info.master_address, self._listener)

    def send(self, layout: Layout, tensors: Iterable[tuple[str, torch.Tensor]]) -> SendStats:
        """Broadcast one version: `tensors` in `layout`'s order (the receivers were given `layout.update_info()`)."""
        if self._group is None:
            raise RuntimeError("connect() first, or the group was closed by a failed send")
        spans = layout.spans(self.info.bucket_bytes)
        free: queue.Queue = queue.Queue()
        ready: queue.Queue = queue.Queue(maxsize=2)   # the producer runs at most two spans ahead
        for b in self._buffers:
            free.put(b)
        packer, pack_s, stop = Packer(layout, tensors, self.info.bucket_bytes), [0.0], threading.Event()
        t0 = time.perf_counter()
        producer = threading.Thread(target=self._produce, args=(packer, spans, free, ready, pack_s, stop), daemon=True)
        producer.start()
        try:
            for _ in spans:
                item = ready.get()
                if isinstance(item, BaseException):
                    raise item
                bucket, data = item
                broadcast(self._group, data, self.info.timeout_s)
                if bucket is not None:
                    free.put(bucket)
            if isinstance(item := ready.get(), BaseException):   # packer.finish()'s verdict
                raise item
        except BaseException:
            self.close()
            raise
        finally:
            stop.set()
            free.put(None)     # a producer waiting for a bucket stops; one waiting to hand a span over is drained
            while producer.is_alive():
                with contextlib.suppress(queue.Empty):
                    ready.get(timeout=0.05)
        return SendStats(layout.total, len(spans), time.perf_counter() - t0, pack_s[0])

    @staticmethod
    def _produce(packer: Packer, spans: list[tuple[int, int]], free: queue.Queue, ready: queue.Queue,
                 pack_s: list[float], stop: threading.Event) -> None:
        """Each span's bytes, in order: a view of a large tensor, or small ones packed into a free bucket."""
        try:
            for start, end in spans:
                if stop.is_set():
                    return
                t = time.perf_counter()
                bucket, data = None, packer.direct(start, end)
                if data is None:
                    if (bucket := free.get()) is None:
                        return
                    t = time.perf_counter()   # waiting for a free bucket is not packing
                    packer.fill(bucket, start, end)
                    data = bucket[:end - start]
                pack_s[0] += time.perf_counter() - t
                ready.put((bucket, data))
            packer.finish()
            ready.put(None)
        except BaseException as e:  # handed to the sending thread, which raises it
            ready.put(e)

    def close(self) -> None:
        """Leave the group; receivers still in a collective fail at once rather than at their timeout."""
        if self._group is not None:
            self._group.shutdown()
        self._group = self._store = None
        self._listener.close()


def write_shared(layout: Layout, tensors: Iterable[tuple[str, torch.Tensor]], path: str) -> SendStats:
    """Hand a version over in shared memory instead: every tensor's bytes, in `layout`'s order and places, into the
    file `path` (weight_wire.shared_stream), which receivers on this machine map. One copy, no socket."""
    t0 = time.perf_counter()
    stream = shared_stream(path, layout.total, create=True)
    packer = Packer(layout, tensors, max(layout.total, ALIGN))
    packer.fill(stream, 0, layout.total)
    packer.finish()
    seconds = time.perf_counter() - t0
    return SendStats(layout.total, 0, seconds, seconds)
