"""The digits pipeline end to end on the shared local Ray, checked through real HTTP."""

import json

import numpy as np
import pytest
import requests

from maas.registry import Registry
from maas.serve import VERSION_HEADER
from maas.spec import load_spec
from tests.conftest import ROOT, free_port

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


def test_digits_pipeline_reaches_accuracy_and_serves_the_int8_model(tmp_path):
    from ray import serve

    from maas.data import prepare_data  # noqa: F401  (same import path the pipeline uses)
    from maas.pipeline import run_pipeline

    port = free_port()
    spec = load_spec(ROOT / "examples" / "digits.yaml",
                     [f"store={tmp_path / 'store'}", f"data.path={tmp_path / 'digits.parquet'}",
                      f"deploy.port={port}"])
    try:
        result = run_pipeline(spec)
        fp32, int8 = result.variants
        assert fp32["method"] == "fp32" and int8["method"] == "int8_dynamic"
        assert fp32["metrics"]["test_accuracy"] >= 0.95
        assert int8["metrics"]["test_accuracy"] >= fp32["metrics"]["test_accuracy"] - 0.01
        assert int8["metrics"]["size_bytes"] < fp32["metrics"]["size_bytes"] / 2
        assert result.promoted_ref == int8["ref"]

        reg = Registry(str(tmp_path / "store"))
        parent = reg.get_version("digits", 1)
        child = reg.resolve("digits@production")
        assert child.ref == int8["ref"] and child.status == "ready" and child.aliases == ["production"]
        assert child.lineage["parent"] == parent.ref == "digits/1"
        for mv in (parent, child):
            assert mv.lineage["data_fingerprint"] == result.data_fingerprint
            assert mv.lineage["spec_hash"] == spec.spec_hash()
            assert mv.lineage["run_id"] == result.run_id
        assert set(parent.files) == {"model.safetensors", "model.json", "model.onnx"}
        assert child.lineage["gate"]["passed"] is True

        # the whole test split through the endpoint
        from maas.data import prepare_data as prep

        data = prep(spec.data, str(tmp_path / "check"))
        x, y = data.numpy("test")
        body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                            "data": x.ravel().tolist()}]}
        r = requests.post(f"{result.endpoint}/v2/models/digits/infer", data=json.dumps(body), timeout=30)
        assert r.status_code == 200, r.text
        assert r.headers[VERSION_HEADER] == int8["ref"]
        labels = np.array(r.json()["outputs"][0]["data"])
        http_accuracy = float((labels == np.array(data.classes)[y]).mean())
        assert http_accuracy >= 0.95
        assert http_accuracy == pytest.approx(int8["metrics"]["test_accuracy"], abs=1e-9)
    finally:
        serve.shutdown()
