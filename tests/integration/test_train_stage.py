import json
import os

import numpy as np
import pytest
import torch

from maas.data import prepare_data
from maas.spec import spec_from_dict
from maas.train import train_model

pytestmark = pytest.mark.usefixtures("ray_session")


def test_ddp_training_validates_each_epoch_and_keeps_the_best_checkpoints(digits_parquet, tmp_path):
    spec = spec_from_dict({"data": {"path": digits_parquet, "label": "target"}, "model": {"name": "digits"},
                           "train": {"epochs": 6, "num_workers": 2, "checkpoints_to_keep": 2}})
    data = prepare_data(spec.data, str(tmp_path))
    result = train_model(spec, data, str(tmp_path))

    assert [h["epoch"] for h in result.history] == list(range(6))
    assert all("val_accuracy" in h and "train_loss" in h for h in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_metrics["val_accuracy"] == max(h["val_accuracy"] for h in result.history)
    assert result.device == "cpu"

    ckpts = [d for d in os.listdir(result.run_path)
             if d.startswith("checkpoint_") and os.path.isdir(os.path.join(result.run_path, d))]
    assert len(ckpts) == 2  # checkpoints_to_keep
    files = set(os.listdir(result.checkpoint_path))
    assert {"model.safetensors", "model.json", "optimizer.pt", "state.json"} <= files
    opt = torch.load(os.path.join(result.checkpoint_path, "optimizer.pt"), weights_only=True)
    assert "state" in opt and "param_groups" in opt
    config = json.loads(open(os.path.join(result.checkpoint_path, "model.json")).read())
    assert config["input_dim"] == 64 and config["num_classes"] == 10 and "mean" not in config

    x, y = data.numpy("test")
    with torch.no_grad():
        acc = (result.model(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    assert acc > 0.9
    # the normalisation fitted on the train split lives in the weights
    np.testing.assert_allclose(result.model[0].mean.numpy(), data.mean, rtol=1e-5)


def test_a_killed_worker_resumes_from_the_last_checkpoint(digits_parquet, tmp_path):
    """SIGKILL one training worker mid-run: Ray Train restarts the group (train.max_failures), the loop
    resumes from the latest checkpoint, and the history stays one entry per epoch."""
    import signal
    import threading
    import time

    from ray._private.worker import _global_node

    raylet_pids = {p.process.pid for p in _global_node.all_processes.get("raylet", [])}

    def our_train_workers() -> list[int]:
        """PIDs of RayTrainWorker processes under this session's raylet (never anyone else's processes)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
                cmd = open(f"/proc/{entry}/cmdline", "rb").read().decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
            if ppid in raylet_pids and cmd.startswith("ray::RayTrainWorker"):
                pids.append(int(entry))
        return pids

    epochs, every = 120, 4
    spec = spec_from_dict({"data": {"path": digits_parquet, "label": "target"}, "model": {"name": "digits"},
                           "train": {"epochs": epochs, "num_workers": 2, "batch_size": 16, "max_failures": 1,
                                     "checkpoint_every_epochs": every, "checkpoints_to_keep": 2}})
    data = prepare_data(spec.data, str(tmp_path))
    killed = {}

    def kill_a_worker_after_some_checkpoints():
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            epochs_on_disk = []
            for state in (tmp_path / "train").glob("checkpoint_*/state.json"):
                try:
                    epochs_on_disk.append(json.loads(state.read_text())["epoch"])
                except (OSError, ValueError):  # being written or pruned right now
                    pass
            # a few checkpoint intervals in, so earlier checkpoints are surely registered with Ray Train
            if epochs_on_disk and max(epochs_on_disk) >= 3 * every:
                workers = our_train_workers()
                if workers:
                    os.kill(max(workers), signal.SIGKILL)
                    killed["at"] = max(epochs_on_disk)
            time.sleep(0.2)

    killer = threading.Thread(target=kill_a_worker_after_some_checkpoints, daemon=True)
    killer.start()
    result = train_model(spec, data, str(tmp_path))
    killer.join(timeout=5)

    assert "at" in killed, "the run ended before a worker could be killed"
    assert [h["epoch"] for h in result.history] == list(range(epochs))  # no epoch lost or repeated
    resumed = [h for h in result.history if "resumed_from_epoch" in h]
    assert len(resumed) == 1
    start = resumed[0]["resumed_from_epoch"]
    assert start >= 1  # resumed from a checkpoint, not restarted from epoch 0
    # a checkpoint on disk may not yet be registered when the kill lands: at most one interval is redone
    assert 0 <= killed["at"] + 1 - start <= every
    assert result.best_metrics["val_accuracy"] > 0.9


def test_streaming_with_no_cpu_left_for_the_reader_is_refused_not_hung(digits_parquet, tmp_path):
    from maas.exceptions import TrainingError

    spec = spec_from_dict({"data": {"path": digits_parquet, "label": "target"}, "model": {"name": "digits"},
                           "train": {"epochs": 1, "num_workers": 4, "cache_shard_mb": 0.001}})
    data = prepare_data(spec.data, str(tmp_path))
    with pytest.raises(TrainingError, match="leaving none to read the data: lower train.cpus_per_worker"):
        train_model(spec, data, str(tmp_path))
