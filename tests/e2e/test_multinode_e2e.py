"""A real multi-node Ray cluster whose only shared store is object storage: training across its nodes,
surviving the loss of one of them, publishing, serving and rolling over, with everything in S3.

The cluster (``ray.cluster_utils.Cluster``: a head and three worker nodes, each its own raylet with its own
local cache folder) runs in a subprocess of its own, so it never meets the test session's shared local Ray;
S3 is moto's server."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPT = Path(__file__).parent / "scripts" / "multinode_s3.py"

pytestmark = pytest.mark.slow


def test_a_pipeline_on_s3_survives_a_lost_node_and_serves_from_the_bucket(s3_bucket, tmp_path):
    epochs, every = 8, 2
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--bucket", s3_bucket[5:], "--epochs", str(epochs),
                           "--every", str(every)], capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith('{"history"')))
    history, killed = out["history"], out["killed"]

    # training spread over nodes, lost one, resumed from the newest checkpoint in S3 on the nodes left
    first = history[0]["worker_nodes"]
    assert len(set(first)) == 2 and set(first) <= set(out["worker_node_ids"])  # one worker per node
    assert killed and killed["node"] in first, "the run ended before a node could be removed"
    assert [h["epoch"] for h in history] == list(range(epochs))  # no epoch lost or repeated in the record
    resumed = [h for h in history if "resumed_from_epoch" in h]
    assert len(resumed) == 1
    start = resumed[0]["resumed_from_epoch"]
    again = resumed[0]["worker_nodes"]
    assert killed["node"] not in again and len(set(again)) == 2  # restarted on two of the nodes left
    # from the newest checkpoint S3 held at the kill, or the one before it: the newest one's files can be in
    # the bucket before its report reached the controller (then it is not a checkpoint of the run yet)
    held = killed["checkpoint_epochs"]
    assert start - 1 >= (held[-2] if len(held) > 1 else held[-1]), (start, held)
    steps_per_epoch = history[1]["step"] - history[0]["step"]
    assert history[-1]["step"] == epochs * steps_per_epoch  # the step counter came back with the checkpoint
    assert resumed[0]["step"] == (start + 1) * steps_per_epoch
    assert out["val_accuracy"] > 0.9

    # everything a run keeps is in the bucket; nothing was written to the local working folder
    files = out["run_files"]
    for part in ("data_report.json", "schema.json", "splits/train", "splits/test", "train/checkpoint_"):
        assert any(f.startswith(part) for f in files), (part, files[:40])
    assert any(f.endswith("model-00001-of-00002.safetensors") for f in files)  # FSDP2 shards, per rank
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())

    # served from S3 by replicas that each fetched into their own node's cache; an alias move rolls them over
    assert {v for code, v in out["before"]} == {out["promoted"]} and all(c == 200 for c, _ in out["before"])
    assert {v for code, v in out["after"]} == {out["other"]} and all(c == 200 for c, _ in out["after"])
    node_caches = {name: files for name, files in out["caches"].items() if name != "driver-cache" and files}
    assert node_caches, out["caches"]
    name, version = out["other"].split("/")
    assert any(any(f.endswith(f"{name}/{version}/model.onnx") or f.endswith(f"{name}/{version}/model.safetensors")
                   for f in files) for files in node_caches.values()), out["caches"]
    # usage, metered by the replicas on their nodes into the bucket: every request the script made, per version
    usage = out["usage"]
    assert sum(u["requests"] for u in usage) >= len(out["made"]) and all(u["errors"] == 0 for u in usage), usage
    served = {out["promoted"].split("/")[1], version}  # before and after the roll-over
    assert {(u["key"], u["model"]) for u in usage} == {("-", "digits")} and {u["version"] for u in usage} <= served
    moves = [(h["previous"], h["version"], h["by"]) for h in out["history_of_alias"]]
    assert moves[-1] == (int(out["promoted"].split("/")[1]), int(version), "test:roll-over")
    assert moves[0][0] is None and moves[0][2] == "run:multinode-s3"
