"""Resumable learner checkpoints under run_dir/checkpoints/.

Layout: `step-<N>/` holds DeepSpeed's model and optimizer state (`ds/`) and `learner_state.json` (learner
step, policy version, the feeder's cursor and RNG, torch's RNG, the group ledger); `latest` names the
newest complete one.

Invariant kept here: a checkpoint appears under its final name only when every file in it is written and
fsynced (services/common/atomic.py), and `latest` is replaced atomically after that rename, so a crash at
any moment leaves `latest` pointing at a complete checkpoint (or absent).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.common.atomic import atomic_dir, fsync_dir

LATEST = "latest"
STATE = "learner_state.json"


def save(root: Path, step: int, state: dict[str, Any], write_engine: Callable[[Path], None], keep: int = 2) -> Path:
    """Write checkpoint `step` (`write_engine(dir)` saves the DeepSpeed state), point `latest` at it, and delete
    all but the newest `keep` checkpoints."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    final = root / name
    # replace: a folder of this name was left by a run that crashed before moving `latest` to it: never current
    with atomic_dir(final, replace=True) as tmp:
        write_engine(tmp / "ds")
        (tmp / STATE).write_text(json.dumps({"step": step, **state}))
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(name)
    with open(pointer, "rb") as f:
        os.fsync(f.fileno())
    os.replace(pointer, root / LATEST)
    fsync_dir(root)
    for old in sorted(root.glob("step-*"))[:-keep]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint under root, or None."""
    pointer = Path(root) / LATEST
    if not pointer.exists():
        return None
    path = Path(root) / pointer.read_text().strip()
    return path if (path / STATE).exists() else None


def load_state(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / STATE).read_text())


def encode_bytes(b: bytes) -> str:
    return base64.b64encode(b).decode()


def decode_bytes(s: str) -> bytes:
    return base64.b64decode(s)
