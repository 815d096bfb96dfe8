"""services/common/atomic.py: a directory appears whole or not at all, and a failed build leaves nothing."""

from __future__ import annotations

import os

import pytest

from services.common import atomic
from services.common.atomic import atomic_dir


def test_the_folder_appears_only_when_the_block_ends_and_its_parent_is_fsynced(tmp_path, monkeypatch):
    synced = []
    real = atomic.fsync_dir
    monkeypatch.setattr(atomic, "fsync_dir", lambda p: (synced.append(p), real(p)))
    final = tmp_path / "v000001"
    with atomic_dir(final) as tmp:
        (tmp / "a.bin").write_bytes(b"x" * 10)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.bin").write_bytes(b"y")
        assert not final.exists()
    assert (final / "a.bin").read_bytes() == b"x" * 10 and (final / "sub" / "b.bin").exists()
    assert synced[-1] == tmp_path  # the rename is made durable
    assert os.listdir(tmp_path) == ["v000001"]


def test_a_failed_build_leaves_nothing_and_keeps_what_was_there(tmp_path):
    final = tmp_path / "step-000005"
    final.mkdir()
    (final / "old").write_text("kept")
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(final, replace=True) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == ["step-000005"] and (final / "old").read_text() == "kept"


def test_an_existing_folder_is_kept_unless_replacing_or_discarded(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    with pytest.raises(FileExistsError), atomic_dir(final):
        pass
    with atomic_dir(final, replace=True) as tmp:
        (tmp / "new").write_text("1")
    assert os.listdir(final) == ["new"]
    with atomic_dir(final, replace=True, discard_if=lambda: True) as tmp:
        (tmp / "newer").write_text("2")
    assert os.listdir(final) == ["new"] and os.listdir(tmp_path) == ["out"]
