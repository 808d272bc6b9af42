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

    epochs, every = 50, 4
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


def test_fsdp_shards_checkpoints_that_load_back_into_a_full_model(digits_parquet, tmp_path):
    """FSDP2 fully_shard over gloo on CPU, 2 workers: each rank writes its own shard; the shards assemble
    into the full model for evaluation, compression and serving. With gradient accumulation, clipping,
    warmup + cosine schedule and per-step metrics."""
    from maas.models.artifacts import SHARDS, load_sharded_state, load_torch_model

    spec = spec_from_dict({"data": {"path": digits_parquet, "label": "target"}, "model": {"name": "digits"},
                           "train": {"epochs": 5, "num_workers": 2, "strategy": "fsdp", "batch_size": 32,
                                     "grad_accumulation_steps": 2, "max_grad_norm": 1.0, "lr_schedule": "cosine",
                                     "warmup_fraction": 0.1, "log_every_steps": 5, "learning_rate": 0.005}})
    data = prepare_data(spec.data, str(tmp_path))
    result = train_model(spec, data, str(tmp_path))

    files = set(os.listdir(result.checkpoint_path))
    assert {"model-00000-of-00002.safetensors", "model-00001-of-00002.safetensors", SHARDS, "model.json",
            "optimizer-00000-of-00002.pt", "optimizer-00001-of-00002.pt"} <= files
    assert "model.safetensors" not in files  # nobody gathered the whole model to checkpoint it
    from safetensors.torch import load_file

    shard0 = load_file(os.path.join(result.checkpoint_path, "model-00000-of-00002.safetensors"))
    full = load_sharded_state(result.checkpoint_path)
    assert shard0["1.weight"].shape[0] == full["1.weight"].shape[0] // 2  # half of the first Linear's rows
    model, _ = load_torch_model(result.checkpoint_path)
    x, y = data.numpy("test")
    with torch.no_grad():
        assert (model(torch.from_numpy(x)).argmax(1).numpy() == y).mean() > 0.9

    rows = data.counts["splits"]["train"]
    steps_per_epoch = -(-rows // 2 // 32 // 2)  # per worker, accumulated: ceil(rows / workers / batch / accum)
    assert abs(result.history[-1]["step"] - 5 * steps_per_epoch) <= 5  # shards differ by a batch at most
    lines = [json.loads(line) for line in open(tmp_path / "train_metrics.jsonl")]
    steps = [e for e in lines if e["kind"] == "step"]
    assert steps and all(e["step"] % 5 == 0 and "grad_norm" in e and e["samples_per_s"] > 0 for e in steps)
    lrs = [e["lr"] for e in steps]
    assert max(lrs) <= 0.005 + 1e-12 and lrs[-1] < 0.2 * max(lrs)  # warmed up, then decayed towards zero
    assert (tmp_path / "train_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_early_stopping_ends_a_run_that_stopped_improving(digits_parquet, tmp_path):
    spec = spec_from_dict({"data": {"path": digits_parquet, "label": "target"}, "model": {"name": "digits"},
                           "train": {"epochs": 200, "num_workers": 1, "early_stopping_patience": 3,
                                     "learning_rate": 0.01}})
    data = prepare_data(spec.data, str(tmp_path))
    result = train_model(spec, data, str(tmp_path))
    last = result.history[-1]
    assert len(result.history) < 200 and last.get("early_stopped") and last["stale_epochs"] == 3
    best_epoch = max(result.history, key=lambda h: h["val_accuracy"])["epoch"]
    assert last["epoch"] == best_epoch + 3  # three epochs past the best, then stopped
    assert result.best_metrics["val_accuracy"] == max(h["val_accuracy"] for h in result.history)
