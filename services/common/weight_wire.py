"""The broadcast weight transport's wire format and group, shared by its two ends: the learner's sender (rank 0,
services/learner/broadcast.py) and the rollout workers' receivers (services/rollout/weight_transfer.py).

A version is one flat byte stream: every tensor's bytes in metadata order, each starting at a multiple of `ALIGN`.
It travels in collectives of at most `bucket_bytes` (`Layout.spans`): small tensors packed together into a bucket,
large ones straight from their own memory (no copy), in bucket-sized pieces when larger than a bucket. Both ends
derive the layout and the spans from the same (name, dtype, shape) list, which travels as vLLM's update_info
(`Layout.update_info`); the bytes never carry their own metadata. The receiver holds the whole stream, so every
span lands at its place and every tensor is a view of it.

The group is a gloo process group of its own (never the default one: a vLLM worker and a DeepSpeed rank each have
theirs), joined through a TCPStore that rank 0 serves on the one address it was given; every collective waits at
most the group's timeout. This module imports torch: only the learner and the rollout workers import it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
from torch.distributed import BroadcastOptions, PrefixStore, ProcessGroupGloo, TCPStore

ALIGN = 64   # every tensor starts at a multiple of this: any dtype's view of its bytes is aligned
DIRECT_BYTES = 1 << 20   # a tensor this large (or a bucket's size) travels straight from its own memory, unpacked


def _direct_min(bucket_bytes: int) -> int:
    return min(DIRECT_BYTES, bucket_bytes)


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str              # torch dtype name without "torch.": float32, bfloat16, ...
    shape: tuple[int, ...]
    offset: int             # first byte in the stream
    nbytes: int


def dtype_of(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def _dtype_name(dtype: torch.dtype | str) -> str:
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    dtype_of(name)
    return name


@dataclass(frozen=True)
class Layout:
    """Where each tensor of a version lies in the byte stream."""

    entries: tuple[Entry, ...]
    total: int              # bytes in the stream, padding included

    @classmethod
    def of(cls, metas: Iterable[tuple[str, torch.dtype | str, Sequence[int]]]) -> Layout:
        """The layout of tensors given as (name, dtype, shape), in the order they will be sent."""
        entries, offset = [], 0
        for name, dtype, shape in metas:
            dname = _dtype_name(dtype)
            numel = 1
            for d in shape:
                numel *= int(d)
            nbytes = numel * dtype_of(dname).itemsize
            entries.append(Entry(name, dname, tuple(int(d) for d in shape), offset, nbytes))
            offset += -(-nbytes // ALIGN) * ALIGN
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            raise ValueError("a tensor name appears twice in one version")
        return cls(tuple(entries), entries[-1].offset + entries[-1].nbytes if entries else 0)

    @classmethod
    def of_tensors(cls, tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype | None = None) -> Layout:
        """The layout of a state dict's items; `dtype` is the wire dtype of its floating tensors (None: their own)."""
        return cls.of((n, dtype if dtype is not None and t.is_floating_point() else t.dtype, t.shape)
                      for n, t in tensors)

    @classmethod
    def from_update_info(cls, info: dict) -> Layout:
        return cls.of(zip(info["names"], info["dtype_names"], info["shapes"], strict=True))

    def update_info(self) -> dict:
        """The metadata a receiver rebuilds this layout from: the field names vLLM's NCCL backend uses too."""
        return {"names": [e.name for e in self.entries], "dtype_names": [e.dtype for e in self.entries],
                "shapes": [list(e.shape) for e in self.entries]}

    def digest(self) -> str:
        """sha256 of the metadata (names, dtypes, shapes, in order): equal digests mean equal layouts."""
        return hashlib.sha256(json.dumps(self.update_info(), separators=(",", ":")).encode()).hexdigest()

    def spans(self, bucket_bytes: int) -> list[tuple[int, int]]:
        """[start, end) of each collective, in stream order. A tensor of at least `_direct_min` bytes is sent alone,
        from its own memory, in pieces of at most `bucket_bytes`; smaller ones are packed together into buckets of at
        most `bucket_bytes`. Zero-byte tensors travel in no collective."""
        if bucket_bytes < ALIGN:
            raise ValueError(f"bucket_bytes {bucket_bytes} < {ALIGN}")
        out: list[tuple[int, int]] = []
        bucket: tuple[int, int] | None = None           # the bucket being filled
        direct = _direct_min(bucket_bytes)
        for e in self.entries:
            end = e.offset + e.nbytes
            if not e.nbytes:
                continue
            if bucket and (e.nbytes >= direct or end - bucket[0] > bucket_bytes):
                out.append(bucket)
                bucket = None
            if e.nbytes >= direct:
                out += [(s, min(s + bucket_bytes, end)) for s in range(e.offset, end, bucket_bytes)]
            else:
                bucket = (bucket[0] if bucket else e.offset, end)
        return out + ([bucket] if bucket else [])

    def digests(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, str]:
        """The sender's sha256 of each tensor's bytes as they go on the wire (in its layout dtype)."""
        dtypes = {e.name: dtype_of(e.dtype) for e in self.entries}
        return {name: tensor_digest(t.to(dtypes[name])) for name, t in tensors}

    def check(self, stream: torch.Tensor, digests: dict[str, str]) -> None:
        """Raise naming the first tensor of `stream` whose bytes differ from the sender's `digests` (`MISMATCH`)."""
        views = dict(self.views(stream))
        for name, expected in digests.items():
            if name not in views:
                raise ValueError(f"a checksum names {name!r}, which is not in the version's layout")
            if (got := tensor_digest(views[name])) != expected:
                raise ValueError(f"{name} {MISMATCH} (sha256 {got[:12]}, sent {expected[:12]})")

    def views(self, stream: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """Each tensor as a view of `stream` (uint8, `total` bytes long): no copy."""
        if stream.dtype != torch.uint8 or stream.numel() < self.total:
            raise ValueError(f"stream of {stream.numel()} {stream.dtype} cannot hold a {self.total}-byte layout")
        for e in self.entries:
            yield e.name, stream[e.offset:e.offset + e.nbytes].view(dtype_of(e.dtype)).view(e.shape)


class Packer:
    """Turns tensors that arrive one at a time in layout order (e.g. gathered layer by layer) into the bytes of each
    span of `Layout.spans`: a view of a large tensor's own memory (`direct`), or small ones copied into a bucket
    (`fill`). A tensor that is not the next entry, or has another shape, is an error naming it: the receivers would
    split the stream elsewhere."""

    def __init__(self, layout: Layout, tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int):
        self.layout, self.tensors, self.direct_min = layout, iter(tensors), _direct_min(bucket_bytes)
        self.index = 0                                  # first entry not fully sent
        self.current: torch.Tensor | None = None        # its bytes, once pulled

    def direct(self, start: int, end: int) -> torch.Tensor | None:
        """The bytes of span [start, end) as a view of the tensor holding them, or None if the span is packed."""
        entries = self.layout.entries
        while self.current is None and self.index < len(entries) and entries[self.index].nbytes == 0:
            self._pull(entries[self.index])             # empty tensors are in no span: only checked
            self.index += 1
        e = entries[self.index]
        if e.nbytes < self.direct_min:
            return None
        if not e.offset <= start < end <= e.offset + e.nbytes:
            raise ValueError(f"span [{start}, {end}) is not within {e.name!r}: spans come in stream order")
        if self.current is None:
            self.current = self._pull(e)
        view = self.current[start - e.offset:end - e.offset]
        if end == e.offset + e.nbytes:
            self.index, self.current = self.index + 1, None
        return view

    def fill(self, bucket: torch.Tensor, start: int, end: int) -> None:
        """Write stream bytes [start, end) into bucket[: end - start]."""
        entries = self.layout.entries
        while self.index < len(entries) and entries[self.index].offset < end:
            e = entries[self.index]
            if self.current is None:
                self.current = self._pull(e)
            lo, hi = max(start, e.offset), min(end, e.offset + e.nbytes)
            if lo < hi:
                bucket[lo - start:hi - start].copy_(self.current[lo - e.offset:hi - e.offset])
            if e.offset + e.nbytes > end:
                return                                  # the rest of this tensor goes in the next bucket
            self.index, self.current = self.index + 1, None

    def finish(self) -> None:
        """After the last bucket: check that the tensors matched the layout to the end (empty ones included)."""
        entries = self.layout.entries
        for e in entries[self.index:]:
            if e.nbytes:
                raise ValueError(f"{e.name!r} was never packed: fill every bucket before finish()")
            self._pull(e)
            self.index += 1
        if next(self.tensors, None) is not None:
            raise ValueError(f"more tensors than the layout's {len(entries)}")

    def _pull(self, e: Entry) -> torch.Tensor:
        got = next(self.tensors, None)
        if got is None:
            raise ValueError(f"the tensors ended before {e.name!r} (entry {self.index} of {len(self.layout.entries)})")
        name, t = got
        if name != e.name or tuple(t.shape) != e.shape:
            raise ValueError(f"expected {e.name!r} {e.shape}, got {name!r} {tuple(t.shape)}")
        t = t.detach().to(device="cpu", dtype=dtype_of(e.dtype)).contiguous()
        return t.view(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)


MISMATCH = "arrived with other bytes than the learner sent"   # how a failed checksum reads, in any process


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (vLLM's compute_weight_checksums hashes its parameters the same way)."""
    return hashlib.sha256(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data).hexdigest()


@dataclass   # not frozen: vLLM's init-info base class, which the rollout side mixes in, is not
class GroupInfo:
    """How a receiver joins a weight group: what rank 0 publishes (e.g. through Redis) and vLLM's init_info carries."""

    master_address: str
    master_port: int
    world_size: int         # the sender and every receiving worker
    group_name: str         # one per membership epoch: a new group never meets a stale peer's keys
    bucket_bytes: int
    timeout_s: float
    rank_offset: int = 1    # this actor's first worker's rank (rank 0 is the sender)

    def to_dict(self) -> dict:
        return asdict(self)


def shared_stream(path: str, total: int, create: bool = False) -> torch.Tensor:
    """A version's byte stream as a file in shared memory (/dev/shm), mapped (MAP_SHARED): the sender creates (or
    reuses) and fills it; a receiver on the same machine maps it and reads the tensors as views, with no copy and no
    socket."""
    if create:   # an existing file keeps its pages: writing a version over the one before it faults no new memory
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, total)
        finally:
            os.close(fd)
    elif (size := os.path.getsize(path)) != total:
        raise ValueError(f"{path} holds {size} bytes, the layout {total}")
    if not total:
        return torch.empty(0, dtype=torch.uint8)
    return torch.from_file(path, shared=True, size=total, dtype=torch.uint8)


def address_towards(host: str) -> str:
    """The local address this machine reaches `host` from (no packet is sent): where a receiver's gloo listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, 9))
        return s.getsockname()[0]


def listen_socket(address: str, port: int = 0) -> socket.socket:
    """Rank 0's rendezvous socket, bound on `address` only (a TCPStore left to bind itself listens everywhere)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, port))
    s.listen(128)
    return s


def open_group(info: GroupInfo, rank: int, own_address: str, listener: socket.socket | None = None):
    """Join the group as `rank`; blocks until every rank has joined or the timeout passes. Rank 0 passes the
    `listen_socket` it serves the rendezvous on. Returns (process group, store): keep both alive together."""
    timeout = datetime.timedelta(seconds=info.timeout_s)
    if (rank == 0) != (listener is not None):
        raise ValueError("rank 0, and only rank 0, serves the rendezvous")
    if listener is not None:
        store = TCPStore(info.master_address, info.master_port, info.world_size, True, timeout=timeout,
                         wait_for_workers=False, master_listen_fd=listener.fileno())
        listener.detach()   # the store owns the descriptor now and closes it when it goes
    else:
        store = TCPStore(info.master_address, info.master_port, info.world_size, False, timeout=timeout)
    # torch's own group helper builds gloo's options this way; its stubs know only the base class's `Options`
    opts = ProcessGroupGloo._Options()  # type: ignore[attr-defined]
    opts._timeout = timeout
    opts._devices = [ProcessGroupGloo.create_device(hostname=own_address)]
    return ProcessGroupGloo(PrefixStore(info.group_name, store), rank, info.world_size, opts), store


def broadcast(group, tensor: torch.Tensor, timeout_s: float) -> None:
    """Broadcast `tensor` from rank 0 over `group`; raises when a peer is gone or the timeout passes."""
    opts = BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([tensor], opts).wait(datetime.timedelta(seconds=timeout_s))
