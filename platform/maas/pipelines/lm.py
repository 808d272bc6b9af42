"""The language-model kind (``kind: lm``): text -> byte blocks (Ray Data, ``maas.data.blocks``) -> GPT (Ray
Train, DDP or FSDP2) -> registry -> streamed generation (Ray Serve)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from maas.data.blocks import prepare_lm_data
from maas.models.gpt import generation_signature
from maas.pipelines.base import Laps, Progress, alias_target, job_deploy, new_run_id, noop, serve_at_end
from maas.spec import LMPipelineSpec

SPEC = LMPipelineSpec


def generation_speed(model, prompt: bytes, new_tokens: int = 64, runs: int = 3) -> dict:
    """Batch-1 generation on this process's CPU: median tokens/s and time to first token."""
    rates, firsts = [], []
    for _ in range(runs):
        start = time.perf_counter()
        first = None
        for i, _tok in enumerate(model.stream(prompt, new_tokens, temperature=0)):
            if i == 0:
                first = time.perf_counter() - start
        rates.append(new_tokens / (time.perf_counter() - start))
        firsts.append(first)
    return {"generate_tokens_per_s": float(np.median(rates)), "first_token_ms": float(np.median(firsts)) * 1e3}


@dataclass
class LMResult:
    run_id: str
    run_dir: str
    spec_hash: str
    data_fingerprint: str
    data_counts: dict
    train_device: str
    ref: str
    metrics: dict
    history: list
    sample: str
    alias: str = "production"
    endpoint: Optional[str] = None
    stage_seconds: dict = field(default_factory=dict)
    promoted_ref: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def run(spec: LMPipelineSpec, *, serve: Optional[bool] = None, run_id: Optional[str] = None,
        progress: Progress = noop) -> LMResult:
    """Prepare the text, train the decoder with Ray Train, publish the best checkpoint (with its metrics and
    lineage), point ``deploy.alias`` at it and, optionally, serve it for generation."""
    from maas.data import run_dir_for
    from maas.models.artifacts import save_torch_model
    from maas.registry import Registry
    from maas.train.trainer import fit

    registry = Registry(spec.store)
    run_id = run_id or new_run_id()
    alias_was = alias_target(spec.store, spec.model.name, spec.deploy.alias)
    run_dir = run_dir_for(registry.location, run_id)
    laps = Laps(progress)
    lap = laps.lap

    config = spec.model.config()
    progress("data", f"{spec.data.source}: packing {config['block_size'] + 1}-byte blocks")
    data = prepare_lm_data(spec.data, config["block_size"], run_dir)
    c = data.counts
    lap("data", f"{c['bytes']} bytes, {c['lines']} lines ({c['lines_rejected']} quarantined) -> "
                f"{c['splits']['train']} train / {c['splits']['val']} val blocks")

    from maas.models import build_model

    n_params = build_model(config).num_parameters()
    t = spec.train
    progress("train", f"GPT {spec.model.size} ({n_params / 1e6:.2f}M parameters), {t.num_workers} x {t.strategy}, "
                      f"{t.epochs} epochs")
    trained = fit(t, config, data.train, data.val, rows=c["splits"]["train"],
                  row_bytes=(config["block_size"] + 1) * 8, run_dir=run_dir, run_name="train", task="lm")
    best = trained.best_metrics
    lap("train", f"best val loss {best.get('val_loss', float('nan')):.3f} "
                 f"({best.get('val_bits_per_byte', float('nan')):.2f} bits/byte)")

    model = trained.model.eval()
    prompt = b"The function returns"
    sample = bytes(model.stream(prompt, 120, temperature=0.0)).decode("utf-8", "replace")
    metrics = {k: v for k, v in best.items() if k.startswith(("val_", "train_"))}
    metrics.update(parameters=n_params, tokens_per_s_train=max((h.get("tokens_per_s", 0) for h in trained.history),
                                                                default=0.0),
                   **generation_speed(model, prompt))
    with tempfile.TemporaryDirectory(prefix="maas-lm-") as tmp:
        files = save_torch_model(model, trained.model_config, Path(tmp))
        metrics["size_bytes"] = files["model.safetensors"].stat().st_size
        signature = generation_signature(config["block_size"], spec.generate.model_dump())
        mv = registry.publish(
            spec.model.name, files, runtime="torch", task="generate", metrics=metrics, signature=signature,
            lineage={"kind": "lm", "data_fingerprint": data.fingerprint, "spec_hash": spec.spec_hash(),
                     "run_id": run_id, "run_dir": run_dir, "data_counts": c, "method": "fp32", "parent": None,
                     "checkpoint": trained.checkpoint_path, "train_device": trained.device,
                     "strategy": t.strategy, "history": trained.history, "sample": sample})
    registry.set_alias(spec.model.name, spec.deploy.alias, mv.version, expected=alias_was, by=f"run:{run_id}")
    lap("publish", f"{mv.ref} ({metrics['size_bytes'] / 1e6:.2f} MB), {spec.model.name}@{spec.deploy.alias}; "
                   f"generates {metrics['generate_tokens_per_s']:.0f} bytes/s; sample: {sample[:60]!r}")
    endpoint = serve_at_end(spec, serve, laps)
    return LMResult(run_id=run_id, run_dir=run_dir, spec_hash=spec.spec_hash(), data_fingerprint=data.fingerprint,
                    data_counts=c, train_device=trained.device, ref=mv.ref, metrics=metrics, history=trained.history,
                    sample=sample, alias=spec.deploy.alias, endpoint=endpoint, stage_seconds=laps.seconds,
                    promoted_ref=mv.ref)


run_lm_pipeline = run  # the name tests and notebooks have used


# ------------------------------------------------------------------------- what `maas run` and jobs show

def summary(result: LMResult, spec: LMPipelineSpec) -> str:
    from maas.report import table

    m = result.metrics
    return table(["model", "parameters", "val loss", "bits/byte", "next-byte acc", "train tokens/s",
                  "generate bytes/s", "MB"],
                 [[result.ref, f"{m['parameters'] / 1e6:.2f}M", f"{m.get('val_loss', float('nan')):.3f}",
                   f"{m.get('val_bits_per_byte', float('nan')):.2f}", f"{m.get('val_accuracy', float('nan')):.3f}",
                   f"{m['tokens_per_s_train']:.0f}", f"{m['generate_tokens_per_s']:.0f}",
                   f"{m['size_bytes'] / 1e6:.2f}"]]) + f"\nsample (greedy): {result.sample!r}"


def try_it(result: LMResult, spec: LMPipelineSpec) -> tuple[str, str]:
    import json

    prompt = json.dumps({"model": spec.model.name, "prompt": "The function returns", "max_tokens": 64,
                         "stream": True})
    return (f"{result.endpoint}/v1/completions and {result.endpoint}/v2/models/{spec.model.name}/generate_stream",
            f"curl -N {result.endpoint}/v1/completions -H 'content-type: application/json' -d '{prompt}'")


def job_pipeline(spec: LMPipelineSpec, opts: dict, progress: Progress) -> dict:
    result = run(spec, serve=opts.get("serve", False), progress=progress)
    return {"run_id": result.run_id, "run_dir": result.run_dir, "data_counts": result.data_counts,
            "data_fingerprint": result.data_fingerprint, "promoted": result.ref, "alias": result.alias,
            "metrics": result.metrics, "sample": result.sample, "endpoint": result.endpoint,
            "history": result.history, "stage_seconds": result.stage_seconds,
            "summary": summary(result, spec)}


JOB_STAGES = {"pipeline": job_pipeline, "deploy": job_deploy}
