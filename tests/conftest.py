"""Shared fixtures. One real local Ray for the whole session (integration and e2e tiers share it)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from maas.runtime import free_port  # noqa: F401  (tests import it from here)

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray (4 logical CPUs on this 2-core machine, so a Serve replica left from one test never
    starves a 2-worker training run in the next), started once and shared by the session."""
    import ray

    from maas.runtime import ensure_ray  # noqa: F401 (same quiet settings as the CLI)

    ray.init(address="local", num_cpus=4, include_dashboard=False, object_store_memory=400 * 1024 * 1024,
             logging_level="WARNING", log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def digits_parquet(tmp_path_factory) -> str:
    from maas.data.source import bootstrap_sklearn

    path = str(tmp_path_factory.mktemp("data") / "digits.parquet")
    bootstrap_sklearn("sklearn:digits", path)
    return path


@pytest.fixture(scope="session")
def python_bin() -> str:
    return sys.executable
