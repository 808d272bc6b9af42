"""The encoder pipeline: corpus -> fp32 parent -> variants (each measured, gated, published) -> pick -> report.

Every variant is built from a copy of the parent by its chain of steps (``maas.compress.encoder_ops``),
written as a self-contained artifact (weights or ONNX graph, ``model.json``, the parent's ``tokenizer.json``),
measured in a fresh process against the parent on the same held-out sentences, and published: ``ready`` when
it passes its gate, ``rejected`` (never aliased, never served) when it does not. ``select: fastest`` points
``deploy.alias`` at the passing version with the highest throughput at the largest timed batch size.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from maas.compress import encoder_ops as ops
from maas.compress.encoder_eval import measure_in_subprocess, quality, sts_pairs
from maas.data.corpus import english_corpus, fingerprint, split_of
from maas.exceptions import CompressionError, RegistryError
from maas.models.artifacts import load_torch_model, save_torch_model
from maas.models.encoder import TOKENIZER, load_pretrained, pretrained_dir
from maas.registry import Registry
from maas.spec import EncoderGateSpec, EncoderPipelineSpec, VariantSpec

Progress = Callable[[str, str], None]


@dataclass
class Corpus:
    train: list
    val: list
    held_out: list
    fingerprint: str
    total: int


@dataclass
class EncoderResult:
    run_id: str
    run_dir: str
    spec_hash: str
    corpus: dict
    variants: list = field(default_factory=list)  # {method, runtime, ref, metrics, gate, passed}
    alias: str = "production"
    promoted_ref: str = ""
    endpoint: Optional[str] = None
    report: dict = field(default_factory=dict)
    stage_seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def load_corpus(spec: EncoderPipelineSpec) -> Corpus:
    """The spec's sentences, split by seeded content hash into train / val / held-out."""
    d = spec.data
    sentences = english_corpus(d.limit, tuple(d.packages))
    need = d.held_out + d.val
    if len(sentences) < need + 100:
        raise CompressionError(f"the corpus has {len(sentences)} sentences; data.held_out + data.val = {need} "
                               "leaves too few to train on: lower them or raise data.limit")
    fraction = min(0.5, 1.3 * need / len(sentences))
    test = [s for s in sentences if split_of(s, fraction, d.seed) == "test"]
    train = [s for s in sentences if split_of(s, fraction, d.seed) == "train"]
    if len(test) < need:  # hash split came up short: top up from the end of train (still disjoint)
        test, train = test + train[-(need - len(test)):], train[:-(need - len(test))]
    import random

    random.Random(d.seed).shuffle(train)  # sources come in sorted order; a step's max_sentences takes a mix
    return Corpus(train=train, val=test[d.held_out:need], held_out=test[:d.held_out],
                  fingerprint=fingerprint(sentences), total=len(sentences))


def check_gate(parent: dict, child: dict, gate: EncoderGateSpec) -> tuple[bool, str]:
    """(passed, reason) of an encoder variant against its parent's figures."""
    problems = []
    if child["cosine_mean"] < gate.min_cosine_mean:
        problems.append(f"mean cosine {child['cosine_mean']:.4f} < {gate.min_cosine_mean}")
    if child["cosine_min"] < gate.min_cosine_min:
        problems.append(f"min cosine {child['cosine_min']:.4f} < {gate.min_cosine_min}")
    drop = parent["sts_spearman"] - child["sts_spearman"]
    if drop > gate.max_sts_drop + 1e-12:
        problems.append(f"STS rank correlation fell {drop:.4f} (> {gate.max_sts_drop})")
    if problems:
        return False, "; ".join(problems)
    return True, (f"mean cosine {child['cosine_mean']:.4f} >= {gate.min_cosine_mean}, min {child['cosine_min']:.4f}"
                  f" >= {gate.min_cosine_min}, STS drop {drop:+.4f} <= {gate.max_sts_drop}")


def _split_steps(variant: VariantSpec) -> tuple[list[tuple[str, dict]], Optional[str]]:
    steps = [(s, {}) if isinstance(s, str) else next(iter(s.items())) for s in variant.steps]
    final = steps[-1][0] if steps[-1][0] in ops.FINAL_STEPS else None
    return [(n, a or {}) for n, a in (steps[:-1] if final else steps)], final


def build_variant(variant: VariantSpec, parent_dir: Path, out: Path, corpus: Corpus, run_dir: str,
                  max_length: int, progress: Progress) -> tuple[str, dict]:
    """Apply ``variant``'s steps to a copy of the parent in ``parent_dir``; write the artifact to ``out``.

    Returns:
        (runtime, details) where details records what the steps did (sparsity, widths, distillation history).
    """
    from maas.compress.distill import distill, student_from_teacher

    model, config = load_torch_model(parent_dir)
    model_steps, final = _split_steps(variant)
    details: dict = {"steps": [n for n, _ in model_steps] + ([final] if final else [])}
    masks = None
    for name, args in model_steps:
        if name == "prune_unstructured":
            masks = ops.prune_unstructured(model, float(args["amount"]))
            details["sparsity"] = round(ops.sparsity(model), 4)
        elif name == "prune_structured":
            model, config = ops.prune_structured(model, config, float(args["amount"]))
            details["intermediate_sizes"] = config["intermediate_sizes"]
        elif name in ("distill", "finetune"):
            if name == "distill":
                model, config = student_from_teacher(model, config, [int(i) for i in args["layers"]])
                details["layers"] = [int(i) for i in args["layers"]]
            progress("compress", f"{variant.name}: {name} as a Ray Train job "
                                 f"({args.get('num_workers', 1)} worker(s), {args.get('epochs', 2)} epoch(s))")
            teacher_emb = _parent_embeddings(parent_dir, corpus.val)
            train = corpus.train[:int(args["max_sentences"])] if args.get("max_sentences") else corpus.train
            model, config, history = distill(
                parent_dir, model, config, train, corpus.val, teacher_emb, run_dir, f"{variant.name}-{name}",
                epochs=int(args.get("epochs", 2)), learning_rate=float(args.get("learning_rate", 3e-4)),
                batch_size=int(args.get("batch_size", 32)), num_workers=int(args.get("num_workers", 1)),
                masks=masks, max_length=max_length, use_gpu=torch.cuda.is_available())
            details[f"{name}_history"] = history
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(parent_dir / TOKENIZER, out / TOKENIZER)
    config = {**config, "max_length": max_length}
    if final in ("onnx_fp32", "onnx_int8"):
        save_torch_model(model, config, out)  # the torch weights stay beside the graph: lineage, re-export
        if final == "onnx_fp32":
            ops.export_encoder_onnx(model, out / "model.onnx")
        else:
            from maas.compress.quantize import quantize_int8_dynamic

            with tempfile.TemporaryDirectory(prefix="maas-onnx-") as tmp:
                fp32 = ops.export_encoder_onnx(model, Path(tmp) / "model.onnx")
                quantize_int8_dynamic(fp32, out / "model.onnx", per_channel=True)
        (out / "model.safetensors").unlink()  # served from the graph alone: size is the graph's
    elif final in ("fp16", "bf16"):
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[final]
        save_torch_model(model.to(dtype), {**config, "dtype": str(dtype).removeprefix("torch.")}, out)
    elif final in ops.TORCHAO:
        save_torch_model(model, {**config, "quantize": final}, out)
        details["weight_bytes"] = ops.weight_bytes(ops.apply_torchao(copy.deepcopy(model), final))
    else:
        save_torch_model(model, config, out)
    return ops.runtime_of(final), details


def _parent_embeddings(parent_dir: Path, texts: list) -> np.ndarray:
    from maas.models.predictor import EncoderPredictor

    predictor = EncoderPredictor(parent_dir, "torch")
    return np.concatenate([predictor(texts[i:i + 64]) for i in range(0, len(texts), 64)])


def artifact_files(folder: Path) -> dict:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}


def artifact_bytes(folder: Path) -> int:
    """Bytes that carry the model (weights or graph), not the tokenizer and JSON that every variant shares."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".onnx", ".safetensors"))


def run_encoder_pipeline(spec: EncoderPipelineSpec, *, serve: Optional[bool] = None, run_id: Optional[str] = None,
                         progress: Progress = lambda stage, detail="": None,
                         baselines: tuple = ()) -> EncoderResult:
    """Publish the pretrained encoder as the fp32 parent, build, measure, gate and publish every variant,
    point ``deploy.alias`` at the pick, write the compression report, and (optionally) serve it.

    ``baselines`` (benchmarks only) names load-time recipes, e.g. ``torch_ao_dynamic_int8``, measured like
    the variants for comparison but never published or picked.

    Raises:
        CompressionError: a step or a measurement failed (the message names the variant).
        RegistryError: no variant and not even the parent passed (never: the parent passes by definition).
    """
    from maas.compress.report import write_report
    from maas.data import run_dir_for
    from maas.pipeline import new_run_id

    registry = Registry(spec.store)
    run_id = run_id or new_run_id()
    run_dir = run_dir_for(registry.location, run_id)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    timings: dict = {}
    clock = time.perf_counter()

    def lap(stage: str, detail: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(timings.get(stage, 0) + now - clock, 2)
        clock = now
        progress(stage, detail)

    progress("data", "collecting English sentences from installed packages' documentation")
    corpus = load_corpus(spec)
    left, right, labels = sts_pairs(corpus.held_out, seed=spec.data.seed)
    eval_texts = corpus.held_out + left + right  # one measured pass embeds all three
    n_held = len(corpus.held_out)
    lap("data", f"{corpus.total} sentences: {len(corpus.train)} train, {len(corpus.val)} val, "
                f"{n_held} held out; {len(labels)} STS-style pairs")
    c = spec.compress
    lineage_base = {"spec_hash": spec.spec_hash(), "run_id": run_id, "run_dir": run_dir, "kind": "encoder",
                    "data_fingerprint": corpus.fingerprint,
                    "data_counts": {"sentences": corpus.total, "train": len(corpus.train), "val": len(corpus.val),
                                    "held_out": n_held, "sts_pairs": len(labels)}}
    signature = encoder_signature(spec.model.max_length)

    def evaluate(folder: Path, runtime: str, parent_emb: Optional[np.ndarray]):
        metrics, emb = measure_in_subprocess(folder, runtime, eval_texts, c.batch_sizes, c.latency_runs, c.threads)
        held, l_emb, r_emb = emb[:n_held], emb[n_held:n_held + len(left)], emb[n_held + len(left):]
        ref = held if parent_emb is None else parent_emb
        metrics.update(quality(ref, held, (l_emb, r_emb), labels))
        return metrics, held

    with tempfile.TemporaryDirectory(prefix="maas-enc-") as tmp:
        progress("parent", f"{spec.model.pretrained} (fp32, torch)")
        parent_dir = Path(tmp) / "fp32"
        model, config = load_pretrained(spec.model.pretrained)
        save_torch_model(model, {**config, "max_length": spec.model.max_length}, parent_dir)
        shutil.copyfile(pretrained_dir(spec.model.pretrained) / TOKENIZER, parent_dir / TOKENIZER)
        parent_metrics, parent_emb = evaluate(parent_dir, "torch", None)
        parent_metrics["size_bytes"] = artifact_bytes(parent_dir)
        parent = registry.publish(spec.model.name, artifact_files(parent_dir), runtime="torch",
                                  metrics=parent_metrics, signature=signature,
                                  lineage={**lineage_base, "method": "fp32", "parent": None,
                                           "pretrained": spec.model.pretrained})
        records = [{"method": "fp32", "runtime": "torch", "ref": parent.ref, "metrics": parent_metrics,
                    "gate": "parent", "passed": True, "details": {}}]
        lap("parent", f"{parent.ref}: {parent_metrics['size_bytes'] / 1e6:.1f} MB, "
                      f"{_speed(parent_metrics, c.batch_sizes)}")

        for variant in c.resolved():
            progress("compress", f"{variant.name}: {' -> '.join(_split_steps_names(variant))}")
            out = Path(tmp) / variant.name
            runtime, details = build_variant(variant, parent_dir, out, corpus, run_dir, spec.model.max_length,
                                             progress)
            metrics, _ = evaluate(out, runtime, parent_emb)
            metrics["size_bytes"] = artifact_bytes(out)
            if "weight_bytes" in details:
                metrics["weight_bytes"] = details["weight_bytes"]
            passed, reason = check_gate(parent_metrics, metrics, variant.gate or c.gate)
            mv = registry.publish(
                spec.model.name, artifact_files(out), runtime=runtime, metrics=metrics, signature=signature,
                lineage={**lineage_base, "method": variant.name, "parent": parent.ref, "details": details,
                         "gate": {"passed": passed, "reason": reason}},
                status="ready" if passed else "rejected", description=reason)
            records.append({"method": variant.name, "runtime": runtime, "ref": mv.ref, "metrics": metrics,
                            "gate": ("pass: " if passed else "REJECTED: ") + reason, "passed": passed,
                            "details": {k: v for k, v in details.items() if not k.endswith("_history")}})
            lap("compress", f"{variant.name} -> {mv.ref} ({'pass' if passed else 'rejected'}): "
                            f"cos {metrics['cosine_mean']:.4f}, {metrics['size_bytes'] / 1e6:.1f} MB, "
                            f"{_speed(metrics, c.batch_sizes)}")

        for recipe in baselines:
            out = Path(tmp) / recipe
            model, config = load_torch_model(parent_dir)
            save_torch_model(model, {**config, "quantize": recipe}, out)
            shutil.copyfile(parent_dir / TOKENIZER, out / TOKENIZER)
            metrics, _ = evaluate(out, "torchao", parent_emb)
            metrics["size_bytes"] = artifact_bytes(out)
            records.append({"method": recipe, "runtime": "torch", "ref": "-", "metrics": metrics,
                            "gate": "baseline, not published", "passed": False, "baseline": True, "details": {}})
            lap("compress", f"baseline {recipe}: cos {metrics['cosine_mean']:.4f}, {_speed(metrics, c.batch_sizes)}")

    promoted = select([r for r in records if not r.get("baseline")], c.select, c.batch_sizes)
    name, version = promoted["ref"].split("/")
    registry.set_alias(name, spec.deploy.alias, int(version))
    lap("promote", f"{spec.model.name}@{spec.deploy.alias} -> {promoted['ref']} ({promoted['method']})")
    report = write_report(records, Path(run_dir), c.batch_sizes, title=f"{spec.model.name}: "
                          f"{spec.model.pretrained} variants vs fp32 parent", picked=promoted["ref"])
    endpoint = None
    if spec.deploy.enabled if serve is None else serve:
        from maas.serve import deploy

        progress("serve", f"{spec.model.name}@{spec.deploy.alias} on {spec.deploy.host}:{spec.deploy.port}")
        endpoint = deploy(registry.location, f"{spec.model.name}@{spec.deploy.alias}", spec.deploy)
        lap("serve", endpoint)
    return EncoderResult(run_id=run_id, run_dir=run_dir, spec_hash=spec.spec_hash(),
                         corpus={"sentences": corpus.total, "fingerprint": corpus.fingerprint},
                         variants=records, alias=spec.deploy.alias, promoted_ref=promoted["ref"], endpoint=endpoint,
                         report=report, stage_seconds=timings)


def _split_steps_names(variant: VariantSpec) -> list:
    return [s if isinstance(s, str) else next(iter(s)) for s in variant.steps]


def _speed(metrics: dict, batch_sizes: list) -> str:
    parts = []
    if "latency_ms_p50" in metrics:
        parts.append(f"p50 {metrics['latency_ms_p50']:.1f} ms")
    big = max(batch_sizes)
    if big > 1 and f"throughput_b{big}" in metrics:
        parts.append(f"{metrics[f'throughput_b{big}']:.0f} sent/s @{big}")
    return ", ".join(parts)


def select(records: list, how: str, batch_sizes: list) -> dict:
    """The gate-passing record to promote: 'fastest' (throughput at the largest batch size) or 'smallest'."""
    passing = [r for r in records if r["passed"]]
    if not passing:
        raise RegistryError("no version passed its quality gate; nothing to promote")
    key = f"throughput_b{max(batch_sizes)}"
    if how == "fastest":
        return max(passing, key=lambda r: (r["metrics"].get(key, 0.0), -r["metrics"]["size_bytes"]))
    return min(passing, key=lambda r: (r["metrics"]["size_bytes"], -r["metrics"].get(key, 0.0)))


def encoder_signature(max_length: int, dim: int = 384) -> dict:
    """The registry signature of a sentence encoder: texts in (OIP BYTES), unit vectors out."""
    return {"task": "embedding", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, dim]}], "dim": dim,
            "max_length": max_length}
