"""`maas batch` on the shared local Ray: a registered digits classifier answers a Parquet file through Ray
Data as its endpoint answers the same rows, bad rows go to rejects with their reason, and a batch whose
driver is killed mid-way finishes on a rerun with no row lost and none written twice."""

import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest
import requests
import torch

from maas.batch import run_batch
from maas.exceptions import BatchError
from maas.models import build_model, classifier_signature
from maas.models.artifacts import export_onnx
from maas.registry import Registry
from tests.conftest import free_port

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def digits(ray_session, digits_parquet, tmp_path_factory):
    """A digits classifier (ONNX, named pixel features) in a registry, and the digits rows with an id,
    two of them planted bad: a missing pixel and a pixel that is not a number."""
    tmp = tmp_path_factory.mktemp("batch")
    frame = pd.read_parquet(digits_parquet).drop(columns=["target"])
    features = list(frame.columns)
    torch.manual_seed(0)
    model = build_model({"arch": "mlp", "input_dim": 64, "num_classes": 10, "hidden_sizes": [32], "dropout": 0.0,
                         "mean": frame.mean().tolist(), "std": (frame.std() + 1).tolist()})
    # fp32 ONNX: batch-invariant, so a row's answer does not depend on the rows batched with it (int8_dynamic
    # takes one activation scale per call, and near ties of a random model then flip between batchings)
    onnx = export_onnx(model, 64, tmp / "model.onnx")
    registry = Registry(str(tmp / "store"))
    mv = registry.publish("digits", {"model.onnx": onnx}, runtime="onnxruntime",
                          signature=classifier_signature(64, list(range(10)), features=features))
    registry.set_alias("digits", "production", mv.version)
    frame.insert(0, "row_id", [f"r{i}" for i in range(len(frame))])
    frame[features[0]] = frame[features[0]].astype("object")
    frame.loc[7, features[0]] = None
    frame[features[1]] = frame[features[1]].astype(str)  # numbers as text, as a careless export writes them
    frame.loc[11, features[1]] = "dark"
    frame.to_parquet(tmp / "rows.parquet")
    return {"tmp": tmp, "store": str(tmp / "store"), "frame": frame, "features": features}


def _read(folder) -> pd.DataFrame:
    return pads.dataset(str(folder), format="parquet").to_table().to_pandas()


def test_batch_answers_every_row_as_the_endpoint_does_and_rejects_bad_rows_with_the_reason(digits):
    from maas.serve import deploy
    from maas.serve.deploy import stop_serve
    from maas.spec import DeploySpec

    tmp, frame = digits["tmp"], digits["frame"]
    lines = []
    result = run_batch(digits["store"], "digits@production", str(tmp / "rows.parquet"), str(tmp / "out"),
                       id_column="row_id", batch_size=100, progress=lines.append)
    assert (result.ref, result.rows, result.answered, result.rejected) == ("digits/1", len(frame), len(frame) - 2, 2)
    assert lines and lines[-1].startswith(f"{len(frame)}/{len(frame)} rows")
    answers, rejects = _read(tmp / "out" / "answers"), _read(tmp / "out" / "rejects")
    assert sorted(answers["row_id"].tolist() + rejects["row_id"].tolist()) == sorted(frame["row_id"])
    why = dict(zip(rejects["row_id"], rejects["reason"]))
    assert why == {"r7": f"column {digits['features'][0]!r} is empty",
                   "r11": f"column {digits['features'][1]!r} is not a finite number: 'dark'"}
    assert set(answers["version"]) == {"digits/1"} and set(rejects["version"]) == {"digits/1"}
    # the endpoint's answers for the same rows, one infer request of the first 300 good ones
    good = frame[~frame["row_id"].isin(["r7", "r11"])].head(300)
    url = deploy(digits["store"], "digits@production", DeploySpec(port=free_port(), grpc_port=0))
    try:
        body = {"inputs": [{"name": "input", "shape": [len(good), 64], "datatype": "FP32",
                            "data": good[digits["features"]].astype(float).to_numpy().tolist()}]}
        out = requests.post(f"{url}/v2/models/digits/infer", json=body, timeout=60).json()["outputs"]
    finally:
        stop_serve()
    mine = answers.set_index("row_id").loc[good["row_id"]]
    assert mine["label"].tolist() == out[0]["data"]
    np.testing.assert_allclose(np.stack(mine["probabilities"].to_numpy()),
                               np.asarray(out[1]["data"]).reshape(out[1]["shape"]), atol=1e-6)


def test_a_batch_killed_mid_way_finishes_on_a_rerun_with_no_row_lost_or_repeated(digits, ray_session):
    tmp = digits["tmp"]
    big = pd.concat([digits["frame"]] * 6, ignore_index=True)
    big["row_id"] = [f"b{i}" for i in range(len(big))]
    big.to_parquet(tmp / "big.parquet")
    out = tmp / "killed"
    driver = ("import sys, ray; from maas.batch import run_batch; ray.init(address=sys.argv[1]); "
              "run_batch(sys.argv[2], 'digits@production', sys.argv[3], sys.argv[4], id_column='row_id', "
              "batch_size=20)")
    proc = subprocess.Popen([sys.executable, "-c", driver, ray_session.get_runtime_context().gcs_address,
                             digits["store"], str(tmp / "big.parquet"), str(out)],
                            stdout=(tmp / "driver.log").open("w"), stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not list((out / "answers").glob("part-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # the driver, mid-way: its actors go with it
    proc.wait(timeout=30)
    written = len(_read(out / "answers"))
    assert 0 < written < len(big) - 2, (written, (tmp / "driver.log").read_text()[-2000:])
    # production moves meanwhile: the rerun finishes with the version that began the batch, and says so
    registry = Registry(digits["store"])
    folder, first = registry.fetch("digits/1")
    second = registry.publish("digits", {f.name: f for f in folder.iterdir()}, runtime="onnxruntime",
                              signature=first.signature)
    registry.set_alias("digits", "production", second.version)
    lines = []
    try:
        result = run_batch(digits["store"], "digits@production", str(tmp / "big.parquet"), str(out),
                           id_column="row_id", batch_size=500, progress=lines.append)
    finally:
        registry.set_alias("digits", "production", first.version)
    assert result.ref == "digits/1" and lines[0].startswith(f"resuming into {out}: ")
    answers, rejects = _read(out / "answers"), _read(out / "rejects")
    ids = answers["row_id"].tolist() + rejects["row_id"].tolist()
    assert len(ids) == len(set(ids)) == len(big) == result.answered + result.rejected  # rows in = out + rejects
    assert set(answers["version"]) == {"digits/1"}
    assert result.resumed >= written and result.rejected == 12  # each copy of the two bad rows


def test_bad_flags_and_inputs_are_named_before_any_work(digits, tmp_path):
    store, rows = digits["store"], str(digits["tmp"] / "rows.parquet")
    with pytest.raises(BatchError, match="--id-column: the input has no column 'id'"):
        run_batch(store, "digits@production", rows, str(tmp_path / "a"))
    pd.DataFrame({"row_id": ["x", "x"], "pixel_0_0": [1.0, 2.0]}).to_parquet(tmp_path / "few.parquet")
    with pytest.raises(BatchError, match="the model reads column"):
        run_batch(store, "digits@production", str(tmp_path / "few.parquet"), str(tmp_path / "b"), id_column="row_id")
    with pytest.raises(BatchError, match="--input: .* does not exist"):
        run_batch(store, "digits@production", str(tmp_path / "none.parquet"), str(tmp_path / "c"))
    with pytest.raises(BatchError, match="--max-tokens and --temperature are for language models; digits/"):
        run_batch(store, "digits@production", rows, str(tmp_path / "c"), id_column="row_id", max_tokens=8)
    (tmp_path / "mixed.jsonl").write_text('{"row_id": 1, "pixel_0_0": [1]}\n{"row_id": 2, "pixel_0_0": "x"}\n')
    with pytest.raises(BatchError, match="--input: .*mixed.jsonl cannot be read as json: .*changed from array"):
        run_batch(store, "digits@production", str(tmp_path / "mixed.jsonl"), str(tmp_path / "c"), id_column="row_id")
    run_batch(store, "digits@production", rows, str(tmp_path / "d"), id_column="row_id")
    with pytest.raises(BatchError, match="holds a batch of .*rows.parquet .* give another --output"):
        run_batch(store, "digits@production", str(tmp_path / "few.parquet"), str(tmp_path / "d"),
                  id_column="row_id")
