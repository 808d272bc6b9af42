"""The `maas` command as a user runs it: each call a fresh process with its own embedded Ray."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow
MAAS = str(Path(sys.executable).parent / "maas")
SPEC = str(ROOT / "examples" / "digits.yaml")


def _env():
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def maas(*args, cwd, timeout=600):
    return subprocess.run([MAAS, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _wait_for_line(proc, needle, timeout):
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if needle in line:
            # drained from here on: a pipe nobody reads fills (64 KiB) and blocks the process that writes it
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return "".join(lines)
    raise AssertionError(f"never saw {needle!r}; output:\n{''.join(lines)}")


def _stop(proc):
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def _official_clients_agree(port: int, grpc_port: int) -> None:
    """tritonclient over HTTP (binary tensors) and over gRPC, with their defaults: metadata and infer, one
    answer."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    rows = np.random.default_rng(3).uniform(0, 16, size=(4, 64)).astype(np.float32)
    labels = []
    for module, url in ((httpclient, f"127.0.0.1:{port}"), (grpcclient, f"127.0.0.1:{grpc_port}")):
        client = module.InferenceServerClient(url)
        assert client.is_server_ready() and client.is_model_ready("digits")
        meta = client.get_model_metadata("digits", **({"as_json": True} if module is grpcclient else {}))
        assert meta["name"] == "digits" and meta["inputs"][0]["name"] == "input"
        inp = module.InferInput("input", [4, 64], "FP32")
        inp.set_data_from_numpy(rows)
        labels.append(client.infer("digits", [inp]).as_numpy("label").tolist())
        client.close()
    assert labels[0] == labels[1] and len(labels[0]) == 4


def test_run_serves_until_ctrl_c_then_models_list_and_show(tmp_path):
    port, grpc_port = free_port(), free_port()
    env = _env()
    env.pop("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", None)  # maas's own choice for its embedded Ray
    # select=smallest: the int8 pick does not hang on a throughput race between two runtimes on a busy machine
    proc = subprocess.Popen([MAAS, "run", SPEC, f"deploy.port={port}", f"deploy.grpc_port={grpc_port}",
                             "train.epochs=8", "compress.select=smallest", "--json", "result.json"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = _wait_for_line(proc, "serving until Ctrl-C", timeout=400)
        assert "embedded local Ray" in out
        for needle in ("test acc", "fp32", "int8_dynamic", "production -> digits/", "rows/s @64"):
            assert needle in out
        curl = next(line.strip() for line in out.splitlines() if line.strip().startswith("curl "))
        # run the printed curl command itself: it must work as shown
        reply = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=30)
        assert json.loads(reply.stdout)["outputs"][0]["name"] == "label"
        assert requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5).json() == {"ready": True}
        _official_clients_agree(port, grpc_port)
    finally:
        stopping = time.monotonic()
        code = _stop(proc)
        stop_s = time.monotonic() - stopping
    assert code == 0
    assert stop_s < 25, f"Ctrl-C took {stop_s:.0f} s: Ray's 30 s drain window for a cluster's load balancers"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=5)

    result = json.loads((tmp_path / "result.json").read_text())
    assert result["data_counts"]["rows_in"] == 1797
    assert (tmp_path / "data" / "digits.parquet").is_file() and (tmp_path / ".maas" / "models" / "digits").is_dir()
    fp32, int8 = result["variants"]
    assert fp32["method"] == "fp32" and int8["method"] == "int8_dynamic"
    assert fp32["metrics"]["test_accuracy"] >= 0.95 and int8["ref"] == "digits/2"
    assert int8["metrics"]["size_bytes"] < fp32["metrics"]["size_bytes"] / 2
    # the gate (int8 within 1 point of fp32) decides; 8 epochs usually pass, once it dropped 3 of 267 test digits
    drop = fp32["metrics"]["test_accuracy"] - int8["metrics"]["test_accuracy"]
    assert int8["passed"] == (drop <= 0.01) and result["promoted_ref"] == (int8 if int8["passed"] else fp32)["ref"]
    from maas.registry import Registry

    reg = Registry(str(tmp_path / ".maas"))
    parent, child = reg.get_version("digits", 1), reg.resolve("digits@production")
    for mv in (parent, child):  # lineage: the same data, spec and run behind both versions
        assert mv.lineage["data_fingerprint"] == result["data_fingerprint"]
        assert mv.lineage["spec_hash"] == result["spec_hash"] and mv.lineage["run_id"] == result["run_id"]
    assert set(parent.files) == {"model.safetensors", "model.json", "model.onnx"}
    assert child.ref == result["promoted_ref"] and child.status == "ready"
    assert reg.get_version("digits", 2).lineage["gate"]["passed"] is int8["passed"]

    listing = maas("models", "list", cwd=tmp_path)
    assert listing.returncode == 0
    assert "digits/1" in listing.stdout and "digits/2" in listing.stdout and "production" in listing.stdout
    shown = maas("models", "show", "digits@production", cwd=tmp_path)
    assert shown.stdout.startswith(f"{child.ref}  ready  (production)") and "test_accuracy" in shown.stdout
    shown = maas("models", "show", "digits@production", "--json", cwd=tmp_path)
    manifest = json.loads(shown.stdout)
    assert manifest["name"] == "digits" and manifest["aliases"] == ["production"]
    if int8["passed"]:  # the int8 child: ONNX Runtime, its parent named
        assert manifest["runtime"] == "onnxruntime" and manifest["lineage"]["parent"] == "digits/1"

    report = maas("data", "report", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "1797 rows in -> 1797 ok, 0 rejected, 0 dropped" in report.stdout
    assert "pixel_0_5" in report.stdout and "target" in report.stdout  # per-column statistics
    schema = maas("data", "schema", SPEC, cwd=tmp_path)
    assert schema.returncode == 0, schema.stderr
    pinned = yaml.safe_load(schema.stdout)["columns"]
    assert pinned["pixel_0_5"] == {"type": "float", "nullable": False} and pinned["target"]["type"] == "int"


def test_llm_example_serves_with_its_defaults_though_its_engine_takes_over_a_minute(tmp_path):
    """`maas run examples/llm.yaml` as a new user runs it (gRPC on, as the example has it), its engine's start
    held to at least 65 s (MAAS_ENGINE_START_DELAY_S; ~35-55 s here by itself): maas waits on its own clock past
    Serve's fixed 60 s, says what the engine is doing meanwhile, and serves; the official openai client streams
    an answer through the port the example names; Ctrl-C stops it all."""
    openai = pytest.importorskip("openai")
    port, grpc_port = free_port(), free_port()
    env = _env()
    env["MAAS_ENGINE_START_DELAY_S"] = "65"
    proc = subprocess.Popen([MAAS, "run", str(ROOT / "examples" / "llm.yaml"), f"deploy.port={port}",
                             f"deploy.grpc_port={grpc_port}", "--json", "result.json"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = _wait_for_line(proc, "serving until Ctrl-C", timeout=480)
        assert "tiny-llama/1 is starting its vLLM engine: loading" in out, out
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=60)
        chunks = list(client.chat.completions.create(model="tiny-llama", max_tokens=6, stream=True,
                                                     messages=[{"role": "user", "content": "w1 w2"}]))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    finally:
        code = _stop(proc)
    assert code == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["ref"] == "tiny-llama/1" and result["smoke"]["completion_tokens"] > 0
    assert result["stage_seconds"]["serve"] > 60, result["stage_seconds"]  # longer than Serve's own wait


def test_user_errors_exit_2_with_a_message_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {path: x.parquet, label: y}\nmodel: {name: m}\ntrian: {epochs: 2}\n")
    r = maas("validate", str(bad), cwd=tmp_path)
    assert r.returncode == 2 and "trian: unknown key; did you mean 'train'?" in r.stdout
    assert maas("validate", SPEC, cwd=tmp_path).returncode == 0

    r = maas("run", SPEC, "data.bootstrap=null", "data.path=missing.parquet", "--no-serve", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "error: data.path: " in r.stderr and "does not exist" in r.stderr and "Traceback" not in r.stderr
    assert "embedded local Ray" not in r.stdout  # refused before a Ray started

    r = maas("models", "show", "ghost@production", cwd=tmp_path)  # no store here or above: said so
    assert r.returncode == 2 and "no registry at" in r.stderr and "MAAS_STORE" in r.stderr
    (tmp_path / ".maas").mkdir()
    r = maas("models", "show", "ghost@production", cwd=tmp_path)
    assert r.returncode == 2 and "no model named 'ghost'" in r.stderr and "Traceback" not in r.stderr


def test_serve_command_serves_a_registered_version(tmp_path):
    from maas.compress import compress_model
    from maas.models import build_model, classifier_signature
    from maas.models.artifacts import export_onnx
    from maas.registry import Registry

    model = build_model({"arch": "mlp", "input_dim": 4, "num_classes": 2, "hidden_sizes": [8], "dropout": 0.0})
    (variant,) = compress_model(["int8_dynamic"], export_onnx(model, 4, tmp_path / "m.onnx"), tmp_path)
    reg = Registry(str(tmp_path / "store"))
    for _ in range(2):
        reg.publish("tiny", variant.files, runtime="onnxruntime", signature=classifier_signature(4, ["no", "yes"]))
    reg.set_alias("tiny", "production", 1)
    port = free_port()
    proc = subprocess.Popen([MAAS, "serve", "tiny@production", "--store", "store", "--port", str(port)],
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_line(proc, "Ctrl-C stops", timeout=180)
        body = {"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP64",
                            "data": [[0, 1, 2, 3], [3, 2, 1, 0]]}]}
        url = f"http://127.0.0.1:{port}/v2/models/tiny/infer"
        r = requests.post(url, json=body, timeout=30)
        assert r.status_code == 200 and r.headers["x-maas-model-version"] == "tiny/1"
        label = r.json()["outputs"][0]
        assert label["datatype"] == "BYTES" and set(label["data"]) <= {"no", "yes"} and label["shape"] == [2]

        moved = maas("models", "alias", "tiny", "production", "2", "--store", "store", cwd=tmp_path)
        assert moved.returncode == 0 and "tiny@production: 1 -> 2" in moved.stdout, moved.stderr
        deadline = time.time() + 30
        while requests.post(url, json=body, timeout=30).headers["x-maas-model-version"] != "tiny/2":
            assert time.time() < deadline, "the served version never followed the alias"
            time.sleep(0.5)
        refused = maas("models", "alias", "tiny", "production", "9", "--store", "store", cwd=tmp_path)
        assert refused.returncode == 2 and "no version 9" in refused.stderr
    finally:
        assert _stop(proc) == 0


def test_plain_serve_cli_runs_the_serve_app_config(tmp_path):
    import yaml

    from maas.compress import compress_model
    from maas.models import build_model, classifier_signature
    from maas.models.artifacts import export_onnx
    from maas.registry import Registry

    model = build_model({"arch": "mlp", "input_dim": 4, "num_classes": 3, "hidden_sizes": [8], "dropout": 0.0})
    (variant,) = compress_model(["int8_dynamic"], export_onnx(model, 4, tmp_path / "m.onnx"), tmp_path)
    reg = Registry(str(tmp_path / "store"))
    mv = reg.publish("tiny", variant.files, runtime="onnxruntime", signature=classifier_signature(4, [0, 1, 2]))
    reg.set_alias("tiny", "production", mv.version)

    config = yaml.safe_load((ROOT / "serve_apps" / "digits.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    config["grpc_options"]["port"] = grpc_port = free_port()
    from maas.serve.deploy import haproxy_instance_env  # HAProxy's own files and ports, beside any other Serve

    haproxy_env = haproxy_instance_env()
    config["controller_options"]["runtime_env"]["env_vars"].update(haproxy_env)
    config["applications"][0]["args"] = {"model": "tiny", "alias": "production", "store": str(tmp_path / "store")}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
    # its output to a file: `serve run` streams every Ray worker's log lines, and a pipe nobody reads while
    # the test waits fills (64 KiB) and blocks it mid-start (CI's "not ready in time", once)
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "serve"), "run", str(tmp_path / "serve.yaml")],
                            cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, ok = time.time() + 180, False
        while time.time() < deadline and proc.poll() is None:
            try:
                ok = requests.get(f"http://127.0.0.1:{port}/v2/models/tiny/ready", timeout=5).status_code == 200
            except requests.RequestException:  # not listening yet, or the app is still starting
                pass
            if ok:
                break
            time.sleep(1)
        assert ok, f"{'exited' if proc.poll() is not None else 'not ready in 180 s'}:\n" \
                   f"{(tmp_path / 'serve.log').read_text()[-6000:]}"
        body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        r = requests.post(f"http://127.0.0.1:{port}/v2/models/tiny/infer", json=body, timeout=30)
        assert r.status_code == 200 and r.headers["x-maas-model-version"] == "tiny/1"
        import grpc

        from maas.serve.protocols.oip import proto

        request = proto.ModelInferRequest(model_name="tiny")
        request.inputs.add(name="input", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1, 2, 3, 4])
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:  # the config's gRPC proxy
            answer = proto.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        assert answer.model_version == "1" and [o.name for o in answer.outputs] == ["label", "probabilities"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        _end_haproxies(Path(haproxy_env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]).parent)


def _end_haproxies(folder: Path) -> None:
    """End the HAProxy processes of this test's Serve instance (their config lies in ``folder``): `serve run`
    stopped by Ctrl-C once left the HAProxy its manager had started on a reload running, orphaned, holding its
    ports for the tests after it. Then remove the folder."""
    import shutil

    for pid in [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if "haproxy" in cmdline and str(folder) in cmdline:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    shutil.rmtree(folder, ignore_errors=True)
