"""A gloo backend for vLLM's weight-transfer API ("videorl_gloo"): a rollout worker's end of the broadcast weight
transport on CPU (GPUs use vLLM's NCCL backend). services/learner/broadcast.py is the sending end; the bytes follow
services/common/weight_wire.py.

vLLM runs its workers in the EngineCore process, not the actor's: it imports `worker_extension_cls` there before
it builds the transfer engine, so naming `GlooWorkerExtension` there (rollout/engine.py `engine_args`) registers the
backend where it is used. The extension also gives the worker `videorl_prefetch_weights`: the version's bytes are
received in a thread of the worker while the engine keeps generating.

Invariants kept here: a version is applied whole or not at all: every byte is received into a staging buffer before
the model is touched, so a sender that dies or stalls (each bucket waits at most the group's timeout) leaves the old
weights serving; loading runs inside vLLM's layerwise reload (start/finish_weight_update), as vLLM's NCCL backend
does. The cost is one model-sized staging buffer per worker, kept across versions of the same layout. On the
learner's own machine the version may come as a shared-memory file instead (`shm_path`), complete before it is
offered: the worker maps it, and there is nothing to receive and no staging buffer. On a sample of versions
(weights.checksum_every) the learner sends its sha256 of each tensor (`sums`): bytes that arrive different fail the
receive as a dead sender does, before the model is touched.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

from services.common.weight_wire import GroupInfo, Layout, address_towards, broadcast, open_group, shared_stream

BACKEND = "videorl_gloo"
EXTENSION = f"{__name__}.GlooWorkerExtension"


@dataclass
class GlooInitInfo(GroupInfo, WeightTransferInitInfo):
    """weight_wire.GroupInfo, as vLLM's init_weight_transfer_engine parses it."""


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    """One version's metadata, as `Layout.update_info` writes it (the field names of vLLM's NCCL backend)."""

    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]
    shm_path: str = ""      # set: the bytes are in this shared-memory file of the sender's machine, not sent
    sums: dict[str, str] = field(default_factory=dict)   # the learner's sha256 per tensor, on a sample of versions


class _Receive:
    """One version's bytes arriving into `stream`, in a thread; `wait` returns the stream or raises its error. With
    `mapped`, the stream is a shared-memory file the sender filled: the thread only touches its pages. With `sums`
    (the learner's sha256 per tensor), the bytes are checked against them before the version counts as received."""

    def __init__(self, engine: GlooWeightTransferEngine, layout: Layout, stream: torch.Tensor, mapped: bool = False,
                 sums: dict[str, str] | None = None):
        self.layout, self.stream, self.sums, self.mapped = layout, stream, sums or {}, mapped
        self.error: BaseException | None = None
        target, args = (self._touch, ()) if mapped else (self._run, (engine,))
        self.thread = threading.Thread(target=target, args=args, name="videorl-weights-rx", daemon=True)
        self.thread.start()

    def _touch(self) -> None:
        """Fault the mapping's pages in now, while generation goes on, rather than while loading with it paused."""
        try:
            if self.sums:
                self.layout.check(self.stream, self.sums)   # reads every page anyway
            else:
                int(self.stream[::4096].sum())
        except BaseException as e:  # handed to `wait`
            self.error = e

    def _run(self, engine: GlooWeightTransferEngine) -> None:
        try:
            info = engine.info
            assert info is not None and engine.group is not None
            for start, end in self.layout.spans(info.bucket_bytes):
                broadcast(engine.group, self.stream[start:end], info.timeout_s)
            if self.sums:
                self.layout.check(self.stream, self.sums)   # hashlib lets generation run meanwhile (no GIL)
        except BaseException as e:  # handed to `wait`, in the worker's own thread
            self.error = e

    def done(self) -> bool:
        return not self.thread.is_alive()

    def wait(self) -> torch.Tensor:
        self.thread.join()
        if self.error is not None:
            raise RuntimeError(f"weight broadcast failed: {self.error}") from self.error
        return self.stream


class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """Receives a version over a gloo group (rank 0 = the learner) and loads it with `model.load_weights`."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo
    supports_draft_weight_update = False

    def __init__(self, config, vllm_config, device: torch.device, model: torch.nn.Module) -> None:
        super().__init__(config, vllm_config, device, model)
        self.info: GlooInitInfo | None = None
        self.group: Any = None
        self._store: Any = None
        self._staging: torch.Tensor | None = None
        self._receive: _Receive | None = None
        self._reloading = False

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        """Join a (new) group; any earlier one is left first. Blocks until every rank has joined."""
        self.shutdown()
        p = self.parallel_config
        rank = init_info.rank_offset + p.data_parallel_index * p.world_size + p.rank
        self.group, self._store = open_group(init_info, rank, address_towards(init_info.master_address))
        self.info = init_info

    def prefetch(self, update_info: dict) -> None:
        """Start receiving a version in the background; `update_weights` with the same metadata applies it."""
        if self._receive is not None and not self._receive.done():
            raise RuntimeError("a version is still being received")
        layout, sums = Layout.from_update_info(update_info), update_info.get("sums")
        if path := update_info.get("shm_path"):
            self._receive = _Receive(self, layout, shared_stream(path, layout.total), mapped=True, sums=sums)
            return
        if self.group is None:
            raise RuntimeError("no weight group: call init_weight_transfer_engine first")
        if self._staging is None or self._staging.numel() != layout.total:
            self._staging = None   # the old buffer goes before the new one is allocated
            self._staging = torch.empty(layout.total, dtype=torch.uint8)
        self._receive = _Receive(self, layout, self._staging, sums=sums)

    def prefetch_status(self) -> str:
        """"receiving", "ready" (or "none" when nothing was asked for), or the error that ended the receive: the old
        weights keep serving, and (unless the bytes were in shared memory) the group is left: the next version comes
        over a new one."""
        r = self._receive
        if r is None:
            return "none"
        if not r.done():
            return "receiving"
        if r.error is not None:
            self._receive = None
            if not r.mapped:
                self.shutdown()   # the group is not to be trusted; a mapped file never touched it
            return f"weight broadcast failed: {r.error}"
        return "ready"

    def start_weight_update(self) -> None:
        """Nothing to do yet: the model is touched only once every byte has arrived (see `update_weights`)."""
        if self.group is None:
            raise RuntimeError("no weight group: call init_weight_transfer_engine first")

    def update_weights(self, update_info: dict[str, Any]) -> None:
        """The base class would call torch.accelerator.synchronize(), which raises on torch+cpu; nothing here is
        asynchronous once `receive_weights` returns."""
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        """Receive the version (or take the prefetched one), then load it: the model changes only after this point."""
        layout, receive = Layout.from_update_info(vars(update_info)), self._receive
        try:
            if receive is None or receive.layout != layout:
                if receive is not None:
                    receive.wait()   # a mismatched prefetch still has to finish before the group is reused
                self.prefetch(vars(update_info))
                receive = self._receive
            assert receive is not None
            stream = receive.wait()
        except RuntimeError:
            self._receive = None
            if receive is None or not receive.mapped:
                self.shutdown()   # a collective failed: the group is unusable, the next version comes over a new one
            raise
        self._receive = None
        from vllm.model_executor.model_loader.mtp_validation import disable_mtp_completeness_check
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        if not self._reloading:
            initialize_layerwise_reload(self.model)
            self._reloading = True
        try:
            with disable_mtp_completeness_check():
                self.model.load_weights(layout.views(stream))  # type: ignore[operator]  # vLLM models have it
        except BaseException:
            self.finish_weight_update()   # put every layer back on device before the error goes up
            raise

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        if self._reloading:
            self._reloading = False
            finalize_layerwise_reload(self.model, self.model_config)

    def shutdown(self) -> None:
        if self.group is not None:
            self.group.shutdown()   # a receive still in a collective fails now
        if self._receive is not None:
            self._receive.thread.join()
            self._receive = None
        self.group = self._store = self.info = None


class GlooWorkerExtension:
    """Mixed into vLLM's worker class (`worker_extension_cls`); its methods are `collective_rpc` targets."""

    def videorl_prefetch_weights(self, update_info: dict) -> None:
        _engine(self).prefetch(update_info)

    def videorl_prefetch_status(self) -> str:
        return _engine(self).prefetch_status()

    def videorl_spin_wait_s(self) -> float | None:
        """The busy-wait limit rollout/vllm_plugin.py set in this worker's process (None: vLLM's own)."""
        from vllm.distributed.device_communicators.shm_broadcast import SpinCondition

        return getattr(SpinCondition.wait, "spin_s", None)


def _engine(worker: object) -> GlooWeightTransferEngine:
    engine = getattr(worker, "weight_transfer_engine", None)
    if not isinstance(engine, GlooWeightTransferEngine):
        raise RuntimeError(f"the worker's weight transfer engine is {type(engine).__name__}, not {BACKEND}")
    return engine


WeightTransferEngineFactory.register_engine(BACKEND, GlooWeightTransferEngine)
