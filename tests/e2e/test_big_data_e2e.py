"""Data larger than the object store streams through the data stage into training: a fresh Ray with an
80 MiB object store, a 1.2M-row data set that decodes to ~190 MB, the whole pipeline (data -> train with
streamed shards -> evaluation -> registry) in one process."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

SCRIPT = r"""
import json, sys
import ray
ray.init(address="local", num_cpus=2, object_store_memory=80 * 2**20, include_dashboard=False,
         logging_level="ERROR", log_to_driver=False)
from ray.data import DataContext
DataContext.get_current().enable_progress_bars = False
from maas.pipelines.classifier import run_pipeline
from maas.spec import spec_from_dict

spec = spec_from_dict({
    "store": sys.argv[2],
    "data": {"path": sys.argv[1], "label": "y", "max_reject_fraction": 0.01,
             "ops": [{"filter": "f0 > -4"}]},
    "model": {"name": "big", "hidden_sizes": [32], "dropout": 0.0},
    "train": {"num_workers": 1, "epochs": 1, "batch_size": 2048, "cache_shard_mb": 1,
              "checkpoint_every_epochs": 1, "learning_rate": 0.01},
    "compress": {"methods": [], "latency_runs": 10},
    "deploy": {"enabled": False},
})
result = run_pipeline(spec, serve=False)
print(json.dumps({"counts": result.data_counts, "accuracy": result.variants[0]["metrics"]["test_accuracy"],
                  "object_store_bytes": ray.cluster_resources()["object_store_memory"]}))
"""


def test_a_data_set_larger_than_the_object_store_streams_into_training(tmp_path):
    rng = np.random.default_rng(0)
    rows, cols = 1_200_000, 20
    x = rng.normal(size=(rows, cols)).astype(np.float64)
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(cols)])
    df["y"] = (x[:, :3].sum(1) > 0).astype(np.int64)  # learnable: the sign of a sum of three features
    decoded_bytes = int(df.memory_usage(index=False).sum())
    path = tmp_path / "big.parquet"
    df.to_parquet(path, row_group_size=50_000)
    del df, x

    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(tmp_path / "store")], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith('{"counts"')))
    assert decoded_bytes > 2 * out["object_store_bytes"]  # the data really is larger than the store
    c = out["counts"]
    assert c["rows_in"] == rows and c["rows_ok"] + c["rows_rejected"] + c["rows_dropped"] == rows
    assert c["rows_dropped"] > 0 and sum(c["splits"].values()) == c["rows_ok"]
    assert out["accuracy"] > 0.9  # one streamed epoch learned the signal
