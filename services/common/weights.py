"""The weight store: one directory of safetensors per policy version, and its manifest.

Invariant kept here: a version's directory appears under its final name only when every file in it is fully
written (services/common/atomic.py: temp folder, fsync, rename, fsync of the parent), and its manifest carries the
sha256 of each file, so a reader that verifies the manifest never loads a half-written or tampered version.
Importable without torch: the learner hands in a writer callback that produces the files.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.common.atomic import atomic_dir


@dataclass(frozen=True)
class Manifest:
    version: int
    uri: str                      # directory holding the version's safetensors files
    bytes: int
    sha256: dict[str, str] = field(default_factory=dict)  # file name -> hex digest
    step: int = 0                 # learner step that produced the weights
    created_at: float = 0.0
    transport: str = "disk"       # how the actors got it: disk (from `uri`) or broadcast (then `uri` may be "")
    epoch: int = 0                # broadcast: the weight group's membership epoch it was sent to
    layout: str = ""              # broadcast: sha256 of its tensor metadata (weight_wire.Layout.digest)

    @property
    def on_disk(self) -> bool:
        """Whether the version has a complete folder (a broadcast version has one only when its disk copy is done)."""
        return bool(self.uri and self.sha256)

    def to_redis(self) -> dict[str, str]:
        d = asdict(self)
        d["sha256"] = ",".join(f"{k}:{v}" for k, v in sorted(self.sha256.items()))
        return {k: str(v) for k, v in d.items()}

    @classmethod
    def from_redis(cls, h: dict[str, str]) -> Manifest:
        sha = dict(item.split(":", 1) for item in h["sha256"].split(",") if item)
        return cls(version=int(h["version"]), uri=h["uri"], bytes=int(h["bytes"]), sha256=sha,
                   step=int(h["step"]), created_at=float(h["created_at"]), transport=h.get("transport", "disk"),
                   epoch=int(h.get("epoch", 0)), layout=h.get("layout", ""))


class WeightIntegrityError(RuntimeError):
    """A version's files are missing or do not match their recorded hashes."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_dir(directory: Path, pattern: str = "*.safetensors") -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(Path(directory).glob(pattern))}


def version_dir(root: Path, version: int) -> Path:
    return Path(root) / f"v{version:06d}"


def list_versions(root: Path) -> list[tuple[int, Path]]:
    """The version folders under `root` (named as `version_dir` names them), oldest first; temp folders excluded."""
    found = [(int(p.name[1:]), p) for p in Path(root).glob("v[0-9]*") if p.name[1:].isdigit() and p.is_dir()]
    return sorted(found)


def newest_version(root: Path) -> tuple[int, Path] | None:
    """The newest version folder under `root`, or None when there is none."""
    versions = list_versions(root)
    return versions[-1] if versions else None


def write_version(root: Path, version: int, step: int, write: Callable[[Path], None]) -> Manifest:
    """Run `write(tmpdir)`, then hash its files and make it the version's folder (services/common/atomic.py)."""
    final = version_dir(root, version)
    if final.exists():
        raise FileExistsError(f"{final} already exists: versions are never overwritten")
    with atomic_dir(final) as tmp:
        write(tmp)
        sha = hash_dir(tmp)
        if not sha:
            raise WeightIntegrityError(f"writer produced no .safetensors file in {tmp}")
        size = sum(p.stat().st_size for p in tmp.iterdir())
    return Manifest(version=version, uri=str(final.resolve()), bytes=size, sha256=sha, step=step,
                    created_at=time.time())


def manifest_for_dir(directory: Path, version: int, step: int = 0) -> Manifest:
    """A manifest for weights that already exist (the base model as version 0)."""
    directory = Path(directory).resolve()
    sha = hash_dir(directory)
    if not sha:
        raise WeightIntegrityError(f"no .safetensors files in {directory}")
    size = sum((directory / name).stat().st_size for name in sha)
    return Manifest(version=version, uri=str(directory), bytes=size, sha256=sha, step=step, created_at=time.time())


def verify(manifest: Manifest) -> None:
    """Raise WeightIntegrityError unless every file of the manifest exists with its recorded hash."""
    root = Path(manifest.uri)
    for name, want in manifest.sha256.items():
        path = root / name
        if not path.exists():
            raise WeightIntegrityError(f"version {manifest.version}: {path} is missing")
        got = sha256_file(path)
        if got != want:
            raise WeightIntegrityError(f"version {manifest.version}: {path} sha256 {got[:12]} != {want[:12]}")
