"""The learner's end of the broadcast weight transport: rank 0 of a weight group, sending one version at a time to
every rollout worker in it (services/rollout/weight_transfer.py receives).

Invariants kept here: the tensors are packed in the order of the layout the receivers were given, and a tensor that
disagrees with it fails the send before its bytes go out; packing bucket i+1 (a thread) overlaps broadcasting bucket
i, with two bucket buffers allocated once per sender, so memory stays at two buckets whatever the model's size; a
send that fails for any reason (a peer gone, the timeout, bad tensors) closes the group, so every receiver fails
too instead of waiting: the next version goes to a new group. No vLLM import: the learner image may not have it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from services.common.weight_wire import GroupInfo, Layout, Packer, broadcast, listen_socket, open_group


@dataclass(frozen=True)
class SendStats:
    bytes: int          # the stream's length, padding included
    buckets: int
    seconds: float      # from the first tensor pulled to the last bucket sent
    pack_s: float       # of which packing (in its thread, overlapping the broadcasts)


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
        spans = layout.buckets(self.info.bucket_bytes)
        free: queue.Queue = queue.Queue()
        full: queue.Queue = queue.Queue()
        for b in self._buffers:
            free.put(b)
        packer, pack_s = Packer(layout, tensors), [0.0]
        t0 = time.perf_counter()
        worker = threading.Thread(target=self._pack, args=(packer, spans, free, full, pack_s), daemon=True)
        worker.start()
        try:
            for start, end in spans:
                item = full.get()
                if isinstance(item, BaseException):
                    raise item
                broadcast(self._group, item[:end - start], self.info.timeout_s)
                free.put(item)
            if isinstance(item := full.get(), BaseException):   # packer.finish()'s verdict
                raise item
        except BaseException:
            self.close()
            raise
        finally:
            free.put(None)     # a packer waiting for a buffer stops
            worker.join()
        return SendStats(layout.total, len(spans), time.perf_counter() - t0, pack_s[0])

    @staticmethod
    def _pack(packer: Packer, spans: list[tuple[int, int]], free: queue.Queue, full: queue.Queue,
              pack_s: list[float]) -> None:
        try:
            for start, end in spans:
                buf = free.get()
                if buf is None:
                    return
                t = time.perf_counter()
                packer.fill(buf, start, end)
                pack_s[0] += time.perf_counter() - t
                full.put(buf)
            packer.finish()
            full.put(None)
        except BaseException as e:  # handed to the sending thread, which raises it
            full.put(e)

    def close(self) -> None:
        """Leave the group; receivers still in a collective fail at once rather than at their timeout."""
        if self._group is not None:
            self._group.shutdown()
        self._group = self._store = None
        self._listener.close()
