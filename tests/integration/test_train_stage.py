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
