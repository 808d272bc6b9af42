"""Every stage as a Ray job on a real head: the plain `ray` CLI, the maas SDK and the maas CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from maas.registry import Registry
from maas.submit import Client, progress_event
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
SPEC = str(ROOT / "examples" / "digits.yaml")


def _env(**extra):
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def maas(*args, env=None, timeout=300):
    return subprocess.run([str(BIN / "maas"), *args], capture_output=True, text=True, timeout=timeout,
                          env=env or _env())


def test_plain_ray_job_submit_runs_the_pipeline_without_maas_installed(ray_head, tmp_path):
    store, data = tmp_path / "store", tmp_path / "digits.parquet"
    r = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", ray_head["address"], "--working-dir",
                        str(ROOT), "--", "python", "-m", "jobs.pipeline", "--spec", "examples/digits.yaml",
                        f"store={store}", f"data.path={data}", "train.epochs=4"],
                       capture_output=True, text=True, timeout=600,
                       env=_env(RAY_AUTH_MODE="token"))  # Ray's own CLI sends the token only when told to
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(next(line for line in r.stdout.splitlines() if line.startswith('{"maas_result"')))
    assert result["status"] == "succeeded" and result["promoted"].startswith("digits/")
    assert [v.version for v in Registry(str(store)).list_versions("digits")] == [1, 2]


def test_sdk_runs_each_stage_as_its_own_job(ray_head, tmp_path):
    client = Client(ray_head["address"])
    overrides = [f"store={tmp_path / 'store'}", f"data.path={tmp_path / 'digits.parquet'}", "train.epochs=4",
                 f"deploy.port={free_port()}"]
    pre = client.submit(SPEC, overrides, stage="preprocess").result(timeout=300)
    assert pre["status"] == "succeeded" and pre["data_counts"]["rows_in"] == 1797

    train_job = client.submit(SPEC, overrides, stage="train", args=["--run-id", pre["run_id"]])
    trained = train_job.result(timeout=300)
    assert trained["status"] == "succeeded" and trained["version"] == "digits/1" and trained["run_id"] == pre["run_id"]
    assert len(trained["history"]) == 4
    assert "[train] epoch 4/4 (100%)" in train_job.logs()  # progress shows in the job log
    epochs = [e for e in map(progress_event, train_job.logs().splitlines()) if e and "epoch" in e]
    assert [(e["epoch"], e["epochs"]) for e in epochs] == [(1, 4), (2, 4), (3, 4), (4, 4)]  # the real loop's lines
    assert all(e["loss"] > 0 and 0 <= e["val_accuracy"] <= 1 for e in epochs)

    comp = client.submit(SPEC, overrides, stage="compress", args=["--parent", "digits/1"]).result(timeout=300)
    assert comp["status"] == "succeeded" and comp["variants"][0]["ref"] == "digits/2"
    assert comp["promoted"] in ("digits/1", "digits/2")

    dep = client.submit(SPEC, overrides, stage="deploy").result(timeout=300)
    assert dep["status"] == "succeeded"
    meta = requests.get(f"{dep['endpoint']}/v2/models/digits", timeout=10).json()
    assert meta["versions"] == [comp["promoted"].split("/")[1]]
    ids = [j["id"] for j in client.jobs()]
    assert train_job.id in ids
    lineage = Registry(str(tmp_path / "store")).get_version("digits", 2).lineage
    assert lineage["parent"] == "digits/1" and lineage["run_id"] == pre["run_id"]


def test_failed_job_keeps_its_error_and_logs(ray_head, tmp_path):
    client = Client(ray_head["address"])
    r = maas("submit", SPEC, "--async", "--stage", "preprocess", "--address", ray_head["address"],
             f"store={tmp_path}", f"data.path={tmp_path / 'missing.parquet'}", "data.bootstrap=null")
    assert r.returncode == 0 and "maas stop " in r.stdout, r.stdout + r.stderr
    job = client.job(r.stdout.split()[1])  # "submitted <id> to ..."
    assert job.wait(timeout=300) == "FAILED"
    result = job.result()
    assert result["status"] == "failed" and "data.path" in result["error"] and "does not exist" in result["error"]
    assert "error: data.path" in job.logs()
    status = maas("status", job.id, "--address", ray_head["address"])
    assert status.returncode == 0 and "FAILED" in status.stdout and "does not exist" in status.stdout


def test_cli_follow_detach_then_stop_leaves_no_training_actors(ray_head, tmp_path):
    address = ray_head["address"]
    proc = subprocess.Popen([str(BIN / "maas"), "submit", SPEC, "--address", address, f"store={tmp_path}",
                             f"data.path={tmp_path / 'd.parquet'}", "train.epochs=2000"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    lines, deadline = [], time.time() + 300
    while time.time() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "[train] epoch 2/" in line or (not line and proc.poll() is not None):
            break
    assert any("[train] epoch" in line for line in lines), "".join(lines)
    job_id = next(line.split()[1] for line in lines if line.startswith("submitted "))
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    assert "detached" in out and f"maas stop {job_id}" in out and f"maas logs {job_id} --follow" in out

    listed = maas("jobs", "--address", address)
    assert job_id in listed.stdout and "RUNNING" in listed.stdout
    stopped = maas("stop", job_id, "--address", address)
    assert stopped.returncode == 0 and f"{job_id} STOPPED" in stopped.stdout

    client = Client(address)

    def training_actors():
        return [a for a in client.actors("ALIVE") if a["class_name"] in ("RayTrainWorker", "TrainController")]

    deadline = time.time() + 60
    while training_actors() and time.time() < deadline:
        time.sleep(1)
    assert training_actors() == []
    assert "[train] epoch" in maas("logs", job_id, "--address", address).stdout  # logs outlive the job


def test_a_private_head_is_started_without_ray_s_shutdown_drain(ray_head):
    """Ray 2.60 drains a head's node for 30 s on SIGTERM (for load balancers in front of Serve); a head maas
    starts for itself has none, and the drain held every embedded `maas submit` 30 s past its job's end."""
    environ = Path(f"/proc/{ray_head['pid']}/environ").read_bytes().split(b"\0")
    assert b"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0" in environ


def test_missing_or_wrong_token_says_what_to_do(ray_head, tmp_path):
    address = ray_head["address"]
    no_token = _env(HOME=str(tmp_path))
    no_token.pop("RAY_AUTH_TOKEN", None)
    r = maas("jobs", "--address", address, env=no_token)
    assert r.returncode == 2 and "no Ray auth token found" in r.stderr and "RAY_AUTH_TOKEN" in r.stderr
    wrong = _env(RAY_AUTH_TOKEN="0" * 32)
    r = maas("jobs", "--address", address, env=wrong)
    assert r.returncode == 2 and "rejected the auth token (RAY_AUTH_TOKEN)" in r.stderr, r.stderr
    assert maas("jobs", "--address", address).returncode == 0  # the right token (~/.ray/auth_token) works
    checks = {c["name"]: c for c in json.loads(maas("doctor", "--address", address, "--json", "--quick").stdout)}
    assert checks["ray cluster"]["status"] == "ok" and "token accepted" in checks["ray cluster"]["detail"]
    checks = {c["name"]: c for c in json.loads(maas("doctor", "--address", address, "--json", "--quick",
                                                             env=wrong).stdout)}
    assert checks["ray cluster"]["status"] == "fail" and "rejected the auth token" in checks["ray cluster"]["detail"]
    assert "~/.ray/auth_token" in checks["ray cluster"]["fix"]


def test_quickstart_notebook_runs_against_the_cluster(ray_head, tmp_path, monkeypatch):
    import nbclient
    import nbformat

    port = free_port()
    for key, value in {"RAY_ADDRESS": ray_head["address"], "MAAS_STORE": str(tmp_path / "store"),
                       "MAAS_DEMO_DATA": str(tmp_path / "digits.parquet"), "MAAS_DEMO_PORT": str(port),
                       "MAAS_DEMO_EPOCHS": "5"}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    work = tmp_path / "nb"
    work.mkdir()
    (work / "digits.yaml").write_text((ROOT / "examples" / "digits.yaml").read_text())
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(work)}}).execute()
    outputs = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "[train] epoch 5/5 (100%)" in outputs
    assert "production -> digits/" in outputs and "served by digits/" in outputs
    predicted = next(line for line in outputs.splitlines() if line.startswith("predicted:"))
    actual = next(line for line in outputs.splitlines() if line.startswith("actual:"))
    hits = sum(a == b for a, b in zip(eval(predicted.split(":", 1)[1]), eval(actual.split(":", 1)[1])))
    assert hits >= 6  # 8 training digits through the endpoint
    assert (work / "training_curves.png").stat().st_size > 10_000


def test_a_resubmitted_named_run_resumes_from_its_last_checkpoint(ray_head, tmp_path):
    """Stop a named training job mid-run; submitting it again under the same run name picks up the splits
    it prepared and resumes from its last checkpoint: the history continues, no epoch is lost or repeated."""
    client = Client(ray_head["address"])
    overrides = [f"store={tmp_path}", f"data.path={tmp_path / 'd.parquet'}", "train.epochs=14",
                 "train.checkpoint_every_epochs=2", "train.num_workers=1"]
    first = client.submit(SPEC, overrides, stage="train", args=["--run-name", "nightly"])
    deadline = time.time() + 240
    while time.time() < deadline and "[train] epoch 6/" not in first.logs():
        time.sleep(0.5)
    assert "[train] epoch 6/" in first.logs(), first.logs()[-3000:]
    first.stop()
    assert first.wait(timeout=120) == "STOPPED"

    second = client.submit(SPEC, overrides, stage="train", args=["--run-name", "nightly"])
    result = second.result(timeout=300)
    assert second.id != first.id and result["run_id"] == "nightly"
    logs = second.logs()
    assert "reusing the splits prepared by an earlier job" in logs and "resuming from the checkpoint" in logs
    history = result["history"]
    assert [h["epoch"] for h in history] == list(range(14))
    (resumed,) = [h for h in history if "resumed_from_epoch" in h]
    assert resumed["resumed_from_epoch"] >= 6 - 2  # at most one checkpoint interval (2 epochs) redone


def test_maas_eval_runs_as_an_eval_job_with_the_scores_it_gets_in_process(ray_head, tmp_path):
    """`maas eval --address` (maas.Client.evaluate) scores a registered tiny Llama in an eval job on the head:
    the same harness, hashes and log-likelihoods as lm-eval in this process; a version that does not exist
    fails the job with the registry's message."""
    from maas.eval.tasks import evaluate_refs
    from maas.models import make_tiny_llama
    from maas.registry.hf_import import import_hf_model
    from maas.spec.evaluation import EvalTaskSpec

    store = str(tmp_path / "store")
    import_hf_model(Registry(store), str(make_tiny_llama(tmp_path / "tiny", seed=0)), "tiny", by="test")
    (tmp_path / "mc.jsonl").write_text("\n".join(json.dumps(
        {"question": f"w{i} w{i + 1}", "choices": [f"w{i + 2}", f"w{i + 50}"], "answer": 0}) for i in range(1, 6)))
    task = f"mc={tmp_path / 'mc.jsonl'}:multiple_choice"
    r = maas("eval", "tiny", "--task", task, "--store", store, "--address", ray_head["address"],
             "--json", str(tmp_path / "job.json"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "submitted maas-eval-tiny-" in r.stdout and "on a Ray job on the cluster" in r.stdout
    job = json.loads((tmp_path / "job.json").read_text())["tiny/1"]
    here = evaluate_refs(Registry(store), ["tiny/1"], [EvalTaskSpec(name="mc", path=str(tmp_path / "mc.jsonl"),
                                                                    type="multiple_choice")])["tiny/1"]
    mine = here.full_record()
    assert job["harness"] == mine["harness"] and job["tasks"]["mc"]["sha256"] == mine["tasks"]["mc"]["sha256"]
    assert job["tasks"]["mc"]["score"] == mine["tasks"]["mc"]["score"] and job["tasks"]["mc"]["items"] == 5
    for theirs, ours in zip(job["tasks"]["mc"]["answers"], mine["tasks"]["mc"]["answers"]):
        assert theirs == pytest.approx(ours, abs=1e-4)

    r = maas("eval", "tiny/9", "--task", task, "--store", store, "--address", ray_head["address"])
    assert r.returncode == 2 and "failed: model 'tiny' has no version 9" in r.stderr, r.stderr[-2000:]


def test_maas_batch_runs_as_a_batch_job_on_the_cluster(ray_head, tmp_path):
    """`maas batch --address` (maas.Client.batch) answers a Parquet file in a batch job on the head (where maas
    is not installed: the job ships it, Ray Data's actors import it): answers and rejects in the output, the
    counts in the result; a version that does not exist fails the job with the registry's message."""
    import numpy as np
    import pandas as pd

    from maas.models import build_model, classifier_signature
    from maas.models.artifacts import export_onnx

    model = build_model({"arch": "mlp", "input_dim": 3, "num_classes": 2, "hidden_sizes": [4], "dropout": 0.0})
    store = str(tmp_path / "store")
    features = ["a", "b", "c"]
    Registry(store).publish("tiny", {"model.onnx": export_onnx(model, 3, tmp_path / "m.onnx")}, runtime="onnxruntime",
                            signature=classifier_signature(3, ["no", "yes"], features=features))
    rows = pd.DataFrame(np.random.default_rng(0).normal(size=(50, 3)), columns=features)
    rows.insert(0, "id", range(50))
    rows.loc[3, "b"] = np.nan
    rows.to_parquet(tmp_path / "rows.parquet")
    r = maas("batch", "tiny/1", "--input", str(tmp_path / "rows.parquet"), "--output", str(tmp_path / "out"),
             "--store", store, "--address", ray_head["address"], "--json", str(tmp_path / "result.json"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "submitted maas-batch-tiny-" in r.stdout and "tiny/1: 50 rows -> 49 answered, 1 rejected" in r.stdout
    result = json.loads((tmp_path / "result.json").read_text())
    answers = pd.read_parquet(result["files"]["answers"])
    rejects = pd.read_parquet(result["files"]["rejects"])
    assert sorted(answers["id"]) == [i for i in range(50) if i != 3] and set(answers["label"]) <= {"no", "yes"}
    assert rejects.to_dict("records")[0]["reason"] == "column 'b' is empty"

    r = maas("batch", "tiny/9", "--input", str(tmp_path / "rows.parquet"), "--output", str(tmp_path / "other"),
             "--store", store, "--address", ray_head["address"])
    assert r.returncode == 2 and "failed: model 'tiny' has no version 9" in r.stderr, r.stderr[-2000:]
