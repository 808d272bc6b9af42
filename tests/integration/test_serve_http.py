"""Real Ray Serve over real HTTP on 127.0.0.1: the Open Inference Protocol v2 surface of a served model."""

import json

import numpy as np
import pytest
import requests
import torch

from maas.compress import compress_model
from maas.exceptions import IntegrityError, RegistryError
from maas.models import build_model
from maas.models.artifacts import export_onnx
from maas.models.predictor import OnnxPredictor
from maas.registry import Registry
from maas.serve import VERSION_HEADER, deploy
from maas.models import classifier_signature
from maas.spec import DeploySpec
from tests.conftest import free_port

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def served(ray_session, tmp_path_factory):
    from ray import serve

    tmp = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    model = build_model({"arch": "mlp", "input_dim": 64, "num_classes": 10, "hidden_sizes": [32],
                         "dropout": 0.0, "mean": [8.0] * 64, "std": [4.0] * 64})
    onnx_path = export_onnx(model, 64, tmp / "model.onnx")
    (variant,) = compress_model(["int8_dynamic"], onnx_path, tmp)
    reg = Registry(str(tmp / "store"))
    mv = reg.publish("digits", variant.files, runtime="onnxruntime",
                     signature=classifier_signature(64, list(range(10))))
    reg.set_alias("digits", "production", mv.version)
    port = free_port()
    url = deploy(str(tmp / "store"), "digits@production", DeploySpec(port=port, max_request_bytes=64 * 1024))
    yield {"url": url, "registry": reg, "predictor": OnnxPredictor(variant.files["model.onnx"]), "tmp": tmp,
           "port": port}
    serve.shutdown()


def infer_body(rows, **extra):
    rows = np.asarray(rows, dtype=np.float32)
    return json.dumps({"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                                   "data": rows.ravel().tolist()}], **extra})


def test_health_and_metadata(served):
    url = served["url"]
    assert requests.get(f"{url}/v2/health/live").json() == {"live": True}
    assert requests.get(f"{url}/v2/health/ready").json() == {"ready": True}
    assert requests.get(f"{url}/v2").json()["name"] == "maas"
    meta = requests.get(f"{url}/v2/models/digits")
    assert meta.status_code == 200
    body = meta.json()
    assert body["name"] == "digits" and body["versions"] == ["1"] and body["platform"] == "onnxruntime"
    assert body["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert [o["name"] for o in body["outputs"]] == ["label", "probabilities"]
    assert requests.get(f"{url}/v2/models/digits/ready").json() == {"name": "digits", "ready": True}
    assert requests.get(f"{url}/v2/models/digits/versions/1").status_code == 200


def test_infer_matches_the_model_run_locally(served):
    rows = np.random.default_rng(0).uniform(0, 16, size=(20, 64)).astype(np.float32)
    r = requests.post(f"{served['url']}/v2/models/digits/infer", data=infer_body(rows, id="abc"))
    assert r.status_code == 200, r.text
    assert r.headers[VERSION_HEADER] == "digits/1"
    body = r.json()
    assert body["model_name"] == "digits" and body["model_version"] == "1" and body["id"] == "abc"
    out = {o["name"]: o for o in body["outputs"]}
    expected = served["predictor"](rows).argmax(1).tolist()
    assert out["label"]["data"] == expected and out["label"]["shape"] == [20]
    assert out["probabilities"]["shape"] == [20, 10]
    versioned = requests.post(f"{served['url']}/v2/models/digits/versions/1/infer",
                              data=infer_body(rows[:2], outputs=[{"name": "label"}]))
    assert [o["name"] for o in versioned.json()["outputs"]] == ["label"]


def test_concurrent_requests_are_batched_correctly(served):
    from concurrent.futures import ThreadPoolExecutor

    rows = np.random.default_rng(1).uniform(0, 16, size=(40, 64)).astype(np.float32)
    expected = served["predictor"](rows).argmax(1).tolist()

    def one(i):
        r = requests.post(f"{served['url']}/v2/models/digits/infer", data=infer_body(rows[i:i + 1]))
        return r.json()["outputs"][0]["data"][0]

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, range(40)))
    assert got == expected


@pytest.mark.parametrize("path,body,status,fragment", [
    ("/v2/models/digits/infer", "{broken", 400, "not valid JSON"),
    ("/v2/models/digits/infer", json.dumps({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32",
                                                       "data": [1, 2, 3]}]}), 400, "does not match"),
    ("/v2/models/digits/infer", json.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                                                       "data": [0] * 64}]}), 400, "takes 'input'"),
    ("/v2/models/digits/infer", json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                                       "data": ["x"] * 64}]}), 400, "only numbers"),
    ("/v2/models/other/infer", "{}", 404, "not served here"),
    ("/v2/models/digits/versions/7/infer", "{}", 404, "version '7'"),
    ("/v2/models/digits/infer", json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                                       "data": [0.5] * 64 * 400}]}), 413, "over the limit"),
])
def test_client_mistakes_get_json_4xx_and_the_server_stays_up(served, path, body, status, fragment):
    r = requests.post(served["url"] + path, data=body, headers={"Content-Type": "text/plain"})
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]
    ok = requests.post(f"{served['url']}/v2/models/digits/infer", data=infer_body(np.zeros((1, 64))))
    assert ok.status_code == 200


def test_a_chunked_body_over_the_limit_is_refused_while_it_streams(served):
    sent = []

    def chunks():  # no content-length: the limit must hold while reading, not after buffering it all
        for i in range(64):
            sent.append(i)
            yield b"[" + b"0.5," * 4000 + b"0.5]"

    r = requests.post(f"{served['url']}/v2/models/digits/infer", data=chunks(), timeout=30)
    assert r.status_code == 413 and "over the limit of 65536 bytes" in r.json()["error"]
    ok = requests.post(f"{served['url']}/v2/models/digits/infer", data=infer_body(np.zeros((1, 64))))
    assert ok.status_code == 200


def test_unknown_routes_and_wrong_methods_get_json_404_and_405(served):
    url = served["url"]
    for method, path, status in [("GET", "/v2/models/digits/infer", 405), ("POST", "/v2/health/ready", 405),
                                 ("DELETE", "/v2/models/digits", 405), ("GET", "/v3", 404),
                                 ("GET", "/v2/models/digits/versions/1/extra", 404), ("POST", "/", 404),
                                 ("GET", "/v2/models/digits/versions/\u00b2", 404),  # '²'.isdigit() is True
                                 ("GET", "/v2/models/digits/versions/\u00b2/ready", 404),
                                 ("GET", "/v2/models/digits/versions/" + "9" * 5000, 404)]:  # int() refuses it
        r = requests.request(method, url + path)
        assert r.status_code == status and "error" in r.json(), (method, path, r.status_code, r.text)
        if status == 405:
            assert r.headers["allow"] in ("GET", "POST")


def test_deploy_refuses_a_tampered_or_unknown_version(served):
    reg = served["registry"]
    mv = reg.publish("digits", {"model.onnx": served["tmp"] / "int8_dynamic" / "model.onnx"},
                     runtime="onnxruntime", signature=classifier_signature(64, list(range(10))))
    folder, _ = reg.fetch(mv.ref)
    data = bytearray((folder / "model.onnx").read_bytes())
    data[-5] ^= 0x01
    (folder / "model.onnx").write_bytes(bytes(data))
    port = int(served["url"].rsplit(":", 1)[1])
    with pytest.raises(IntegrityError, match="sha256"):
        deploy(reg.location, mv.ref, DeploySpec(port=port), app_name="tampered")
    with pytest.raises(RegistryError, match="no alias 'canary'"):
        deploy(reg.location, "digits@canary", DeploySpec(port=port), app_name="nope")
    # the healthy application is untouched
    assert requests.get(f"{served['url']}/v2/models/digits").json()["versions"] == ["1"]


def test_models_listing_and_request_ids(served):
    url = served["url"]
    assert requests.get(f"{url}/v2/models").json() == {"models": [
        {"name": "digits", "versions": ["1"], "ready": True, "platform": "onnxruntime", "target": "digits@production"}]}
    r = requests.post(f"{url}/v2/models/digits/infer", data=infer_body(np.zeros((2, 64))),
                      headers={"x-request-id": "trace-me-42"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-me-42"


def test_access_log_line_and_prometheus_metrics(served, ray_session):
    import glob
    import time

    from ray._private.worker import _global_node

    url = served["url"]
    rid = f"log-check-{np.random.default_rng().integers(1 << 30)}"
    requests.post(f"{url}/v2/models/digits/infer", data=infer_body(np.ones((3, 64))), headers={"x-request-id": rid})
    requests.post(f"{url}/v2/models/digits/infer", data="{bad", headers={"x-request-id": rid + "-bad"})
    logs = f"{_global_node.get_session_dir_path()}/logs/serve/replica_*.log"
    deadline, found = time.time() + 20, {}
    while time.time() < deadline and len(found) < 2:
        for path in glob.glob(logs):
            for line in open(path, errors="replace"):
                if '"maas_access": true' in line and rid in line:
                    entry = json.loads(line[line.index("{"):line.rindex("}") + 1])
                    found[entry["request_id"]] = entry
        time.sleep(0.5)
    assert found[rid]["status"] == 200 and found[rid]["rows"] == 3 and found[rid]["version"] == 1
    assert found[rid + "-bad"]["status"] == 400 and found[rid]["latency_ms"] > 0

    port = _global_node.metrics_export_port
    def counts_of(text):
        return [line for line in text.splitlines() if line.startswith("ray_maas_requests_total{")
                or line.startswith("maas_requests_total{")]

    # metrics reach the exporter on Ray's own schedule (slower on a loaded machine): wait for every series
    deadline, text, counts = time.time() + 90, "", []
    while time.time() < deadline and not ("maas_batch_size_bucket" in text
                                          and any('code="200"' in c for c in counts)
                                          and any('code="400"' in c for c in counts)):
        time.sleep(2)
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        counts = counts_of(text)
    assert any('code="200"' in c and 'model="digits"' in c for c in counts), text[-2000:]
    assert any('code="400"' in c for c in counts)
    assert "maas_batch_size_bucket" in text


def test_api_keys_guard_model_routes_but_not_health(served, monkeypatch, tmp_path):
    from ray import serve

    from maas.serve import build_app
    from maas.serve.auth import load_api_key_hashes

    keys = tmp_path / "keys"
    keys.write_text("# team keys\nkey-file-0123456789abcdef\n")
    monkeypatch.setenv("MAAS_API_KEYS", "key-env-0123456789abcdef")
    monkeypatch.setenv("MAAS_API_KEYS_FILE", str(keys))
    hashes = load_api_key_hashes()
    assert len(hashes) == 2 and "key-env" not in json.dumps(hashes)  # only digests leave this process
    serve.run(build_app(served["registry"].location, "digits/1", DeploySpec(), api_key_hashes=hashes),
              name="keyed", route_prefix="/keyed", blocking=False)
    base = f"{served['url']}/keyed"
    try:
        body = infer_body(np.zeros((1, 64)))
        assert requests.get(f"{base}/v2/health/ready").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": "key-env-0123456789abcdef"}):
            r = requests.post(f"{base}/v2/models/digits/infer", data=body, headers=headers)
            assert r.status_code == 401 and "API key" in r.json()["error"]
            assert r.headers["www-authenticate"] == "Bearer"
        assert requests.get(f"{base}/v2/models/digits").status_code == 401
        for key in ("key-env-0123456789abcdef", "key-file-0123456789abcdef"):
            r = requests.post(f"{base}/v2/models/digits/infer", data=body, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200
    finally:
        serve.delete("keyed")


def test_fuzzed_requests_never_get_a_5xx(served):
    """A seeded pass of malformed bodies, types, shapes and paths: every answer is < 500, server stays up."""
    import random

    rng = random.Random(1234)
    url = served["url"]
    valid = json.loads(infer_body(np.ones((2, 64))))
    junk = [None, True, -1, 0, 10 ** 400, 1e308, "x", "", [], {}, [[]], [None], {"a": 1}, "NaN", [1, "2"],
            -(2 ** 70), 3.5, [[1, 2], [3]], list(range(200))]

    def mutate() -> bytes:
        kind = rng.randrange(7)
        if kind == 0:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
        text = json.dumps(valid)
        if kind == 1:
            return text[: rng.randrange(len(text))].encode()
        body = json.loads(text)
        tensor = body["inputs"][0]
        if kind == 2:
            tensor[rng.choice(["name", "shape", "datatype", "data"])] = rng.choice(junk)
        elif kind == 3:
            tensor["shape"] = [rng.choice([-5, 0, 1, 2, 64, 10 ** 12]) for _ in range(rng.randrange(4))]
        elif kind == 4:
            body[rng.choice(["inputs", "outputs", "id", "parameters"])] = rng.choice(junk)
        elif kind == 5:
            tensor["data"] = [rng.choice(junk) for _ in range(128)]
        else:
            body = rng.choice(junk)
        return json.dumps(body).encode()

    paths = ["/v2/models/digits/infer", "/v2/models/digits/versions/1/infer", "/v2/models/digits/versions/x/infer",
             "/v2/models/%00/infer", "/v2/models/digits/infer/extra"]
    statuses = []
    for i in range(300):
        path = paths[0] if i % 5 else rng.choice(paths)
        r = requests.post(url + path, data=mutate(), timeout=30)
        statuses.append(r.status_code)
        assert r.status_code < 500, (path, r.status_code, r.text[:300])
    assert statuses.count(400) > 150  # the fuzzer mostly reached the parser, not just the router
    assert requests.post(f"{url}/v2/models/digits/infer", data=infer_body(np.zeros((1, 64)))).status_code == 200
