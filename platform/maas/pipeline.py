"""run_pipeline(spec): data -> train -> evaluate -> compress -> gate -> publish -> promote -> serve.

Stages never import each other: they meet here through typed results and through the registry.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from maas.compress import check_gate, compress_model, evaluate
from maas.data import prepare_data, run_dir_for
from maas.models.artifacts import export_onnx, save_torch_model
from maas.models.predictor import TorchPredictor, load_predictor
from maas.registry import Registry
from maas.serve.oip import classifier_signature
from maas.spec import PipelineSpec
from maas.train import train_model


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
    endpoint: Optional[str] = None
    example_row: list = field(default_factory=list)
    stage_seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _noop(stage: str, detail: str = "") -> None:
    pass


def run_pipeline(spec: PipelineSpec, *, serve: Optional[bool] = None, run_id: Optional[str] = None,
                 progress: Callable[[str, str], None] = _noop) -> PipelineResult:
    """Run every stage of ``spec`` on the connected Ray cluster (see ``maas.runtime.ensure_ray``).

    Args:
        spec: the validated pipeline spec.
        serve: deploy ``<model>@<alias>`` at the end; defaults to ``spec.deploy.enabled``.
        run_id: names the run folder under ``<store>/runs``; generated when omitted.
        progress: called as ``progress(stage, detail)`` when each stage starts.

    Returns:
        PipelineResult with every variant's metrics and registry reference.

    Raises:
        DataError, TrainingError, CompressionError, RegistryError: each names the field or next step.
    """
    run_id = run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    registry = Registry(spec.store)
    run_dir = run_dir_for(registry.location, run_id)
    name, timings = spec.model.name, {}
    clock = time.perf_counter()

    def lap(stage: str, detail: str = "") -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(now - clock, 2)
        clock = now
        progress(stage, detail)

    progress("data", f"reading {spec.data.path}")
    data = prepare_data(spec.data, run_dir)
    lap("data", f"{data.counts['rows_ok']} rows ok, {data.counts['rows_rejected']} quarantined")

    progress("train", f"{spec.train.num_workers} workers x {spec.train.epochs} epochs")
    trained = train_model(spec, data, run_dir)
    lap("train", f"best val accuracy {trained.best_metrics.get('val_accuracy', float('nan')):.4f}")
    train_seconds = timings["train"]

    progress("evaluate", "fp32 on the test split")
    x_test, y_test = data.numpy("test")
    signature = classifier_signature(len(data.features), data.classes)
    lineage = {"data_fingerprint": data.fingerprint, "spec_hash": spec.spec_hash(), "run_id": run_id,
               "run_dir": run_dir, "data_counts": data.counts, "features": data.features}
    runs = spec.compress.latency_runs
    with tempfile.TemporaryDirectory(prefix="maas-") as tmp:
        work = Path(tmp)
        files = save_torch_model(trained.model, trained.model_config, work / "fp32")
        files["model.onnx"] = export_onnx(trained.model, len(data.features), work / "fp32" / "model.onnx")
        fp32_metrics = evaluate(TorchPredictor(trained.model), x_test, y_test,
                                size_bytes=files["model.safetensors"].stat().st_size, runs=runs)
        fp32_metrics.update({k: v for k, v in trained.best_metrics.items() if k.startswith("val_")})
        parent = registry.publish(
            name, files, runtime="torch", metrics=fp32_metrics, signature=signature,
            lineage={**lineage, "method": "fp32", "parent": None, "checkpoint": trained.checkpoint_path,
                     "train_device": trained.device})
        variants = [{"method": "fp32", "runtime": "torch", "ref": parent.ref, "metrics": fp32_metrics,
                     "gate": "parent", "passed": True}]
        lap("evaluate", f"fp32 test accuracy {fp32_metrics['test_accuracy']:.4f} -> {parent.ref}")

        progress("compress", ", ".join(spec.compress.methods))
        for variant in compress_model(spec.compress.methods, files["model.onnx"], work):
            predictor = load_predictor(work / variant.method, variant.runtime)
            weights = next(iter(variant.files.values()))
            metrics = evaluate(predictor, x_test, y_test, size_bytes=weights.stat().st_size, runs=runs)
            passed, reason = check_gate(fp32_metrics, metrics, spec.compress.max_accuracy_drop)
            mv = registry.publish(
                name, variant.files, runtime=variant.runtime, metrics=metrics, signature=signature,
                lineage={**lineage, "method": variant.method, "parent": parent.ref,
                         "gate": {"passed": passed, "reason": reason}},
                status="ready" if passed else "rejected", description=reason)
            variants.append({"method": variant.method, "runtime": variant.runtime, "ref": mv.ref,
                             "metrics": metrics, "gate": ("pass: " if passed else "REJECTED: ") + reason,
                             "passed": passed})
        lap("compress", f"{len(variants) - 1} variant(s)")

    # Promote the smallest variant that passed its gate; the fp32 parent when none did.
    passing = [v for v in variants if v["passed"]]
    chosen = min(passing, key=lambda v: (v["metrics"]["size_bytes"], v["metrics"]["latency_ms_p50"]))
    alias = spec.deploy.alias
    registry.set_alias(name, alias, int(chosen["ref"].split("/")[1]))
    lap("promote", f"{name}@{alias} -> {chosen['ref']}")

    endpoint = None
    if spec.deploy.enabled if serve is None else serve:
        from maas.serve import deploy

        progress("serve", f"{name}@{alias} on {spec.deploy.host}:{spec.deploy.port}")
        d = spec.deploy
        endpoint = deploy(registry.location, f"{name}@{alias}", host=d.host, port=d.port,
                          max_batch_size=d.max_batch_size, batch_wait_timeout_s=d.batch_wait_timeout_s,
                          max_request_bytes=d.max_request_bytes, num_replicas=d.num_replicas)
        lap("serve", endpoint)

    return PipelineResult(
        run_id=run_id, run_dir=run_dir, spec_hash=spec.spec_hash(), data_fingerprint=data.fingerprint,
        data_counts=data.counts, train_device=trained.device, train_seconds=train_seconds,
        best_val_accuracy=float(trained.best_metrics.get("val_accuracy", float("nan"))), history=trained.history,
        variants=variants, alias=alias, promoted_ref=chosen["ref"], endpoint=endpoint,
        example_row=x_test[0].tolist(), stage_seconds=timings)
