"""Multi-node training on a real multi-node Ray cluster on one machine (``ray.cluster_utils.Cluster``).

Run by tests/e2e/test_multinode_e2e.py in its own process (a Cluster needs a driver not already connected
to another Ray). A 1-CPU head and three 1-CPU worker nodes: the 2 training workers land on different nodes
(SPREAD). Once the run is ``--kill-at-epoch`` epochs in, a worker node hosting a training worker dies
abruptly (its raylet and every process on it killed, no goodbye); the run must resume from its last
checkpoint on the nodes left. The spare CPU matters: the killed node held blocks of the cached train split,
which Ray rebuilds from lineage by re-running their read tasks, and those need a CPU the new worker group
does not hold. Prints one JSON line.
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--strategy", default="ddp")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--every", type=int, default=3)
    p.add_argument("--kill-at-epoch", type=int, default=8)
    args = p.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from maas.data import prepare_data
    from maas.data.source import bootstrap_sklearn
    from maas.spec import spec_from_dict
    from maas.train import train_model

    work = Path(tempfile.mkdtemp(prefix="maas-multinode-"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 150 * 2**20,
                                                            "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=1, object_store_memory=150 * 2**20) for _ in range(3)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    try:
        data_path = str(work / "digits.parquet")
        bootstrap_sklearn("sklearn:digits", data_path)
        spec = spec_from_dict({"data": {"path": data_path, "label": "target"}, "model": {"name": "digits"},
                               "train": {"epochs": args.epochs, "num_workers": 2, "batch_size": 16,
                                         "strategy": args.strategy, "placement_strategy": "SPREAD",
                                         "checkpoint_every_epochs": args.every, "max_failures": 2,
                                         "checkpoints_to_keep": 2}})
        run_dir = str(work / "run")  # storage shared by every node (one machine; NFS or object storage on a real cluster)
        data = prepare_data(spec.data, run_dir)
        node_ids = {n.node_id for n in nodes} | {cluster.head_node.node_id}
        killed: dict = {}

        def kill_a_worker_node():
            progress = Path(run_dir) / "train_progress.json"
            deadline = time.time() + 300
            while time.time() < deadline:
                try:
                    state = json.loads(progress.read_text())
                except (OSError, ValueError):
                    state = {"epoch": -1}
                if state["epoch"] >= args.kill_at_epoch:
                    hosts = set(state.get("worker_nodes", []))
                    victim = next(n for n in nodes if n.node_id in hosts)  # a worker node, never the head
                    killed.update(epoch=state["epoch"], step=state["step"], node=victim.node_id)
                    # Cluster.remove_node installs signal handlers (main thread only): kill the node directly
                    victim.kill_all_processes(check_alive=False, allow_graceful=False)
                    return
                time.sleep(0.1)

        threading.Thread(target=kill_a_worker_node, daemon=True).start()
        started = time.time()
        result = train_model(spec, data, run_dir)
        rows = data.counts["splits"]["train"]
        print(json.dumps({"history": result.history, "killed": killed, "worker_node_ids": sorted(node_ids),
                          "train_rows": rows, "seconds": time.time() - started,
                          "val_accuracy": result.best_metrics.get("val_accuracy"),
                          "checkpoint_files": sorted(os.listdir(result.checkpoint_path))}), flush=True)
        return 0
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
