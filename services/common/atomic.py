"""Directories that appear whole or not at all: weight versions, checkpoints, built assets.

Invariant kept here: `final` appears under its name only after every file and folder in it is written and fsynced;
the rename is then made durable by an fsync of the parent, so a crash at any moment leaves either the previous
state or the complete new directory, never a part of one. A failed build leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the entries of `path` (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root`, and `root` itself."""
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        elif p.is_dir():
            fsync_dir(p)
    fsync_dir(root)


@contextmanager
def atomic_dir(final: Path, *, replace: bool = False, discard_if: Callable[[], bool] | None = None) -> Iterator[Path]:
    """Yield an empty temp folder beside `final`; when the block ends without error, make it `final` atomically.

    An existing `final` is an error unless `replace`. `discard_if()`, checked just before the rename, drops the new
    folder and keeps what is there (another process built the same thing meanwhile, and readers may hold paths
    into it).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not replace:
        raise FileExistsError(f"{final} already exists")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        fsync_tree(tmp)
        if discard_if is not None and discard_if():
            shutil.rmtree(tmp)
            return
        if final.exists():
            if not replace:
                raise FileExistsError(f"{final} appeared while it was being written")
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
