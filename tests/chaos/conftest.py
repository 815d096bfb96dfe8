import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")


@pytest.fixture(scope="session")
def tiny_assets():
    """The embedded tiny model and synthetic data, built once into the shared cache (as `rlctl run` does)."""
    from rich.console import Console

    from rlctl.assets import prepare_assets
    from services.common.config import RunConfig

    return prepare_assets(RunConfig(), Console(quiet=True))
