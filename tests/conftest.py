import os
import tempfile
import uuid

import pytest

import rlctl.local  # noqa: F401  - sets Ray's environment before any test module can import ray
from services.common.redis_server import EmbeddedRedis

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
# W&B keeps settings, a cache and artifact staging under the home directory; tests keep them in a temp dir (set
# before any test starts Ray, so the learner's process inherits it too).
_wandb_home = tempfile.mkdtemp(prefix="videorl-tests-wandb-")
for _var, _sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
    os.environ.setdefault(_var, os.path.join(_wandb_home, _sub))


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on a free loopback port for the whole session, stopped by pid."""
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_assets():
    """The embedded tiny model and synthetic data, built once into the shared cache (as `rlctl run` does)."""
    from rich.console import Console

    from rlctl.assets import prepare_assets
    from services.common.config import RunConfig

    return prepare_assets(RunConfig(), Console(quiet=True))


@pytest.fixture
def control(redis_server):
    from services.common.control import ControlPlane

    cp = ControlPlane(redis_server.url, f"t-{uuid.uuid4().hex[:8]}")
    cp.ensure_streams()
    yield cp
    cp.close()


@pytest.fixture(autouse=True, scope="session")
def _offline():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
