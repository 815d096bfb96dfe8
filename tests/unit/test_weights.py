import pytest

from services.common.weights import WeightIntegrityError, hash_dir, manifest_for_dir, verify, write_version


def _writer(content: bytes):
    def write(d):
        (d / "model.safetensors").write_bytes(content)
        (d / "config.json").write_text("{}")
    return write


def test_write_version_is_atomic_and_hashed(tmp_path):
    m = write_version(tmp_path, 1, step=4, write=_writer(b"abc"))
    assert m.version == 1 and m.step == 4 and m.bytes == 5
    assert set(m.sha256) == {"model.safetensors"}
    assert not list(tmp_path.glob(".tmp-*"))
    verify(m)


def test_versions_are_never_overwritten(tmp_path):
    write_version(tmp_path, 1, 1, _writer(b"a"))
    with pytest.raises(FileExistsError):
        write_version(tmp_path, 1, 2, _writer(b"b"))


def test_failed_writer_leaves_no_version(tmp_path):
    def boom(d):
        (d / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")
    with pytest.raises(OSError):
        write_version(tmp_path, 2, 1, boom)
    assert not (tmp_path / "v000002").exists()


def test_verify_catches_tampering_and_missing_files(tmp_path):
    m = write_version(tmp_path, 1, 1, _writer(b"abc"))
    (tmp_path / "v000001" / "model.safetensors").write_bytes(b"abd")
    with pytest.raises(WeightIntegrityError, match="sha256"):
        verify(m)
    (tmp_path / "v000001" / "model.safetensors").unlink()
    with pytest.raises(WeightIntegrityError, match="missing"):
        verify(m)


def test_manifest_for_existing_dir(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"xyz")
    m = manifest_for_dir(tmp_path, 0)
    assert m.sha256 == hash_dir(tmp_path) and m.version == 0
    with pytest.raises(WeightIntegrityError):
        manifest_for_dir(tmp_path / "nope", 0)
