"""Shared fixtures. One real local Ray for the whole session (integration and e2e tiers share it)."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

from maas.runtime import LOG_MONITOR_ENV, free_port  # noqa: F401  (tests import free_port from here)

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# In the high-throughput mode a stopping replica stays reachable for RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S
# (Ray's default 30 s) so load balancers in front of HAProxy deregister it first: every application a test
# deleted, and every Serve it stopped, waited that long. Here HAProxy is on this machine and reloads within a
# second; set before any Ray starts, so every Ray process of the tests (and of the CLIs they run) inherits it.
os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
# The session's Ray lives for the whole run and keeps two log files per worker it ever started (~360 by the
# end): its log monitor, globbing them every 0.1 s, took 241 s of CPU in an hour of a 75-minute run, and the 13
# Rays of that hour ~330 s together (4.4% of all the CPU used). Every Ray of the tests (the session's, the heads and
# CLIs they start) looks for new files every 2 s instead, as maas's own embedded Ray does (maas.runtime).
for _name, _value in LOG_MONITOR_ENV.items():
    os.environ.setdefault(_name, _value)
# Every process this test process starts, directly or not (its Ray, the CLIs it runs, their engines), inherits
# this mark, so checks for what tests leave behind (tests/llm_helpers.py) look at this process's own, orphans
# included, and not at a test process running beside it (pytest -n): set per process, never inherited from one.
os.environ["MAAS_TEST_SESSION"] = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


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
        from maas.serve.deploy import stop_serve

        stop_serve()
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


@pytest.fixture(scope="session")
def s3_endpoint():
    """One moto S3 server for the session; credentials and endpoint go into the environment, as a user's
    shell would have them (child processes inherit them)."""
    from tests.s3_helpers import S3_ENV, moto_server

    saved = {k: os.environ.get(k) for k in (*S3_ENV, "AWS_ENDPOINT_URL")}
    with moto_server() as endpoint:
        os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
        try:
            yield endpoint
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    """A fresh bucket (named after the test) on the session's S3 server: yields its s3:// URI."""
    import re
    import uuid

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"

