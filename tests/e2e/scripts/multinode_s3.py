"""A whole pipeline on a multi-node Ray cluster whose only shared store is S3 (moto's server), surviving the
loss of a node mid-training, then served from S3 and rolled over by an alias move.

Run by tests/e2e/test_multinode_e2e.py in its own process (a ``ray.cluster_utils.Cluster`` needs a driver not
already connected to another Ray). A 1-CPU head and three 1-CPU worker nodes, each with its own local cache
folder (``MAAS_CACHE_DIR``, set per raylet) and nothing else local: data, splits, rejects, reports,
checkpoints and the registry are all in the bucket. The 2 training workers (FSDP2) land on different nodes
(SPREAD); once a few checkpoints are in S3, a worker node hosting a training worker dies abruptly (its raylet
and every process on it killed); the run must resume from the newest checkpoint in S3 on the nodes left,
publish, promote and serve from S3. Prints one JSON line.
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
    p.add_argument("--bucket", required=True)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--every", type=int, default=2)
    p.add_argument("--kill-after-checkpoints", type=int, default=3)
    args = p.parse_args()

    import pyarrow.fs as pafs
    import ray
    import requests
    from ray import serve
    from ray.cluster_utils import Cluster

    from maas.pipelines import classifier
    from maas.registry import Registry
    from maas.runtime import free_port
    from maas.spec import spec_from_dict

    work = Path(tempfile.mkdtemp(prefix="maas-multinode-s3-"))
    os.environ["MAAS_CACHE_DIR"] = str(work / "driver-cache")

    def node_env(name: str) -> dict:
        return {"MAAS_CACHE_DIR": str(work / f"{name}-cache")}

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 150 * 2**20, "include_dashboard": False, "env_vars": node_env("head")})
    nodes = [cluster.add_node(num_cpus=1, object_store_memory=150 * 2**20, env_vars=node_env(f"node{i}"))
             for i in range(3)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    port = free_port()
    # one proxy, on the head: the nodes of this test share one machine, so one port
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    store = f"s3://{args.bucket}/maas"
    run_id = "multinode-s3"
    fs, run_root = pafs.FileSystem.from_uri(f"{store}/runs/{run_id}")
    try:
        spec = spec_from_dict({
            "store": store,
            "data": {"path": f"s3://{args.bucket}/data/digits.parquet", "bootstrap": "sklearn:digits",
                     "label": "target"},
            "model": {"name": "digits"},
            "train": {"epochs": args.epochs, "num_workers": 2, "batch_size": 16, "strategy": "fsdp",
                      "placement_strategy": "SPREAD", "checkpoint_every_epochs": args.every, "max_failures": 2,
                      "checkpoints_to_keep": 2},
            "compress": {"latency_runs": 20},
            "deploy": {"port": port, "num_replicas": 2, "num_cpus": 0.1, "alias_poll_s": 0.5}})
        node_ids = {n.node_id for n in nodes} | {cluster.head_node.node_id}
        killed: dict = {}

        def checkpoint_epochs() -> list[int]:
            try:
                infos = fs.get_file_info(pafs.FileSelector(f"{run_root}/train", recursive=True))
            except (FileNotFoundError, OSError):
                return []
            out = []
            for info in infos:
                if info.path.endswith("/state.json") and "/checkpoint_" in info.path:
                    try:
                        with fs.open_input_stream(info.path) as f:
                            out.append(json.loads(f.read())["epoch"])
                    except (OSError, ValueError, KeyError):
                        pass
            return sorted(out)

        def kill_a_worker_node():
            from ray._private import state

            deadline = time.time() + 400
            seen: set = set()
            while time.time() < deadline:
                epochs = checkpoint_epochs()
                seen.update(epochs)
                if len(seen) >= args.kill_after_checkpoints:
                    hosts = {a["Address"]["NodeID"] for a in state.actors().values()
                             if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE"}
                    victim = next((n for n in nodes if n.node_id in hosts), None)  # never the head
                    if victim is None:
                        time.sleep(0.2)
                        continue
                    killed.update(checkpoint_epochs=sorted(set(epochs)), node=victim.node_id)
                    victim.kill_all_processes(check_alive=False, allow_graceful=False)
                    return
                time.sleep(0.2)

        threading.Thread(target=kill_a_worker_node, daemon=True).start()
        started = time.time()
        result = classifier.run(spec, serve=True, run_id=run_id)
        seconds = time.time() - started

        reg = Registry(store)
        promoted = reg.resolve("digits@production")
        other = next(v for v in reg.list_versions("digits") if v.version != promoted.version and v.status == "ready")
        rows = [[0.0] * 64]
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": rows[0]}]}

        made = []  # every request's status

        def served_versions(n: int) -> list:
            out = []
            for _ in range(n):
                r = requests.post(f"{result.endpoint}/v2/models/digits/infer", json=body, timeout=30)
                out.append((r.status_code, r.headers.get("x-maas-model-version")))
                made.append(r.status_code)
            return out

        before = served_versions(6)
        reg.set_alias("digits", "production", other.version, expected=promoted.version, by="test:roll-over")
        deadline, after = time.time() + 60, []
        while time.time() < deadline:
            after = served_versions(8)
            if all(v == other.ref for _, v in after):
                break
            time.sleep(0.3)
        deadline = time.time() + 30  # the replicas meter usage into the bucket, each every second
        while time.time() < deadline and sum(u.requests for u in reg.usage(since=None)) < len(made):
            time.sleep(0.5)
        listing = [i.path for i in fs.get_file_info(pafs.FileSelector(run_root, recursive=True))]
        caches = {d.name: sorted(str(p.relative_to(d)) for p in d.rglob("*")
                                 if p.is_file() and not p.name.startswith("."))
                  for d in work.iterdir() if d.name.endswith("-cache")}
        print(json.dumps({
            "history": result.history, "killed": killed, "worker_node_ids": sorted(node_ids), "seconds": seconds,
            "val_accuracy": result.best_val_accuracy, "promoted": promoted.ref, "other": other.ref,
            "before": before, "after": after, "run_files": [x[len(run_root) + 1:] for x in listing],
            "caches": caches,
            "history_of_alias": reg.alias_history("digits"), "made": made,
            "usage": [u.to_dict() for u in reg.usage(since=None)]}, default=str), flush=True)
        return 0
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
