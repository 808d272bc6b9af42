"""Real Ray Serve over real HTTP on 127.0.0.1: the Open Inference Protocol v2 surface of a served model."""

import contextlib
import glob
import json
import os
import socket
import tempfile

import numpy as np
import pytest
import requests
import torch

from maas.compress import compress_model
from maas.exceptions import IntegrityError, RegistryError
from maas.models import build_model, classifier_signature
from maas.models.artifacts import export_onnx
from maas.models.predictor import OnnxPredictor
from maas.registry import Registry
from maas.serve import VERSION_HEADER, deploy
from maas.serve.deploy import stop_serve
from maas.spec import DeploySpec
from tests.conftest import free_port

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def served(ray_session, tmp_path_factory):
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
    port, grpc_port = free_port(), free_port()
    stop_serve()  # a Serve left by an earlier module keeps its ports: start one with these (gRPC's too)
    before = set(glob.glob(f"{tempfile.gettempdir()}/mh*"))
    with _taken(8500, 9500) as taken:  # Serve's fallback proxy ports, as another Serve on this machine holds them
        url = deploy(str(tmp / "store"), "digits@production",
                     DeploySpec(port=port, grpc_port=grpc_port, max_request_bytes=64 * 1024))
    (haproxy_folder,) = set(glob.glob(f"{tempfile.gettempdir()}/mh*")) - before  # this Serve's HAProxy files
    assert os.stat(haproxy_folder).st_mode & 0o777 == 0o700  # its admin socket can hand out listening sockets
    config = open(glob.glob(f"{haproxy_folder}/**/haproxy.cfg", recursive=True)[0]).read()
    fallback = {int(line.rsplit(":", 1)[1].split()[0]) for line in config.splitlines() if "fallback" in line
                and line.strip().startswith("server ")}
    assert len(fallback) == 2 and not fallback & taken  # the fallback proxy took other ports
    listeners = haproxy_listeners(haproxy_folder)  # HTTP, gRPC, stats, metrics: all on deploy.host
    assert ("127.0.0.1", port) in listeners and len(listeners) >= 4 and {h for h, _ in listeners} == {"127.0.0.1"}
    yield {"url": url, "registry": reg, "predictor": OnnxPredictor(variant.files["model.onnx"]), "tmp": tmp,
           "port": port, "grpc": f"127.0.0.1:{grpc_port}", "files": variant.files}
    stop_serve()
    assert not os.path.exists(haproxy_folder), "stop_serve left the HAProxy folder of its Serve"


@contextlib.contextmanager
def _taken(*ports: int):
    """Hold those of ``ports`` that are free (listening on every interface); yields the ones held."""
    held = []
    for p in ports:
        sock = socket.socket(socket.AF_INET6)
        try:
            sock.bind(("::", p))
            sock.listen()
            held.append(sock)
        except OSError:
            sock.close()
    try:
        yield {s.getsockname()[1] for s in held}
    finally:
        for s in held:
            s.close()


def haproxy_listeners(folder: str) -> set:
    """(address, port) of every TCP socket that the HAProxy processes of the Serve in ``folder`` listen on."""
    import psutil

    found = set()
    for proc in psutil.process_iter(["cmdline"]):
        if any(folder in arg for arg in proc.info["cmdline"] or []):
            try:
                found |= {(c.laddr.ip, c.laddr.port) for c in proc.net_connections("tcp")
                          if c.status == psutil.CONN_LISTEN}
            except psutil.NoSuchProcess:  # an HAProxy that a reload replaced, gone since it was listed
                continue
    return found


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
    deadline, found, serve_lines = time.time() + 20, {}, []
    while time.time() < deadline and len(found) < 2:
        for path in glob.glob(logs):
            for line in open(path, errors="replace"):
                if '"maas_access":true' in line and rid in line:
                    entry = json.loads(line[line.index("{"):line.rindex("}") + 1])
                    found[entry["request_id"]] = entry
                elif rid in line:  # Serve's own access line ("<request id> -- POST / 200 1.2ms"): off by
                    serve_lines.append(line)  # default (deploy.serve_access_log)
        time.sleep(0.5)
    assert found[rid]["status"] == 200 and found[rid]["rows"] == 3 and found[rid]["version"] == 1
    assert found[rid + "-bad"]["status"] == 400 and found[rid]["latency_ms"] > 0
    assert serve_lines == []

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
    from maas.serve.tenancy import load_api_key_hashes

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
        for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"},
                        {"Authorization": "key-env-0123456789abcdef"}):
            r = requests.post(f"{base}/v2/models/digits/infer", data=body, headers=headers)
            assert r.status_code == 401 and "API key" in r.json()["error"]
            assert r.headers["www-authenticate"] == "Bearer"
        assert requests.get(f"{base}/v2/models/digits").status_code == 401
        for key in ("key-env-0123456789abcdef", "key-file-0123456789abcdef"):
            r = requests.post(f"{base}/v2/models/digits/infer", data=body, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200
        # gRPC: the key travels as metadata; health stays open (two applications: name the one to call)
        grpcclient = pytest.importorskip("tritonclient.grpc")
        from tritonclient.utils import InferenceServerException

        client = grpcclient.InferenceServerClient(served["grpc"])
        inp = grpcclient.InferInput("input", [1, 64], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 64), np.float32))
        assert client.is_server_ready(headers={"application": "keyed"})
        for headers in ({}, {"authorization": "Bearer wrong-key-0123456789"}):
            with pytest.raises(InferenceServerException, match="API key") as err:
                client.infer("digits", [inp], headers={"application": "keyed", **headers})
            assert err.value.status() == "StatusCode.UNAUTHENTICATED"
        ok = client.infer("digits", [inp], headers={"application": "keyed",
                                                    "authorization": "Bearer key-file-0123456789abcdef"})
        assert ok.as_numpy("label").shape == (1,)
        client.close()
    finally:
        serve.delete("keyed")


def test_named_keys_hold_on_both_replicas_over_http_and_grpc_and_a_revoke_reaches_both_within_the_poll(
        served, tmp_path):
    """Named keys (``maas keys``) in the store of an app of 2 replicas: a key limited to one model is refused the
    other (403 over HTTP, PERMISSION_DENIED over gRPC) and lists only its own; a revoked key is refused by both
    replicas within their poll, under concurrent requests."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    from maas.serve import build_app
    from tests.waiting import wait_until

    reg = Registry(str(tmp_path / "store"))  # a store of its own: keys in it make its endpoints need one
    for name in ("digits", "iris"):
        reg.publish(name, served["files"], runtime="onnxruntime", signature=classifier_signature(64, list(range(10))))
    _, team_a = reg.keys.create("team-a", models=["digits"])
    _, team_b = reg.keys.create("team-b", requests_per_day=30)  # a UTC day: no window ends during the test
    serve.run(build_app(reg.location, ["digits/1", "iris/1"], DeploySpec(num_replicas=2, alias_poll_s=0.5),
                        api_key_hashes=[]), name="named", route_prefix="/named", blocking=False)
    base, body = f"{served['url']}/named", infer_body(np.zeros((1, 64)))

    def infer(model: str, key: str) -> int:
        return requests.post(f"{base}/v2/models/{model}/infer", data=body, timeout=30,
                             headers={"Authorization": f"Bearer {key}"}).status_code

    try:
        with ThreadPoolExecutor(8) as pool:  # concurrent, so both replicas answer
            assert set(pool.map(lambda _: infer("digits", team_a), range(40))) == {200}
            r = requests.post(f"{base}/v2/models/iris/infer", data=body, headers={"Authorization": f"Bearer {team_a}"})
            assert r.status_code == 403 and "API key 'team-a' may not call model 'iris'" in r.json()["error"]
            listed = requests.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {team_a}"}).json()
            assert [m["id"] for m in listed["data"]] == ["digits"]
            assert infer("digits", "maas-not-a-key-0123456789") == 401
            grpcclient = pytest.importorskip("tritonclient.grpc")
            from tritonclient.utils import InferenceServerException

            client = grpcclient.InferenceServerClient(served["grpc"])
            inp = grpcclient.InferInput("input", [1, 64], "FP32")
            inp.set_data_from_numpy(np.zeros((1, 64), np.float32))
            headers = {"application": "named", "authorization": f"Bearer {team_a}"}
            assert client.infer("digits", [inp], headers=headers).as_numpy("label").shape == (1,)
            with pytest.raises(InferenceServerException, match="may not call model 'iris'") as err:
                client.infer("iris", [inp], headers=headers)
            assert err.value.status() == "StatusCode.PERMISSION_DENIED"
            client.close()
            revoked, after = time.monotonic(), []

            def all_refused() -> bool:
                statuses = list(pool.map(lambda _: infer("digits", team_a), range(40)))
                after.extend(statuses)
                return set(statuses) == {401}

            reg.keys.revoke("team-a")
            # each replica re-reads the keys every 0.5 s, on its own clock: refused by both within about that
            wait_until(all_refused, 10, "revoke")
            took = time.monotonic() - revoked
            assert set(pool.map(lambda _: infer("digits", team_a), range(40))) == {401}  # and it stays refused
        assert took < 3, took
        # a limit holds across both replicas: of 80 concurrent requests 30 at most are admitted, at least 27 (a
        # replica may hold a lease of 2 unspent), the rest get 429 with Retry-After and the limit named
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: requests.post(f"{base}/v2/models/iris/infer", data=body, timeout=30,
                                                            headers={"Authorization": f"Bearer {team_b}"}),
                                    range(80)))
        admitted = [r for r in answers if r.status_code == 200]
        refused = [r for r in answers if r.status_code == 429]
        assert 27 <= len(admitted) <= 30 and len(admitted) + len(refused) == 80, [r.status_code for r in answers]
        assert "API key 'team-b' is over its limit of 30 requests per day" in refused[0].json()["error"]
        assert 0 < int(refused[0].headers["retry-after"]) <= 86_400
        client = grpcclient.InferenceServerClient(served["grpc"])
        with pytest.raises(InferenceServerException, match="over its limit") as err:
            client.infer("iris", [inp], headers={"application": "named", "authorization": f"Bearer {team_b}"})
        assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        client.close()
        # usage, metered by both replicas into the store, per key and model: what the clients counted
        from maas.registry.usage import totals

        ok = 41 + after.count(200)  # answered before the revoke reached their replica
        expected = [("team-a", "digits", ok, 0, ok), ("team-a", "iris", 2, 2, 0),
                    ("team-b", "iris", 81, len(refused) + 1, len(admitted))]

        def metered():
            return [(u.key, u.model, u.requests, u.errors, u.rows) for u in totals(reg.usage(), by=("key", "model"))
                    if u.key != "-"]

        assert wait_until(lambda: metered() == expected, 10, every_s=0.2), metered()
    finally:
        serve.delete("named")


def test_5000_requests_generated_from_the_openapi_document_never_get_a_5xx(served):
    """Every route the served /openapi.json documents, driven by a seeded generator: path parameters from
    good and hostile pools ('²', 5,000 digits, NUL, 300 characters), documented and wrong methods, bodies
    mutated from the document's examples (and a valid digits body) at any depth, truncated or random bytes,
    junk binary-extension headers. Every answer is < 500 and JSON; the server is ready and right afterwards."""
    import copy
    import random
    import threading
    from concurrent.futures import ThreadPoolExecutor

    rng = random.Random(20261127)
    url = served["url"]
    doc = requests.get(f"{url}/openapi.json", timeout=30).json()
    ops = [(method.upper(), path, op) for path, methods in doc["paths"].items() for method, op in methods.items()]
    admin = [o for o in ops if o[1].startswith("/maas/")]  # need an admin key: fuzzed in-process (test_keys)
    ops = [o for o in ops if o not in admin]
    assert len(ops) == 25 and len(admin) == 8  # OIP v2, OpenAI's inference routes, its Batch API's files and batches
    posts = [o for o in ops if o[0] == "POST"]
    names = ["digits", "digits", "digits", "digits", "nope", "%00", "a" * 300, "\u00b2", "..", "digits%2F1"]
    versions = ["1", "1", "2", "0", "\u00b2", "\u0661", "9" * 5000, "-1", "x", "1.0", "%20"]
    objects = ["file-0123456789abcdef01234567", "batch_0123456789abcdef01234567", "..", "%2E%2E%2Fetc", "a" * 300,
               "\u00b2", "file-", "%00"]
    junk = [None, True, -1, 0, 10 ** 400, -(2 ** 70), 1e308, 3.5, "x", "", "\u00b2", [], {}, [[]], [None],
            {"a": 1}, [1, "2"], list(range(70)), "y" * 5000, ["s"] * 20]
    digits = json.loads(infer_body(np.ones((2, 64))))

    def spots(x, at=()):
        yield at
        if isinstance(x, dict):
            for k, v in x.items():
                yield from spots(v, at + (k,))
        elif isinstance(x, list):
            for i, v in enumerate(x[:6]):
                yield from spots(v, at + (i,))

    def mutated(example):
        body = copy.deepcopy(example)
        for _ in range(rng.randrange(1, 3)):
            at = rng.choice(list(spots(body)))
            if not at:
                return copy.deepcopy(rng.choice(junk))
            parent = body
            for k in at[:-1]:
                parent = parent[k]
            if isinstance(parent, dict) and rng.random() < 0.2:
                parent.pop(at[-1], None)
            else:
                parent[at[-1]] = copy.deepcopy(rng.choice(junk))  # never a shared junk object
        return body

    def request():
        method, path, op = rng.choice(posts if rng.random() < 0.6 else ops)  # bodies reach the parsers
        if rng.random() < 0.08:
            method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH"])
        path = path.replace("{name}", rng.choice(names)).replace("{version}", rng.choice(versions))
        path = path.replace("{file_id}", rng.choice(objects)).replace("{batch_id}", rng.choice(objects))
        headers, data = {}, None
        if "requestBody" in op or method == "POST":
            example = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("example", {})
            if "/infer" in path and rng.random() < 0.5:
                example = digits
            kind = rng.random()
            if kind < 0.1:
                data = bytes(rng.randrange(256) for _ in range(rng.randrange(300)))
            elif kind < 0.2:
                text = json.dumps(example)
                data = text[:rng.randrange(len(text) + 1)].encode()
            else:
                data = json.dumps(example if kind < 0.3 else mutated(example)).encode()
            if rng.random() < 0.1:
                headers["Inference-Header-Content-Length"] = rng.choice(
                    ["0", "5", str(len(data)), str(len(data) + 1), "-3", "\u00b2", "9" * 40, "x"])
        return method, path, headers, data

    plan = [request() for _ in range(5000)]
    local = threading.local()

    def send(item):
        method, path, headers, data = item
        if not hasattr(local, "session"):
            local.session = requests.Session()
        r = local.session.request(method, url + path, data=data, headers=headers, timeout=60)
        ok_shape = r.headers.get("content-type", "").startswith(("application/json", "application/octet-stream"))
        return r.status_code, ok_shape, (method, path[:80], headers, (data or b"")[:120], r.text[:200])

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, plan))
    server_errors = [a[2] for a in answers if a[0] >= 500]
    assert not server_errors, server_errors[:3]
    assert all(a[1] for a in answers), [a[2] for a in answers if not a[1]][:3]
    statuses = [a[0] for a in answers]
    seen = {code: statuses.count(code) for code in set(statuses)}
    assert seen[400] > 1500 and seen[200] > 300 and seen[404] > 300 and seen[405] > 50, seen
    assert requests.get(f"{url}/v2/health/ready", timeout=30).status_code == 200
    rows = np.random.default_rng(5).normal(8, 4, size=(3, 64)).astype(np.float32)
    r = requests.post(f"{url}/v2/models/digits/infer", data=infer_body(rows), timeout=30)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == served["predictor"](rows).argmax(1).tolist()


def test_tritonclient_with_its_defaults_runs_metadata_and_binary_infer(served):
    """The official OIP client as users run it: binary tensor data in and out (its defaults), metadata and
    readiness; the answers equal the model's own, and the JSON path answers the same request the same way."""
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url=served["url"].removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata("digits")
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 64]}
    rows = np.random.default_rng(7).normal(8, 4, size=(5, 64)).astype(np.float32)
    inp = httpclient.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)  # binary_data=True by default
    result = client.infer("digits", [inp], outputs=[httpclient.InferRequestedOutput("label"),
                                                     httpclient.InferRequestedOutput("probabilities")])
    want = served["predictor"](rows)
    assert result.as_numpy("label").tolist() == want.argmax(1).tolist()
    probs = result.as_numpy("probabilities")
    assert probs.shape == (5, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    as_json = requests.post(f"{served['url']}/v2/models/digits/infer", data=infer_body(rows)).json()
    assert np.allclose(np.array(as_json["outputs"][1]["data"]).reshape(5, 10), probs, atol=1e-6)
    everything = client.infer("digits", [inp])  # no outputs named: the client asks all of them in binary
    assert everything.as_numpy("label").tolist() == want.argmax(1).tolist()
    # a client mistake through the binary path is a 400 with the protocol's error, not a 500
    bad = httpclient.InferInput("input", [5, 63], "FP32")
    bad.set_data_from_numpy(rows[:, :63].copy())
    with pytest.raises(InferenceServerException, match="does not match the model's"):
        client.infer("digits", [bad])
    client.close()


def test_tritonclient_grpc_runs_health_metadata_and_infer(served):
    """OIP over gRPC through Serve's gRPC proxy, with the official client's defaults (raw tensor contents):
    the same answers as REST; client mistakes are gRPC status codes, and the server keeps serving."""
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(served["grpc"])
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    assert "binary_tensor_data" in client.get_server_metadata(as_json=True)["extensions"]
    meta = client.get_model_metadata("digits", as_json=True)
    assert meta["versions"] == ["1"] and meta["inputs"][0] == {"name": "input", "datatype": "FP32",
                                                              "shape": ["-1", "64"]}
    rows = np.random.default_rng(11).normal(8, 4, size=(6, 64)).astype(np.float32)
    inp = grpcclient.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    result = client.infer("digits", [inp], request_id="grpc-1")
    assert result.as_numpy("label").tolist() == served["predictor"](rows).argmax(1).tolist()
    rest = requests.post(f"{served['url']}/v2/models/digits/infer", data=infer_body(rows)).json()
    assert np.allclose(result.as_numpy("probabilities").ravel(), rest["outputs"][1]["data"], atol=1e-6)
    response = result.get_response()
    assert (response.id, response.model_version) == ("grpc-1", "1")
    only = client.infer("digits", [inp], outputs=[grpcclient.InferRequestedOutput("label")])
    assert [o.name for o in only.get_response().outputs] == ["label"]

    bad = grpcclient.InferInput("input", [6, 63], "FP32")
    bad.set_data_from_numpy(rows[:, :63].copy())
    cases = [(lambda: client.infer("digits", [bad]), "INVALID_ARGUMENT", "does not match the model's"),
             (lambda: client.infer("nope", [inp]), "NOT_FOUND", "not served here"),
             (lambda: client.infer("digits", [inp], model_version="7"), "NOT_FOUND", "version"),
             (lambda: client.get_model_metadata("digits", model_version="²"), "NOT_FOUND", "versions are numbers"),
             (lambda: client.is_model_ready("nope"), "NOT_FOUND", "not served here")]
    for call, code, fragment in cases:
        with pytest.raises(InferenceServerException, match=fragment) as err:
            call()
        assert err.value.status() == f"StatusCode.{code}"
    big = grpcclient.InferInput("input", [300, 64], "FP32")  # 76.8 KB: over the deploy's 64 KiB limit
    big.set_data_from_numpy(np.zeros((300, 64), np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("digits", [big])
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.is_server_ready()
    client.close()

    # typed contents instead of raw bytes (other OIP clients send them), through a plain stub
    import grpc

    from maas.serve.protocols.oip import proto

    request = proto.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="input", datatype="FP64", shape=[6, 64])
    tensor.contents.fp64_contents.extend(rows.astype(np.float64).ravel().tolist())
    with grpc.insecure_channel(served["grpc"]) as channel:
        answer = proto.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert np.frombuffer(answer.raw_output_contents[0], "<i8").tolist() == served["predictor"](rows).argmax(1).tolist()


def test_a_compressed_grpc_message_is_refused_as_it_inflates_not_after(served):
    """~32 KiB of gzip that inflates to 32 MiB: the transport refuses it at its limit (4 MiB here), before the
    message is in memory and before any key is looked at (Serve's default limit was 2 GiB: the message was
    inflated whole, then refused by maas's own size check)."""
    import grpc

    from maas.serve.protocols.oip import proto

    request = proto.ModelInferRequest(model_name="digits")
    request.inputs.add(name="input", datatype="FP32", shape=[131072, 64])
    request.raw_input_contents.append(bytes(32 * 1024 * 1024))
    with grpc.insecure_channel(served["grpc"], options=[("grpc.max_send_message_length", -1)]) as channel:
        stub = proto.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request, timeout=60, compression=grpc.Compression.Gzip)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in err.value.details() and "over the limit" not in err.value.details()
        assert stub.ServerReady(proto.message("ServerReadyRequest")(), timeout=30).ready


def test_1500_generated_grpc_calls_never_get_a_server_fault(served):
    """The OIP gRPC service, driven by a seeded generator: every RPC with hostile names and versions; tensors
    with wrong or unknown datatypes, shapes numpy cannot make, raw contents of the wrong length, typed contents
    in the wrong field; random bytes and truncated messages that do not parse; gzip; messages that inflate
    past the transport's limit; keys that are not keys. No answer is a server fault (INTERNAL, UNKNOWN,
    DATA_LOSS, UNAVAILABLE); the server is ready and right afterwards."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from maas.serve.protocols.oip import proto

    rng = random.Random(20261205)
    names = ["digits"] * 4 + ["nope", "", "a" * 300, "\x00", "\u00b2"]
    versions = ["", "", "1", "2", "0", "\u00b2", "9" * 5000, "-1"]
    datatypes = ["FP32"] * 4 + ["FP64", "INT8", "UINT64", "BOOL", "BYTES", "FP16", "X", ""]
    shapes = [[2, 64], [2, 64], [1, 64], [0, 64], [2 ** 62, 4, 0], [1] * 65, [], [-1, 64], [64], [3, 63]]
    fields = ["fp32_contents", "fp64_contents", "int_contents", "bytes_contents", "bool_contents"]

    def infer_request():
        req = proto.ModelInferRequest(model_name=rng.choice(names), model_version=rng.choice(versions))
        raw = rng.random() < 0.7
        for _ in range(rng.choice([0, 1, 1, 1, 2])):
            shape = rng.choice(shapes)
            t = req.inputs.add(name=rng.choice(["input", "input", "x", ""]), datatype=rng.choice(datatypes),
                               shape=shape)
            if raw:
                n = max(0, min(int(np.prod(shape, dtype=np.float64)) * 4, 4096)) if rng.random() < 0.7 \
                    else rng.randrange(0, 600)
                req.raw_input_contents.append(rng.randbytes(n) if rng.random() < 0.3 else bytes(n))
            else:
                field = rng.choice(fields)
                getattr(t.contents, field).extend([b"x"] * 3 if field == "bytes_contents" else
                                                  [True] * 3 if field == "bool_contents" else
                                                  [1] * rng.randrange(0, 140))
        return req

    def plan_one():
        rpc = "ModelInfer" if rng.random() < 0.6 else rng.choice(list(proto.METHODS))
        if rpc == "ModelInfer":
            message = infer_request()
        else:
            cls = proto.message(proto.METHODS[rpc][0])
            message = cls(**{k: rng.choice(names if k == "name" else versions)
                             for k in ("name", "version") if k in cls.DESCRIPTOR.fields_by_name})
        data = message.SerializeToString()
        kind = rng.random()
        if kind < 0.1:
            data = rng.randbytes(rng.randrange(1, 300))
        elif kind < 0.2 and data:
            data = data[:rng.randrange(len(data))]
        metadata = [("authorization", rng.choice(["Bearer nope", "Basic x", "", "Bearer " + "k" * 500]))] \
            if rng.random() < 0.2 else []
        return rpc, data, rng.random() < 0.2, metadata

    plan = [plan_one() for _ in range(1500)]
    bomb = proto.ModelInferRequest(model_name="digits")  # inflates to 8 MiB, past the 4 MiB transport limit
    bomb.inputs.add(name="input", datatype="FP32", shape=[32768, 64])
    bomb.raw_input_contents.append(bytes(8 * 1024 * 1024))
    plan += [("ModelInfer", bomb.SerializeToString(), True, [])] * 5
    faults = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS,
              grpc.StatusCode.UNAVAILABLE}
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(served["grpc"], options=options) as channel:
        calls = {rpc: channel.unary_unary(f"/{proto.SERVICE}/{rpc}") for rpc in proto.METHODS}

        def send(item):
            rpc, data, gzip, metadata = item
            try:
                calls[rpc](data, timeout=60, metadata=metadata,
                           compression=grpc.Compression.Gzip if gzip else None)
                return grpc.StatusCode.OK, item
            except grpc.RpcError as err:
                return err.code(), (rpc, data[:100], gzip, metadata, err.details()[:200])

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, plan))
        bad = [a[1] for a in answers if a[0] in faults]
        assert not bad, bad[:3]
        seen = {}
        for code, _ in answers:
            seen[code.name] = seen.get(code.name, 0) + 1
        assert seen["INVALID_ARGUMENT"] > 300 and seen["OK"] > 100 and seen["NOT_FOUND"] > 50, seen
        assert seen["RESOURCE_EXHAUSTED"] >= 5, seen
        stub = proto.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(proto.message("ServerReadyRequest")(), timeout=30).ready
        rows = np.random.default_rng(5).normal(8, 4, size=(3, 64)).astype(np.float32)
        request = proto.ModelInferRequest(model_name="digits")
        request.inputs.add(name="input", datatype="FP32", shape=[3, 64])
        request.raw_input_contents.append(rows.astype("<f4").tobytes())
        answer = stub.ModelInfer(request, timeout=30)
        assert np.frombuffer(answer.raw_output_contents[0], "<i8").tolist() == \
            served["predictor"](rows).argmax(1).tolist()


def test_kserve_rest_and_grpc_clients_with_their_defaults(served):
    """KServe's InferenceRESTClient (binary tensor data) and InferenceGRPCClient, as users run them: ready,
    infer; the labels equal the model's own. In a process of its own (see the script)."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    if importlib.util.find_spec("kserve") is None:
        pytest.skip("kserve not installed: pip install --no-deps -r tests/kserve-client.txt (make setup does)")
    rows = np.random.default_rng(13).normal(8, 4, size=(3, 64)).astype(np.float32)
    script = Path(__file__).parent / "scripts" / "kserve_clients.py"
    proc = subprocess.run([sys.executable, str(script), served["url"], served["grpc"], "digits",
                           json.dumps(rows.tolist())], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = json.loads(proc.stdout.strip().splitlines()[-1])
    want = served["predictor"](rows).argmax(1).tolist()
    for protocol in ("rest", "grpc"):
        got = answers[protocol]
        assert got["live"] and got["ready"] and got["model_ready"], (protocol, got)
        assert got["labels"] == want and got["outputs"] == ["label", "probabilities"], (protocol, got)
