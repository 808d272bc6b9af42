"""Unit tests run without Ray: any ray.init here is a bug in the test or in the code under test."""

import pytest


@pytest.fixture(autouse=True)
def _forbid_ray_init(monkeypatch):
    import ray

    def forbidden(*args, **kwargs):
        raise RuntimeError("unit tests must not start Ray; move this test to tests/integration")

    monkeypatch.setattr(ray, "init", forbidden)
