"""The classifier kind (``kind: classifier``, the default): your tabular, image or text data, trained here.

data -> train (+ fp32 evaluation, publish) -> compress (+ gate, publish) -> promote -> serve.

Each stage also runs alone as a Ray job (``jobs/``, through ``JOB_STAGES``): the data stage saves its splits
under the run folder, training reads them back by run id, compression finds its parent and test split
through the registry's lineage. Stages never import each other: they meet here, through typed results and
the registry.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from maas.compress import check_accuracy_gate, compress_model, evaluate_classifier
from maas.data import DataResult, load_prepared, prepare_data, run_dir_for, save_prepared
from maas.exceptions import MaasError, RegistryError
from maas.models import classifier_signature, load_predictor, text_classifier_signature
from maas.models.artifacts import export_onnx, save_torch_model
from maas.models.predictor import TorchPredictor
from maas.pipelines.base import (
    Laps,
    Progress,
    alias_target,
    champion_lineage,
    job_deploy,
    new_run_id,
    noop,
    promote,
    publish_variant,
    serve_at_end,
    status_of,
    variants_summary,
)
from maas.pipelines.champion import evaluate_champion, versus
from maas.registry import UNCHECKED, Registry
from maas.spec import ClassifierSpec
from maas.train import train_model

SPEC = ClassifierSpec


@dataclass
class PipelineResult:
    """What a run produced: counts, figures per variant, registry references and the endpoint."""

    run_id: str
    run_dir: str
    spec_hash: str
    data_fingerprint: str
    data_counts: dict
    train_device: str
    train_seconds: float
    best_val_accuracy: float
    history: list
    variants: list = field(default_factory=list)  # {method, runtime, ref, metrics, gate, passed}
    alias: str = "production"
    promoted_ref: str = ""
    champion: Optional[dict] = None  # {ref, comparable, test_accuracy | why}: the alias holder when the run began
    endpoint: Optional[str] = None
    example_row: list = field(default_factory=list)
    stage_seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ stages

def stage_data(spec: ClassifierSpec, run_id: str) -> DataResult:
    """Read, validate, split and fit normalisation; the splits are saved under the run for later stages."""
    run_dir = run_dir_for(Registry(spec.store).location, run_id)
    data = prepare_data(spec.data, run_dir)
    save_prepared(data, run_dir)
    return data


def signature_of(spec: ClassifierSpec, data: DataResult) -> dict:
    """The registry signature of what this run trains: inputs, features, classes, encoders."""
    if is_text_model(spec):
        return text_classifier_signature(data.classes, data.features)
    return classifier_signature(len(data.features), data.classes, features=data.features,
                                raw_features=data.raw_features, encoders=data.encoders)


def stage_champion(spec: ClassifierSpec, data: DataResult, version: Optional[int]) -> Optional[dict]:
    """The champion (``version``: where deploy.alias pointed when the run started) scored on this run's test
    rows, or None: no champion, or ``eval.against_champion`` is off."""
    if version is None or not spec.eval.against_champion:  # a model's first version has nothing to beat
        return None
    x, y = test_rows(spec, data)
    return evaluate_champion(Registry(spec.store), spec.model.name, version, signature_of(spec, data), x, y)


def stage_train(spec: ClassifierSpec, data: DataResult, run_id: str,
                champion: Optional[dict] = None) -> tuple[dict, object]:
    """Train, evaluate the best checkpoint on the test split, publish it as the fp32 parent version
    (``candidate`` when it falls short of ``champion``: see ``stage_champion``).

    Returns:
        (variant record {method, runtime, ref, metrics, gate, passed, status}, TrainResult)
    """
    registry = Registry(spec.store)
    run_dir = run_dir_for(registry.location, run_id)
    trained = train_model(spec, data, run_dir)
    text = is_text_model(spec)
    x_test, y_test = test_rows(spec, data)
    with tempfile.TemporaryDirectory(prefix="maas-") as tmp:
        files = save_torch_model(trained.model, trained.model_config, Path(tmp))
        if text:  # the encoder's tokenizer travels with the model; ONNX takes ids and mask
            from maas.compress.encoder_ops import export_encoder_onnx
            from maas.models.encoder import TOKENIZER, pretrained_dir

            files[TOKENIZER] = Path(shutil.copyfile(pretrained_dir(spec.model.pretrained) / TOKENIZER,
                                                    Path(tmp) / TOKENIZER))
            files["model.onnx"] = export_encoder_onnx(trained.model, Path(tmp) / "model.onnx")
            predictor = load_predictor(Path(tmp), "torch", "classify_text")
        else:
            files["model.onnx"] = export_onnx(trained.model, len(data.features), Path(tmp) / "model.onnx")
            predictor = TorchPredictor(trained.model)
        metrics = evaluate_classifier(predictor, x_test, y_test, size_bytes=files["model.safetensors"].stat().st_size,
                           runs=spec.compress.latency_runs)
        metrics.update({k: v for k, v in trained.best_metrics.items() if k.startswith("val_")})
        holds, versus_why = versus(metrics, champion, spec.eval.max_accuracy_drop)
        parent = registry.publish(
            spec.model.name, files, runtime="torch", metrics=metrics, signature=signature_of(spec, data),
            task="classify_text" if text else "classify", status=status_of(True, holds), description=versus_why,
            lineage={**_lineage(spec, data, run_id, run_dir), "method": "fp32", "parent": None,
                     "checkpoint": trained.checkpoint_path, "train_device": trained.device,
                     "history": trained.history,
                     **champion_lineage(holds, versus_why)})
    return {"method": "fp32", "runtime": "torch", "ref": parent.ref, "metrics": metrics,
            "gate": "parent" if holds else f"CANDIDATE: {versus_why}", "passed": True,
            "status": parent.status}, trained


def stage_compress(spec: ClassifierSpec, parent_ref: str, test: Optional[tuple[np.ndarray, np.ndarray]] = None,
                   champion: Optional[dict] = None) -> list[dict]:
    """Compress the registered fp32 ``parent_ref`` with every method of the spec; gate each against the parent
    (and against ``champion``) and publish it.

    The test split is the parent's own, so parent and variants are measured on exactly the same rows:
    ``test`` (x, y) when the caller still holds it, else reloaded through the parent's lineage.
    """
    registry = Registry(spec.store)
    folder, parent = registry.fetch(parent_ref)
    if parent.runtime != "torch" or "model.onnx" not in parent.files:
        raise RegistryError(f"{parent.ref} is a {parent.lineage.get('method', parent.runtime)} variant; "
                            "compress a fp32 parent (the version a train stage published)")
    x_test, y_test = test if test is not None else test_rows(spec, load_prepared(parent.lineage["run_dir"]))
    variants = []
    with tempfile.TemporaryDirectory(prefix="maas-") as tmp:
        for variant in compress_model(spec.compress.methods, folder / "model.onnx", Path(tmp)):
            if is_text_model(spec):  # the ONNX graph runs after the same tokenizer, read from model.json
                for name in ("model.json", "tokenizer.json"):
                    variant.files[name] = Path(shutil.copyfile(folder / name, Path(tmp) / variant.method / name))
            predictor = load_predictor(Path(tmp) / variant.method, variant.runtime, parent.task)
            weights = variant.files["model.onnx"]
            metrics = evaluate_classifier(predictor, x_test, y_test, size_bytes=weights.stat().st_size,
                                          runs=spec.compress.latency_runs)
            passed, reason = check_accuracy_gate(parent.metrics, metrics, spec.compress.max_accuracy_drop)
            lineage = {k: parent.lineage[k] for k in ("data_fingerprint", "spec_hash", "run_id", "run_dir",
                                                       "data_counts", "features") if k in parent.lineage}
            variants.append(publish_variant(registry, spec.model.name, variant.files, runtime=variant.runtime,
                                            task=parent.task,
                                            metrics=metrics, signature=parent.signature, lineage=lineage,
                                            method=variant.method, parent=parent.ref, passed=passed,
                                            reason=reason,
                                            champion=versus(metrics, champion, spec.eval.max_accuracy_drop)))
    return variants


def is_text_model(spec: ClassifierSpec) -> bool:
    return spec.model.arch == "minilm_classifier"


def test_rows(spec: ClassifierSpec, data: DataResult) -> tuple:
    """The test split as the model takes it: (X float32 [N, F], y), or (texts, y) for a text model."""
    return data.texts("test") if is_text_model(spec) else data.numpy("test")


def stage_promote(spec: ClassifierSpec, candidates: list[dict], expected: Any = UNCHECKED,
                  by: Optional[str] = None) -> str:
    """Point ``deploy.alias`` at the fastest (``compress.select``: or smallest) version that passed its gate
    and held its own against the champion, if the alias still points at ``expected`` (what the run read at
    its start); returns the reference the alias points at afterwards (the champion's when none held)."""
    chosen = promote(spec.store, spec.deploy.alias, candidates, spec.compress.select, "throughput_rows_s_b64",
                     expected=expected, by=by)
    if chosen is None:
        return f"{spec.model.name}/{expected}"
    return chosen["ref"]


def _lineage(spec: ClassifierSpec, data: DataResult, run_id: str, run_dir: str) -> dict:
    return {"data_fingerprint": data.fingerprint, "spec_hash": spec.spec_hash(), "run_id": run_id,
            "run_dir": run_dir, "data_counts": data.counts, "features": data.features,
            "encoders": data.encoders}


# ------------------------------------------------------------------------------------------- the whole

def run(spec: ClassifierSpec, *, serve: Optional[bool] = None, run_id: Optional[str] = None,
        progress: Progress = noop) -> PipelineResult:
    """Run every stage of ``spec`` on the connected Ray cluster (see ``maas.runtime.ensure_ray``).

    Args:
        spec: the validated pipeline spec.
        serve: deploy ``<model>@<alias>`` at the end; defaults to ``spec.deploy.enabled``.
        run_id: names the run folder under ``<store>/runs``; generated when omitted.
        progress: called as ``progress(stage, detail)`` as each stage starts and ends.

    Returns:
        PipelineResult with every variant's metrics and registry reference.

    Raises:
        DataError, TrainingError, CompressionError, RegistryError: each names the field or next step.
    """
    run_id = run_id or new_run_id()
    laps = Laps(progress)
    lap = laps.lap
    alias_was = alias_target(spec.store, spec.model.name, spec.deploy.alias)
    progress("data", f"reading {spec.data.path}")
    data = stage_data(spec, run_id)
    lap("data", f"{data.counts['rows_ok']} rows ok, {data.counts['rows_rejected']} rejected, "
               f"{data.counts.get('rows_dropped', 0)} dropped by ops")

    champion = stage_champion(spec, data, alias_was)
    if champion is not None:
        lap("data", f"champion {champion['ref']}: " + (f"test accuracy {champion['test_accuracy']:.4f} on this "
                                                       "run's rows" if champion["comparable"] else champion["why"]))
    progress("train", f"{spec.train.num_workers} workers x {spec.train.epochs} epochs")
    parent, trained = stage_train(spec, data, run_id, champion)
    lap("train", f"best val accuracy {trained.best_metrics.get('val_accuracy', float('nan')):.4f}, "
                 f"fp32 test accuracy {parent['metrics']['test_accuracy']:.4f} -> {parent['ref']}")

    progress("compress", ", ".join(spec.compress.methods))
    test = test_rows(spec, data)
    variants = [parent] + stage_compress(spec, parent["ref"], test, champion)
    lap("compress", ", ".join(f"{v['method']} -> {v['ref']} ({'pass' if v['status'] == 'ready' else v['status']})"
                              for v in variants[1:]))

    promoted = stage_promote(spec, variants, expected=alias_was, by=f"run:{run_id}")
    candidates = ", ".join(v["ref"] for v in variants if v["status"] == "candidate")
    lap("promote", f"{spec.model.name}@{spec.deploy.alias} -> {promoted}" if promoted in {v["ref"] for v in variants}
        else f"{spec.model.name}@{spec.deploy.alias} stays at {promoted}: no version of this run held its own "
             f"against the champion (published as candidates: {candidates})")

    endpoint = serve_at_end(spec, serve, laps)
    timings = laps.seconds
    return PipelineResult(
        run_id=run_id, run_dir=run_dir_for(Registry(spec.store).location, run_id), spec_hash=spec.spec_hash(),
        data_fingerprint=data.fingerprint, data_counts=data.counts, train_device=trained.device,
        train_seconds=timings["train"], best_val_accuracy=float(trained.best_metrics.get("val_accuracy", "nan")),
        history=trained.history, variants=variants, alias=spec.deploy.alias, promoted_ref=promoted,
        champion=champion, endpoint=endpoint, stage_seconds=timings,
        example_row=[test[0][0]] if isinstance(test[0], list) else test[0][0].tolist())


run_pipeline = run  # the name the SDK and notebooks have used


# ------------------------------------------------------------------------- what `maas run` and jobs show

def summary(result: PipelineResult, spec: ClassifierSpec) -> str:
    from maas.report import pipeline_summary

    return pipeline_summary(result)


def try_it(result: PipelineResult, spec: ClassifierSpec) -> tuple[str, str]:
    """(the endpoint, a curl command that works as printed)."""
    from maas.report import curl_example

    return (f"{result.endpoint}/v2/models/{spec.model.name}",
            curl_example(result.endpoint, spec.model.name, result.example_row))


def job_pipeline(spec: ClassifierSpec, opts: dict, progress: Progress) -> dict:
    result = run(spec, serve=opts.get("serve", False), progress=progress)
    return {"run_id": result.run_id, "run_dir": result.run_dir, "data_counts": result.data_counts,
            "data_fingerprint": result.data_fingerprint, "variants": variants_summary(result.variants),
            "promoted": result.promoted_ref, "alias": result.alias, "champion": result.champion,
            "endpoint": result.endpoint,
            "history": result.history, "stage_seconds": result.stage_seconds,
            "summary": summary(result, spec)}


def job_preprocess(spec: ClassifierSpec, opts: dict, progress: Progress) -> dict:
    run_id = opts.get("run_id") or new_run_id()
    progress("data", f"reading {spec.data.path}")
    data = stage_data(spec, run_id)
    return {"run_id": run_id, "data_counts": data.counts, "data_fingerprint": data.fingerprint,
            "features": len(data.features), "classes": data.classes}


def job_train(spec: ClassifierSpec, opts: dict, progress: Progress) -> dict:
    location = Registry(spec.store).location
    if opts.get("run_id"):
        run_id = opts["run_id"]
        data = load_prepared(run_dir_for(location, run_id))
    elif opts.get("run_name"):
        # a named run: the same name is the same run folder, so a resubmitted job finds the splits it prepared
        # and Ray Train (same storage path and run name) resumes from the run's latest checkpoint
        run_id = opts["run_name"]
        try:
            data = load_prepared(run_dir_for(location, run_id))
            progress("data", f"run {run_id}: reusing the splits prepared by an earlier job")
        except MaasError:
            progress("data", f"reading {spec.data.path}")
            data = stage_data(spec, run_id)
    else:
        run_id = new_run_id()
        progress("data", f"reading {spec.data.path}")
        data = stage_data(spec, run_id)
    champion = stage_champion(spec, data, alias_target(spec.store, spec.model.name, spec.deploy.alias))
    progress("train", f"{spec.train.num_workers} workers x {spec.train.epochs} epochs")
    parent, trained = stage_train(spec, data, run_id, champion)
    return {"run_id": run_id, "version": parent["ref"], "version_status": parent["status"],
            "metrics": parent["metrics"], "history": trained.history, "device": trained.device}


def job_compress(spec: ClassifierSpec, opts: dict, progress: Progress) -> dict:
    registry = Registry(spec.store)
    alias_was = alias_target(spec.store, spec.model.name, spec.deploy.alias)
    parent = registry.resolve(opts.get("parent") or spec.model.name)
    progress("compress", f"{', '.join(spec.compress.methods)} from {parent.ref}")
    champion = None
    if alias_was is not None and parent.ref != f"{spec.model.name}/{alias_was}":  # the champion: another version
        champion = stage_champion(spec, load_prepared(parent.lineage["run_dir"]), alias_was)
    variants = stage_compress(spec, parent.ref, champion=champion)
    fields = {"parent": parent.ref, "variants": variants_summary(variants)}
    if not opts.get("no_promote"):
        candidates = [{"ref": parent.ref, "passed": True, "metrics": parent.metrics, "status": parent.status}] + \
            variants
        fields["promoted"] = stage_promote(spec, candidates, expected=alias_was, by=f"job:compress {parent.ref}")
        fields["alias"] = spec.deploy.alias
    return fields


JOB_STAGES = {"pipeline": job_pipeline, "preprocess": job_preprocess, "train": job_train,
              "compress": job_compress, "deploy": job_deploy}
