"""Training across the nodes of a real multi-node Ray cluster, and surviving the loss of one of them.

The cluster (``ray.cluster_utils.Cluster``: a head and two worker nodes, each its own raylet) runs in a
subprocess of its own, so it never meets the test session's shared local Ray."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "multinode_train.py"

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("strategy", ["fsdp"])  # DDP restores through the same loop: the resubmitted-job test
def test_workers_spread_over_nodes_and_a_lost_node_costs_at_most_one_checkpoint_interval(strategy):
    epochs, every, kill_at = 8, 2, 4
    proc = subprocess.run([sys.executable, str(SCRIPT), "--strategy", strategy, "--epochs", str(epochs),
                           "--every", str(every), "--kill-at-epoch", str(kill_at)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    history, killed = out["history"], out["killed"]

    first = history[0]["worker_nodes"]
    assert len(set(first)) == 2 and set(first) <= set(out["worker_node_ids"])  # one worker per node
    assert killed and killed["node"] in first, "the run ended before a node could be removed"

    assert [h["epoch"] for h in history] == list(range(epochs))  # no epoch lost or repeated in the record
    resumed = [h for h in history if "resumed_from_epoch" in h]
    assert len(resumed) == 1
    start = resumed[0]["resumed_from_epoch"]
    again = resumed[0]["worker_nodes"]
    assert killed["node"] not in again and len(set(again)) == 2  # restarted on two of the nodes left
    # progress lost to the failure: at most one checkpoint interval (plus the epoch in flight)
    assert 1 <= start and killed["epoch"] + 1 - start <= every
    # the step counter came back with the checkpoint: no step counted twice, none skipped
    steps_per_epoch = history[1]["step"] - history[0]["step"]
    assert history[-1]["step"] == epochs * steps_per_epoch
    assert resumed[0]["step"] == (start + 1) * steps_per_epoch
    assert out["val_accuracy"] > 0.9
    if strategy == "fsdp":
        assert "model-00001-of-00002.safetensors" in out["checkpoint_files"]
