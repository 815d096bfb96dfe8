"""Ways to damage a media file on disk, shared by tests/unit/test_media.py and the bad-input corpus
(tests/bad_input/bad_corpus.py). Each returns the path it damaged; importable from any test (tests/ is on sys.path
through tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def cut(path: Path, keep: float) -> Path:
    """Keep the first `keep` fraction of the file (a truncated download or copy)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def scramble(path: Path, seed: int = 0) -> Path:
    """Overwrite the middle third with seeded noise: the headers survive, the frames do not."""
    data = bytearray(path.read_bytes())
    third = len(data) // 3
    data[third : 2 * third] = np.random.default_rng(seed).integers(0, 256, third, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
