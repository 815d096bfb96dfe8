"""Experiment trackers (TensorBoard, W&B, MLflow) fed from the learner's driver and `rlctl sft`.

Invariants kept here:
- training never waits for a tracker: each backend runs in a thread of its own behind a bounded queue; when it
  falls behind, its oldest records are dropped and counted;
- a tracker that fails (unreachable server, bad key, missing package) is logged once, with the backend's name and
  the error, and left out from then on; the others and the run go on;
- at the end each tracker gets `tracking.close_timeout_s` to write what it holds; what it could not is logged;
- a resumed run (a restarted learner) reports to the same W&B and MLflow runs: their ids are kept in
  <run_dir>/tracking.json.
What a step becomes is in tracking_records.py; the backends in tracking_backends.py.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from pathlib import Path
from typing import Any

from services.common.tracking_config import TrackingConfig
from services.learner.tracking_backends import make_backend
from services.learner.tracking_records import Backend, RunInfo, Samples

log = logging.getLogger("videorl.tracking")

class _Worker(threading.Thread):
    """One backend, fed through a bounded queue; any exception ends its use (logged once)."""

    def __init__(self, backend: Backend, tc: TrackingConfig, run: RunInfo, on_id):
        super().__init__(name=f"tracking-{backend.name}", daemon=True)
        self.backend, self.tc, self.run_info, self.on_id = backend, tc, run, on_id
        self.items: queue.Queue = queue.Queue(tc.queue)
        self.dropped = 0
        self.error: str | None = None
        self.started, self.closed = threading.Event(), threading.Event()

    def put(self, item: tuple[str, Any]) -> None:
        if self.error is not None:
            return
        while True:
            try:
                self.items.put_nowait(item)
                return
            except queue.Full:
                try:
                    self.items.get_nowait()
                    if self.dropped == 0:
                        log.warning("tracking: %s falls behind; its oldest records are dropped (queue %d)",
                                    self.backend.name, self.tc.queue)
                    self.dropped += 1
                except queue.Empty:
                    pass

    def run(self) -> None:
        b = self.backend
        try:
            run_id = b.start(self.tc, self.run_info)
            self.started.set()
            if run_id:
                self.on_id(b.name, run_id)
            log.info("tracking: %s at %s", b.name, b.where())
            while (item := self.items.get()) is not None:
                kind, value = item
                if kind == "scalars":
                    b.scalars(*value)
                else:
                    b.samples(value)
            b.close()
        except Exception as e:  # any failure of a tracker is tolerated on purpose: training goes on without it
            self.error = f"{type(e).__name__}: {e}"
            log.warning("tracking: %s failed and is left out for the rest of the run (training goes on): %s",
                        b.name, self.error)
        finally:
            self.closed.set()


class Tracker:
    """The configured backends; `scalars`/`samples` return at once, `close` waits at most close_timeout_s each."""

    def __init__(self, tc: TrackingConfig, run: RunInfo, backends: list[Backend]):
        self.tc, self.run = tc, run
        self._ids_lock = threading.Lock()
        self.workers = [_Worker(b, tc, run, self._keep_id) for b in backends]
        for w in self.workers:
            w.start()

    @classmethod
    def open(cls, tc: TrackingConfig, run_dir: Path, name: str, hparams: dict[str, Any],
             resume: bool = False) -> Tracker:
        ids_path = Path(run_dir) / "tracking.json"
        ids = json.loads(ids_path.read_text()) if resume and ids_path.exists() else {}
        run = RunInfo(Path(run_dir), tc.run_name or name, hparams, ids)
        return cls(tc, run, [make_backend(b) for b in tc.backends])

    def _keep_id(self, backend: str, run_id: str) -> None:
        with self._ids_lock:
            self.run.ids[backend] = run_id
            self.run.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run.run_dir / "tracking.json").write_text(json.dumps(self.run.ids, indent=1))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        finite = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}
        for w in self.workers:
            w.put(("scalars", (step, finite)))

    def samples(self, table: Samples) -> None:
        for w in self.workers:
            w.put(("samples", table))

    def close(self) -> dict[str, str]:
        """Flush and close every backend; returns backend -> what went wrong (failed, dropped, or unfinished)."""
        deadline = time.monotonic() + self.tc.close_timeout_s
        for w in self.workers:
            if w.error is None:
                try:   # the end mark waits for room: what the tracker holds is written first, not dropped
                    w.items.put(None, timeout=max(0.0, deadline - time.monotonic()))
                except queue.Full:
                    pass   # reported below as still writing
        problems: dict[str, str] = {}
        for w in self.workers:
            if not w.closed.wait(max(0.0, deadline - time.monotonic())):
                problems[w.backend.name] = (
                    f"still writing after {self.tc.close_timeout_s:g} s: its last records may be missing"
                    if w.started.is_set() else "could not start in the whole run (unreachable?): nothing was written")
                log.warning("tracking: %s %s", w.backend.name, problems[w.backend.name])
            elif w.error:
                problems[w.backend.name] = w.error
            if w.dropped:
                problems.setdefault(w.backend.name, f"{w.dropped} records dropped while it fell behind")
        return problems

    def failures(self) -> dict[str, str]:
        return {w.backend.name: w.error for w in self.workers if w.error}
