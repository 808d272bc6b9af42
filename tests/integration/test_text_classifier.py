"""A classification head on the packaged MiniLM, fine-tuned by Ray Train (2 workers) on real text that ships
with the installed packages (which package a docstring sentence documents), through the whole classifier
pipeline: tokenize op -> train -> ONNX int8 -> gate -> registry -> Ray Serve taking text (OIP BYTES)."""

import json

import pandas as pd
import pytest
import requests

from maas.data.corpus import package_topics
from maas.models import load_predictor
from maas.pipelines.classifier import run_pipeline
from maas.registry import Registry
from maas.spec import spec_from_dict
from tests.conftest import free_port

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]  # over 30 s each, setup included


@pytest.fixture(scope="module")
def run(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("textclf")
    rows = package_topics(packages=("numpy", "pandas"), per_package=120)
    pd.DataFrame({"text": [t for t, _ in rows], "package": [p for _, p in rows]}).to_parquet(root / "docs.parquet")
    spec = spec_from_dict({
        "store": str(root / "store"),
        "data": {"path": str(root / "docs.parquet"), "label": "package", "features": ["text"], "normalize": "none",
                 "split": {"train": 0.7, "val": 0.1, "test": 0.2},
                 "ops": [{"tokenize": {"column": "text", "max_length": 20}}]},
        "model": {"name": "topics", "arch": "minilm_classifier"},
        "train": {"num_workers": 2, "epochs": 4, "batch_size": 32, "learning_rate": 2e-4, "lr_schedule": "cosine",
                  "warmup_fraction": 0.1, "max_grad_norm": 1.0, "checkpoint_every_epochs": 1},
        "compress": {"methods": ["int8_rowwise"], "max_accuracy_drop": 0.05, "latency_runs": 20},
        "deploy": {"port": free_port()},
    })
    result = run_pipeline(spec, serve=True)
    yield {"spec": spec, "result": result, "registry": Registry(str(root / "store"))}
    from ray import serve

    serve.delete("topics")


def test_fine_tuned_head_classifies_real_text_and_int8_is_gated(run):
    result, registry = run["result"], run["registry"]
    by = {v["method"]: v for v in result.variants}
    fp32, int8 = by["fp32"]["metrics"], by["int8_rowwise"]["metrics"]
    assert fp32["test_accuracy"] > 0.7  # two packages' docstrings: chance is 0.5
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert int8["size_bytes"] < fp32["size_bytes"] / 3
    gate_ok = fp32["test_accuracy"] - int8["test_accuracy"] <= 0.05
    assert by["int8_rowwise"]["passed"] == gate_ok
    mv = registry.resolve(by["fp32"]["ref"])
    assert mv.signature["task"] == "text-classification" and mv.signature["classes"] == ["numpy", "pandas"]
    assert mv.task == registry.resolve(by["int8_rowwise"]["ref"]).task == "classify_text"
    assert {"model.safetensors", "model.json", "tokenizer.json", "model.onnx"} <= set(mv.files)
    assert set(registry.resolve(by["int8_rowwise"]["ref"]).files) >= {"model.onnx", "tokenizer.json", "model.json"}


def test_served_text_classifier_answers_text(run):
    result, registry = run["result"], run["registry"]
    url = f"{result.endpoint}/v2/models/topics/infer"
    texts = ["Return a new array of given shape and type, filled with zeros.",
             "Group DataFrame using a mapper or by a Series of columns."]
    r = requests.post(url, json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": texts}]},
                      timeout=30)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    folder, mv = registry.fetch(result.promoted_ref)
    local = load_predictor(folder, mv.runtime, mv.task)(texts).argmax(1)
    assert outputs["label"]["data"] == [mv.signature["classes"][i] for i in local]
    assert len(outputs["probabilities"]["data"]) == 4
    bad = requests.post(url, json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2],
                                               "data": [0.0, 1.0]}]}, timeout=30)
    assert bad.status_code == 400 and "text" in json.dumps(bad.json())
