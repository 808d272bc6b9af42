"""Object storage end to end, as a user runs it: `maas run` and `maas submit` with the store and the data in
S3 (moto's server), credentials and endpoint only in the environment. Every run keeps its splits, rejects,
reports, checkpoints and registry in the bucket; nothing is written to the local working folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import yaml

from tests.conftest import ROOT
from tests.data_helpers import SPEC, people

pytestmark = pytest.mark.slow
MAAS = str(Path(sys.executable).parent / "maas")


def _maas(*args, cwd, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}  # the spec's custom op is in tests/
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([MAAS, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _keys(s3, bucket: str, prefix: str = "") -> list[str]:
    keys, token = [], None
    while True:
        page = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, **({"ContinuationToken": token} if token else {}))
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]


def test_maas_run_keeps_data_runs_and_registry_in_the_bucket(s3_bucket, tmp_path):
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    bucket = s3_bucket[5:]
    for i, seed in enumerate((1, 2)):
        s3.put_object(Bucket=bucket, Key=f"customers/part-{i}.csv",
                      Body=people(120, seed=seed).to_csv(index=False).encode())
    s3.put_object(Bucket=bucket, Key="customers/README.txt", Body=b"not data")  # not matched by the glob
    spec = {"data": {**SPEC, "path": f"{s3_bucket}/customers/*.csv", "max_reject_fraction": 0.1},
            "model": {"name": "shop"}, "train": {"epochs": 2, "num_workers": 1},
            "compress": {"latency_runs": 20}}
    (tmp_path / "work").mkdir()
    spec_file = tmp_path / "shop.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    store = f"{s3_bucket}/maas"
    r = _maas("run", str(spec_file), "--no-serve", f"store={store}", cwd=tmp_path / "work")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert not any((tmp_path / "work").iterdir())  # nothing local: the store is the bucket

    keys = _keys(s3, bucket, "maas/")
    runs = {k.split("/")[2] for k in keys if k.startswith("maas/runs/") and k.split("/")[2]}
    assert len(runs) == 1
    run = f"maas/runs/{runs.pop()}"
    report = json.loads(s3.get_object(Bucket=bucket, Key=f"{run}/data_report.json")["Body"].read())
    c = report["counts"]
    assert c["rows_in"] == 240 and c["rows_ok"] + c["rows_rejected"] + c["rows_dropped"] == 240  # both CSVs only
    assert c["rows_rejected"] >= 4 and c["rows_dropped"] >= 8
    for part in (f"{run}/rejects/", f"{run}/schema.json", f"{run}/splits/train", f"{run}/train/checkpoint_",
                 "maas/models/shop/versions/1/manifest.json", "maas/models/shop/versions/2/manifest.json",
                 "maas/models/shop/aliases/production/"):
        assert any(k.startswith(part) for k in keys), (part, keys[:50])

    listed = _maas("models", "list", "--store", store, cwd=tmp_path / "work")
    assert listed.returncode == 0 and "shop/1" in listed.stdout and "shop/2" in listed.stdout
    history = _maas("models", "alias", "shop", "--store", store, cwd=tmp_path / "work")
    assert history.returncode == 0 and "production" in history.stdout and "run:" in history.stdout
    moved = _maas("models", "alias", "shop", "production", "1", "--expect", "none", "--store", store,
                  cwd=tmp_path / "work")
    assert moved.returncode == 2 and "not overwriting it" in moved.stderr  # it points somewhere already
    shown = json.loads(_maas("models", "show", "shop@production", "--json", "--store", store,
                             cwd=tmp_path / "work").stdout)
    assert shown["name"] == "shop" and shown["aliases"] == ["production"] and shown["objects"].startswith("objects/")


def test_maas_submit_without_an_address_runs_the_pipeline_job_on_an_embedded_ray_against_the_bucket(
        s3_bucket, tmp_path):
    """No cluster address: `maas submit` starts an embedded Ray, runs the pipeline as a real Ray job, follows
    it as `maas run` reads, and ends; the job keeps everything in the bucket (jobs against a real head with
    a local store are covered in test_jobs_e2e)."""
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    store = f"{s3_bucket}/maas"
    r = _maas("submit", str(ROOT / "examples" / "digits.yaml"), f"store={store}",
              f"data.path={s3_bucket}/data/digits.parquet", "train.epochs=2", "train.num_workers=1",
              "compress.latency_runs=20", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "(embedded Ray)" in r.stdout and "SUCCEEDED" in r.stdout and "production -> digits/" in r.stdout
    # followed as `maas run` reads: stage progress, none of Ray's own lines nor the raw result line
    assert "  [data] reading" in r.stdout and "maas_result" not in r.stdout and "streaming_executor" not in r.stdout
    keys = _keys(s3, s3_bucket[5:])
    assert "data/digits.parquet" in keys  # bootstrapped into the bucket by the job
    report = next(k for k in keys if k.startswith("maas/runs/") and k.endswith("/data_report.json"))
    assert json.loads(s3.get_object(Bucket=s3_bucket[5:], Key=report)["Body"].read())["counts"]["rows_in"] == 1797
    assert any(k.startswith("maas/runs/") and "/train/checkpoint_" in k for k in keys)
    assert any(k.endswith("versions/2/manifest.json") for k in keys)
    assert not any(tmp_path.iterdir())
    r = _maas("submit", str(ROOT / "examples" / "digits.yaml"), "--async", cwd=tmp_path)
    assert r.returncode == 2 and "--async needs a cluster" in r.stderr
