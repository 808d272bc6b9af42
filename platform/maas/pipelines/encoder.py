"""The encoder kind (``kind: encoder``): corpus -> fp32 parent -> variants (each measured, gated, published)
-> pick -> report.

Every variant is built from a copy of the parent by its chain of steps (``maas.compress.encoder_variants``),
measured in a fresh process against the parent on the same held-out sentences, and published: ``ready`` when
it passes its gate, ``rejected`` (never aliased, never served) when it does not, ``candidate`` when it passed
but its STS-style rank correlation falls more than ``eval.max_sts_drop`` below the version ``deploy.alias``
points at now (the champion, embedding the same pairs with its own files). ``select: fastest`` points
``deploy.alias`` at the passing version with the highest throughput at the largest timed batch size; when none
held its own against the champion, the alias stays.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from maas.compress.encoder_eval import measure_in_subprocess, quality, sts_pairs
from maas.compress.encoder_variants import artifact_bytes, artifact_files, build_variant
from maas.compress.gate import check_embedding_gate
from maas.data.corpus import load_corpus
from maas.models.artifacts import load_torch_model, save_torch_model
from maas.models.encoder import TOKENIZER, encoder_signature, load_pretrained, pretrained_dir
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
from maas.pipelines.champion import evaluate_encoder_champion, versus
from maas.registry import Registry
from maas.spec import EncoderPipelineSpec

SPEC = EncoderPipelineSpec


@dataclass
class EncoderResult:
    run_id: str
    run_dir: str
    spec_hash: str
    corpus: dict
    champion: Optional[dict] = None  # {ref, comparable, sts_spearman | why}: the alias holder when the run began
    variants: list = field(default_factory=list)  # {method, runtime, ref, metrics, gate, passed}
    alias: str = "production"
    promoted_ref: str = ""
    endpoint: Optional[str] = None
    report: dict = field(default_factory=dict)
    stage_seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def run(spec: EncoderPipelineSpec, *, serve: Optional[bool] = None, run_id: Optional[str] = None,
        progress: Progress = noop, baselines: tuple = ()) -> EncoderResult:
    """Publish the pretrained encoder as the fp32 parent, build, measure, gate and publish every variant,
    point ``deploy.alias`` at the pick, write the compression report, and (optionally) serve it.

    ``baselines`` (benchmarks only) names load-time recipes, e.g. ``torch_ao_dynamic_int8``, measured like
    the variants for comparison but never published or picked.

    Raises:
        CompressionError: a step or a measurement failed (the message names the variant).
        RegistryError: no variant and not even the parent passed (never: the parent passes by definition).
    """
    from maas.compress.report import write_compression_report
    from maas.data import run_dir_for
    from maas.storage import put_folder_files

    registry = Registry(spec.store)
    run_id = run_id or new_run_id()
    alias_was = alias_target(spec.store, spec.model.name, spec.deploy.alias)
    run_dir = run_dir_for(registry.location, run_id)  # a local path or a URI, like the store
    laps = Laps(progress)
    lap = laps.lap

    progress("data", "collecting English sentences from installed packages' documentation")
    corpus = load_corpus(spec.data)
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
    champion = None
    if spec.eval.against_champion and alias_was is not None:  # a model's first version has nothing to beat
        champion = evaluate_encoder_champion(registry, spec.model.name, alias_was, left, right, labels)
        lap("champion", _champion_line(champion))

    def against_champion(metrics: dict) -> tuple[bool, str]:
        return versus(metrics, champion, spec.eval.max_sts_drop, "sts_spearman")

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
        holds, versus_why = against_champion(parent_metrics)
        parent = registry.publish(spec.model.name, artifact_files(parent_dir), runtime="torch", task="embed",
                                  metrics=parent_metrics, signature=signature, status=status_of(True, holds),
                                  description=versus_why,
                                  lineage={**lineage_base, "method": "fp32", "parent": None,
                                           "pretrained": spec.model.pretrained, **champion_lineage(holds, versus_why)})
        records = [{"method": "fp32", "runtime": "torch", "ref": parent.ref, "metrics": parent_metrics,
                    "gate": "parent" if holds else f"CANDIDATE: {versus_why}", "passed": True,
                    "status": parent.status, "details": {}}]
        lap("parent", f"{parent.ref}: {parent_metrics['size_bytes'] / 1e6:.1f} MB, "
                      f"{_speed(parent_metrics, c.batch_sizes)}")

        for variant in c.resolved():
            progress("compress", f"{variant.name}: {' -> '.join(variant.step_names())}")
            out = Path(tmp) / variant.name
            runtime, details = build_variant(variant, parent_dir, out, corpus, run_dir, spec.model.max_length,
                                             progress)
            metrics, _ = evaluate(out, runtime, parent_emb)
            metrics["size_bytes"] = artifact_bytes(out)
            if "weight_bytes" in details:
                metrics["weight_bytes"] = details["weight_bytes"]
            passed, reason = check_embedding_gate(parent_metrics, metrics, variant.gate or c.gate)
            record = publish_variant(registry, spec.model.name, artifact_files(out), runtime=runtime, task="embed",
                                     metrics=metrics, signature=signature,
                                     lineage={**lineage_base, "details": details}, method=variant.name,
                                     parent=parent.ref, passed=passed, reason=reason,
                                     champion=against_champion(metrics))
            record["details"] = {k: v for k, v in details.items() if not k.endswith("_history")}
            records.append(record)
            lap("compress", f"{variant.name} -> {record['ref']} ({'pass' if passed else 'rejected'}"
                            f"{', candidate' if record['status'] == 'candidate' else ''}): "
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

    fastest_at = f"throughput_b{max(c.batch_sizes)}"
    promoted = promote(spec.store, spec.deploy.alias, [r for r in records if not r.get("baseline")], c.select,
                       fastest_at, expected=alias_was, by=f"run:{run_id}")
    promoted_ref = promoted["ref"] if promoted else f"{spec.model.name}/{alias_was}"
    lap("promote", f"{spec.model.name}@{spec.deploy.alias} -> {promoted_ref} ({promoted['method']})" if promoted
        else f"{spec.model.name}@{spec.deploy.alias} stays at {promoted_ref}: no version of this run held its own "
             "against the champion (published as candidates)")
    with tempfile.TemporaryDirectory(prefix="maas-report-") as tmp:  # then into the run folder, local or not
        report = put_folder_files(run_dir, write_compression_report(
            records, Path(tmp), c.batch_sizes, title=f"{spec.model.name}: {spec.model.pretrained} variants vs "
            "fp32 parent", picked=promoted_ref))
    endpoint = serve_at_end(spec, serve, laps)
    return EncoderResult(run_id=run_id, run_dir=run_dir, spec_hash=spec.spec_hash(),
                         corpus={"sentences": corpus.total, "fingerprint": corpus.fingerprint}, champion=champion,
                         variants=records, alias=spec.deploy.alias, promoted_ref=promoted_ref, endpoint=endpoint,
                         report=report, stage_seconds=laps.seconds)


def _speed(metrics: dict, batch_sizes: list) -> str:
    parts = []
    if "latency_ms_p50" in metrics:
        parts.append(f"p50 {metrics['latency_ms_p50']:.1f} ms")
    big = max(batch_sizes)
    if big > 1 and f"throughput_b{big}" in metrics:
        parts.append(f"{metrics[f'throughput_b{big}']:.0f} sent/s @{big}")
    return ", ".join(parts)






# ------------------------------------------------------------------------- what `maas run` and jobs show

def summary(result: EncoderResult, spec: EncoderPipelineSpec) -> str:
    from maas.compress.report import markdown_table
    from maas.report import promotion_line

    lines = [markdown_table(result.variants, spec.compress.batch_sizes), ""]
    if result.champion:
        lines.append(f"champion {_champion_line(result.champion)}")
    lines.append(promotion_line(f"{spec.model.name}@{result.alias}", result.promoted_ref, result.variants))
    return "\n".join(lines) + "; report: " + ", ".join(f"{k} {v}" for k, v in result.report.items())


def _champion_line(champion: dict) -> str:
    """How the champion read this run's pairs, or why it was not compared."""
    return f"{champion['ref']}: " + (f"STS-style rank correlation {champion['sts_spearman']:.4f} on this run's pairs"
                                     if champion["comparable"] else champion["why"])


def try_it(result: EncoderResult, spec: EncoderPipelineSpec) -> tuple[str, str]:
    from maas.report import embeddings_curl_example

    return (f"{result.endpoint}/v1/embeddings and {result.endpoint}/v2/models/{spec.model.name}/infer",
            embeddings_curl_example(result.endpoint, spec.model.name))


def job_pipeline(spec: EncoderPipelineSpec, opts: dict, progress: Progress) -> dict:
    result = run(spec, serve=opts.get("serve", False), progress=progress)
    return {"run_id": result.run_id, "run_dir": result.run_dir, "corpus": result.corpus,
            "variants": variants_summary(result.variants), "promoted": result.promoted_ref,
            "alias": result.alias, "champion": result.champion, "endpoint": result.endpoint, "report": result.report,
            "stage_seconds": result.stage_seconds,
            "summary": summary(result, spec)}


def job_compress(spec: EncoderPipelineSpec, opts: dict, progress: Progress) -> dict:
    """The packaged encoder is its own parent: compress = this pipeline, unserved."""
    result = run(spec, serve=False, progress=progress)
    return {"parent": result.variants[0]["ref"], "variants": variants_summary(result.variants),
            "promoted": result.promoted_ref, "alias": result.alias, "champion": result.champion,
            "report": result.report, "summary": summary(result, spec)}


JOB_STAGES = {"pipeline": job_pipeline, "compress": job_compress, "deploy": job_deploy}
