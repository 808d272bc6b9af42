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


@pytest.mark.slow  # 40 s: compiling every block
def test_compiled_blocks_train_like_eager_with_fsdp_and_keep_checkpoint_keys(tmp_path):
    """train.compile: each Llama decoder layer compiled in place (regional compilation) under FSDP2 on 2
    workers; the ragged last batch and validation run eager (no recompile). Same seed and data: the same losses
    as the eager run within fusion rounding, and the checkpoint loads into a plain, uncompiled Llama."""
    from maas.data.blocks import prepare_lm_data
    from maas.models.artifacts import load_torch_model
    from maas.spec import LMModelSpec, TextDataSpec, TrainSpec
    from maas.train.trainer import fit

    config = LMModelSpec(name="lm", size="tiny", block_size=32, vocab_size=512, n_layer=1).config()
    data = prepare_lm_data(TextDataSpec(limit=600), config["block_size"], str(tmp_path / "data"), vocab_size=512)
    config["vocab_size"] = data.counts["vocab_size"]
    rows = data.counts["splits"]["train"]
    assert rows % (2 * 32)  # a ragged last batch exists, so the eager fallback is exercised
    results = {}
    for compiled in (False, True):
        t = TrainSpec(num_workers=2, strategy="fsdp", epochs=1, batch_size=32, learning_rate=3e-3, max_grad_norm=1.0,
                      checkpoint_every_epochs=0, log_every_steps=2, compile=compiled, precision="fp32")
        results[compiled] = fit(t, config, data.train, data.val, rows=rows, row_bytes=(config["block_size"] + 1) * 4,
                                run_dir=str(tmp_path / f"run-{compiled}"), task="lm")
    eager, comp = results[False], results[True]
    assert comp.history[-1]["step"] == eager.history[-1]["step"] > 2
    assert [s["step"] for s in comp.steps] == [s["step"] for s in eager.steps]
    for a, b in zip(comp.steps, eager.steps):
        assert abs(a["loss"] - b["loss"]) < 2e-3 * b["loss"]
    assert abs(comp.best_metrics["val_loss"] - eager.best_metrics["val_loss"]) < 2e-3 * eager.best_metrics["val_loss"]
    model, _ = load_torch_model(comp.checkpoint_path)  # per-rank shards, assembled
    assert set(model.state_dict()) == set(eager.model.state_dict())  # no "_orig_mod." prefixes
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, comp.model.state_dict()[name])


def test_small_splits_are_cut_on_the_driver_into_equal_parts_that_read_like_ray_datas_batches():
    import ray

    from maas.train.shards import DriverShard, driver_shards

    rows = [{"x": float(i), "tokens": np.arange(i, i + 4, dtype=np.int64)} for i in range(11)]
    ds = ray.data.from_items(rows, override_num_blocks=3).materialize()
    parts = [list(DriverShard(ref).iter_batches(batch_size=2)) for ref in driver_shards(ds, 3)]
    expected = ds.take_batch(11, batch_format="numpy")
    for rank, batches in enumerate(parts):  # 11 rows over 3 workers: 3 each, in order, 2 dropped
        assert [len(b["x"]) for b in batches] == [2, 1]
        x = np.concatenate([b["x"] for b in batches])
        tokens = np.concatenate([b["tokens"] for b in batches])
        assert x.tolist() == expected["x"][rank * 3:rank * 3 + 3].tolist()
        assert tokens.dtype == expected["tokens"].dtype and tokens.shape == (3, 4)
        assert (tokens == expected["tokens"][rank * 3:rank * 3 + 3]).all()
    empty = driver_shards(ds.filter(expr="x > 99").materialize(), 2)
    assert [list(DriverShard(ref).iter_batches(batch_size=4)) for ref in empty] == [[], []]
