"""Stale build locks of torch's JIT-compiled extensions (DeepSpeed's shm op), found and cleared with a message.

torch takes `<TORCH_EXTENSIONS_DIR>/<op>/lock` (a bare O_EXCL file, no pid inside) around each ninja run and waits
forever while it exists. A build killed midway leaves it behind, and every later start of the learner hangs. The lock
is stale when no process works in the op's build folder (ninja and the compiler run with it as their working
directory) and the file is older than a short grace period that covers the moment between taking it and starting ninja.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger("videorl.torch_ext")
GRACE_S = 30.0


def extensions_dir() -> Path:
    """Where torch builds and finds extensions: TORCH_EXTENSIONS_DIR (set by the venv's hook), else torch's default."""
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch_extensions"


def clear_stale_build_locks(root: Path | None = None, grace_s: float = GRACE_S) -> list[Path]:
    """Remove every stale `lock` under `root` (see the module docstring); returns the ones removed, each logged."""
    root = extensions_dir() if root is None else root
    removed = []
    for lock in sorted(root.glob("**/lock")) if root.is_dir() else []:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            continue  # released meanwhile
        if age < grace_s or _someone_works_in(lock.parent):
            continue
        lock.unlink(missing_ok=True)
        log.warning("removed a stale build lock %s (%.0f s old, no build running there): a build of this "
                    "extension was killed midway; it is built again now", lock, age)
        removed.append(lock)
    return removed


def _someone_works_in(folder: Path) -> bool:
    """Whether any process on this machine works in `folder` (or below it); True where /proc cannot tell."""
    if not os.path.isdir("/proc"):
        return True  # cannot tell: leave the lock alone
    target = os.path.realpath(folder)
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue  # gone, or not ours to read
        if cwd == target or cwd.startswith(target + os.sep):
            return True
    return False
