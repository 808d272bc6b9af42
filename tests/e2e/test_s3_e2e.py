"""Object storage: an s3:// glob read through pyarrow.fs with credentials from the environment."""

import json

import pytest

from tests.data_helpers import people

pytestmark = pytest.mark.slow


@pytest.fixture
def s3_env(monkeypatch):
    """A real S3 API (moto's server) on 127.0.0.1; credentials and endpoint only in the environment, as a
    user would have them in the shell that starts maas (Ray's workers inherit it when Ray starts)."""
    import socket
    import subprocess
    import sys
    import time

    import boto3
    import requests

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            requests.get(endpoint, timeout=1)
            break
        except requests.RequestException:
            assert time.time() < deadline, "moto server did not start"
            time.sleep(0.2)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="maas-data")
    try:
        yield boto3.client("s3", endpoint_url=endpoint)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


S3_SCRIPT = r"""
import json, sys
import ray
ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
from maas.data import prepare_data
from maas.spec import DataSpec
from tests.data_helpers import SPEC
r = prepare_data(DataSpec(path="s3://maas-data/customers/*.csv", **{**SPEC, "max_reject_fraction": 0.1}),
                 sys.argv[1])
print(json.dumps({"counts": r.counts, "features": r.features}))
"""


def test_an_s3_glob_is_read_with_credentials_from_the_environment(s3_env, tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    for i, seed in enumerate((1, 2)):
        s3_env.put_object(Bucket="maas-data", Key=f"customers/part-{i}.csv",
                          Body=people(120, seed=seed).to_csv(index=False).encode())
    s3_env.put_object(Bucket="maas-data", Key="customers/README.txt", Body=b"not data")
    proc = subprocess.run([sys.executable, "-c", S3_SCRIPT, str(tmp_path / "run")], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith('{"counts"')))
    c = out["counts"]
    assert c["rows_in"] == 240  # both CSVs, not the README
    assert c["rows_ok"] + c["rows_rejected"] + c["rows_dropped"] == 240 and c["rows_dropped"] >= 8
    assert out["features"][:2] == ["age", "income"]
