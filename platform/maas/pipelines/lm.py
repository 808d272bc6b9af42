"""The language-model kind (``kind: lm``): text -> a byte-level BPE tokenizer and token blocks (Ray Data,
``maas.data.blocks``) -> transformers' Llama (Ray Train, DDP or FSDP2) -> a Hugging Face folder in the registry
(``runtime: vllm``) -> vLLM engines behind the maas endpoint (``/v1/completions``, ``/v1/chat/completions``)."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from maas.data.blocks import prepare_lm_data
from maas.pipelines.base import (
    Laps,
    Progress,
    alias_target,
    champion_lineage,
    job_deploy,
    new_run_id,
    noop,
    serve_at_end,
    status_of,
    variants_summary,
)
from maas.serve.runtimes import on_engine
from maas.spec import LMPipelineSpec

SPEC = LMPipelineSpec
PROMPT = "The function returns"


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
    smoke: dict = field(default_factory=dict)
    stage_seconds: dict = field(default_factory=dict)
    promoted_ref: str = ""
    variants: list = field(default_factory=list)  # compress: the parent then each variant, measured and gated
    report: dict = field(default_factory=dict)
    status: str = "ready"  # 'candidate': it did not hold its own against the champion, and the alias stayed
    champion: Optional[dict] = None  # {ref, comparable, bits_per_byte | why}: the alias holder when the run began

    def to_dict(self) -> dict:
        return asdict(self)


NO_HELD_OUT = ("no held-out lines of text of 4 words or more: no next-word accuracy or bits/byte, and no "
               "comparison with the champion on them; eval.tasks decide")


def _champion_line(champion: dict, n_lines: int) -> str:
    """How the champion read this run's held-out text and tasks, or why it was not compared."""
    if not champion["comparable"]:
        return champion["why"]
    bits = champion["bits_per_byte"]
    return (NO_HELD_OUT if bits is None else f"{bits:.4f} bits/byte on this run's {n_lines} held-out lines") \
        + _task_line(champion.get("tasks")) + (f"; {champion['tasks_why']}" if "tasks_why" in champion else "")


def held_out_lines(val, tokenizer, n: int = 64) -> list[str]:
    """Whole lines of 4 words or more from the validation rows: of the text blocks (the first and last line of
    a block may be cut), or of the assistant's turns in chat conversations (a row with ``targets``: the
    tokens learnt, everything else is IGNORE), read without their prompts."""
    lines: list[str] = []
    for row in (val.take(64) if val is not None else []):
        if "targets" in row:
            texts = [tokenizer.decode(span, skip_special_tokens=True) for span in _learnt_spans(row["targets"])]
            lines += [s.strip() for t in texts for s in t.split("\n") if len(s.split()) >= 4]
        else:
            text = tokenizer.decode(row["tokens"], skip_special_tokens=True)
            lines += [s.strip() for s in text.split("\n")[1:-1] if len(s.split()) >= 4]
        if len(lines) >= n:
            break
    return lines[:n]


def _learnt_spans(targets) -> list[list[int]]:
    """The runs of learnt token ids in a chat row's ``targets`` (one per assistant turn)."""
    from maas.data.chat import IGNORE

    spans, current = [], []
    for t in list(targets) + [IGNORE]:
        if t != IGNORE:
            current.append(int(t))
        elif current:
            spans.append(current)
            current = []
    return spans


def resolve_base(registry, spec: LMPipelineSpec) -> dict:
    """The version ``model.base`` names, fetched (checksummed): {"mv", "folder", "tokenizer", "config"}.

    Raises:
        RegistryError: no such version, or not a whole Hugging Face causal LM (an adapter, a classifier).
    """
    from transformers import AutoTokenizer

    from maas.exceptions import RegistryError
    from maas.models.hf_lm import finetune_config

    mv = registry.resolve(spec.model.base)
    if not on_engine(mv) or mv.signature.get("format") != "huggingface":
        raise RegistryError(f"model.base {spec.model.base} is {mv.ref}, not a Hugging Face causal LM (runtime "
                            f"{mv.runtime}, format {mv.signature.get('format')}): name one trained with kind lm or "
                            "brought with `maas models import`")
    folder, mv = registry.fetch_version(mv)
    lora = spec.model.lora.model_dump() if spec.model.finetune == "lora" else None
    return {"mv": mv, "folder": folder, "tokenizer": AutoTokenizer.from_pretrained(folder),
            "config": finetune_config(folder, spec.model.block_size, lora)}


def run(spec: LMPipelineSpec, *, serve: Optional[bool] = None, run_id: Optional[str] = None,
        progress: Progress = noop) -> LMResult:
    """Learn a tokenizer and pack the text, train the decoder with Ray Train, publish the best checkpoint as a
    Hugging Face folder (metrics, evaluation and lineage in its manifest), point ``deploy.alias`` at it and,
    optionally, serve it on vLLM and ask it once."""
    from maas.data import run_dir_for
    from maas.eval.tasks import cloze_task, run_on_files
    from maas.models import build_model
    from maas.models.llama import greedy_text, next_word_accuracy, save_hf_folder
    from maas.pipelines.champion import evaluate_lm_champion, text_bits_per_byte, versus_lm, versus_tasks
    from maas.registry import Registry
    from maas.registry.hf_import import check_hf_folder
    from maas.train.trainer import fit

    registry = Registry(spec.store)
    run_id = run_id or new_run_id()
    alias_was = alias_target(spec.store, spec.model.name, spec.deploy.alias)
    run_dir = run_dir_for(registry.location, run_id)
    laps = Laps(progress)
    lap = laps.lap

    base = resolve_base(registry, spec) if spec.model.base else None
    if base is None:
        config, init = spec.model.config(), None
        progress("data", f"{spec.data.source}: BPE tokenizer (<= {config['vocab_size']} tokens), "
                         f"{config['block_size'] + 1}-token blocks")
    else:
        config, init = base["config"], {"base": {"store": registry.location, "ref": base["mv"].ref}}
        progress("data", f"{spec.data.source}: {base['mv'].ref}'s tokenizer, {config['block_size'] + 1}-token blocks")
    data = prepare_lm_data(spec.data, config["block_size"], run_dir, vocab_size=config.get("vocab_size", 0),
                           tokenizer=base["tokenizer"] if base else None)
    c = data.counts
    if base is None:
        config["vocab_size"] = c["vocab_size"]  # what the tokenizer learnt (a small text learns fewer merges)
    lap("data", f"{c['bytes']} bytes -> {c['tokens']} tokens ({c['bytes_per_token']:.2f} bytes/token, vocabulary "
                f"{c['vocab_size']}), {c['lines']} lines ({c['lines_rejected']} quarantined) -> "
                f"{c['splits']['train']} train / {c['splits']['val']} val blocks")

    lines = held_out_lines(data.val, data.tokenizer)
    tasks = ([cloze_task(lines, run_dir)] if spec.eval.cloze and lines else []) + list(spec.eval.tasks)
    champion = None
    if spec.eval.against_champion and alias_was is not None:
        champion = evaluate_lm_champion(registry, spec.model.name, alias_was, lines, tuple(tasks), spec.deploy.llm)
        lap("data", f"champion {champion['ref']}: {_champion_line(champion, len(lines))}")

    import torch

    with torch.device("meta"):  # counted from the shapes: a 1B base is not built on the driver
        shape = build_model(config)
    n_params = sum(p.numel() for p in shape.parameters())
    n_trainable = sum(p.numel() for p in shape.parameters() if p.requires_grad)
    del shape
    t = spec.train
    what = f"Llama {spec.model.size}" if base is None else f"{base['mv'].ref} ({spec.model.finetune} fine-tuning)"
    progress("train", f"{what}: {n_params / 1e6:.2f}M parameters ({n_trainable / 1e6:.3f}M trained), "
                      f"{t.num_workers} x {t.strategy}, {t.epochs} epochs")
    trained = fit(t, config, data.train, data.val, rows=c["splits"]["train"],
                  row_bytes=(config["block_size"] + 1) * 4, run_dir=run_dir, run_name="train", task="lm", init=init)
    per_byte = 1.0 / c["bytes_per_token"]
    for h in trained.history:  # bits per byte: comparable across tokenizers (and with byte-level models)
        if "val_bits_per_token" in h:
            h["val_bits_per_byte"] = h["val_bits_per_token"] * per_byte
    best = {**trained.best_metrics}
    if "val_bits_per_token" in best:
        best["val_bits_per_byte"] = best["val_bits_per_token"] * per_byte
    lap("train", f"best val loss {best.get('val_loss', float('nan')):.3f} (perplexity "
                 f"{best.get('val_perplexity', float('nan')):.1f}, {best.get('val_bits_per_byte', float('nan')):.2f} "
                 "bits/byte)")

    model, tokenizer = trained.model.eval(), data.tokenizer
    sample = greedy_text(model, tokenizer, PROMPT, 48)
    check = next_word_accuracy(model, tokenizer, lines)
    metrics = {k: v for k, v in best.items() if k.startswith(("val_", "train_"))}
    metrics.update(parameters=n_params, trained_parameters=n_trainable,
                   tokens_per_s_train=max((h.get("tokens_per_s", 0) for h in trained.history), default=0.0))
    if check["n"]:  # no held-out lines (short chat answers): no figure rather than a 0 that reads as perfect
        metrics.update(next_word_accuracy=check["accuracy"],
                       held_out_bits_per_byte=text_bits_per_byte(model, tokenizer, lines))
    holds, versus_why = versus_lm(metrics.get("held_out_bits_per_byte"), champion,
                                  spec.eval.max_bits_per_byte_increase)
    lap("evaluate", (f"next-word accuracy {check['accuracy']:.3f} on {check['n']} held-out lines, "
                     f"{metrics['held_out_bits_per_byte']:.4f} bits/byte" if check["n"] else NO_HELD_OUT)
        + f"; greedy sample: {sample[:60]!r}")
    lora = base is not None and spec.model.finetune == "lora"
    task_record = None
    with tempfile.TemporaryDirectory(prefix="maas-lm-") as tmp:
        if lora:  # the adapters alone, as a version of their own on the base version
            from maas.models.hf_lm import ADAPTER_WEIGHTS, check_adapter_folder, save_adapter

            save_adapter(model, tmp)
            files, signature = check_adapter_folder(Path(tmp), base["mv"].signature, base["mv"].ref)
            weights = files[ADAPTER_WEIGHTS]
        else:
            save_hf_folder(model.get_base_model() if hasattr(model, "get_base_model") else model, tokenizer, tmp,
                           spec.generate.model_dump(), base_folder=base["folder"] if base else None)
            files, signature, _ = check_hf_folder(Path(tmp))
            weights = files["model.safetensors"]
        if tasks:  # lm-eval on the very files published, before the decision
            scored = run_on_files(tasks, tmp, base["folder"] if lora else None)
            metrics.update({f"task_{n}": v for n, v in scored.scores().items()})
            lap("evaluate", f"{scored.harness}:{_task_line(scored.scores())}")
            holds_tasks, tasks_why = versus_tasks(scored.scores(), champion, spec.eval.max_task_score_drop)
            holds, versus_why = _both((holds, versus_why), (holds_tasks, tasks_why))
            task_record = scored.record()
        metrics["size_bytes"] = weights.stat().st_size
        method = "lora" if lora else "full" if base else "bf16" if t.precision == "bf16" else "fp32"
        mv = registry.publish(
            spec.model.name, files, runtime="vllm", task="generate", metrics=metrics, signature=signature,
            status=status_of(True, holds), description=versus_why,
            lineage={"kind": "lm", **champion_lineage(holds, versus_why),
                     "data_fingerprint": data.fingerprint, "spec_hash": spec.spec_hash(),
                     "run_id": run_id, "run_dir": run_dir, "data_counts": c, "method": method,
                     "parent": base["mv"].ref if base else None, "checkpoint": trained.checkpoint_path,
                     "train_device": trained.device, "strategy": t.strategy, "history": trained.history,
                     "evaluation": {"next_word": check, "prompt": PROMPT, "greedy_sample": sample,
                                    "tasks": task_record},
                     "architecture": {k: v for k, v in config.items() if k not in ("arch", "hf_config")}})
    what = f"{mv.ref} ({'LoRA adapters on ' + base['mv'].ref if lora else 'Hugging Face folder'}, " \
           f"{metrics['size_bytes'] / 1e6:.2f} MB of weights)"
    if not holds:  # a candidate: the alias stays, and its variants could not beat the champion either
        lap("publish", f"{what} is a candidate: {versus_why}; {spec.model.name}@{spec.deploy.alias} stays at "
                       f"{champion['ref']}")
    else:
        registry.set_alias(spec.model.name, spec.deploy.alias, mv.version, expected=alias_was, by=f"run:{run_id}")
        lap("publish", f"{what}, {spec.model.name}@{spec.deploy.alias}")
    variants, promoted, report = [], mv.ref if holds else champion["ref"], {}
    if spec.compress.variants and holds:
        from maas.pipelines.lm_compress import compress_lm, eval_inputs

        inputs = eval_inputs(data.val, spec.compress, config["block_size"])
        variants, chosen, report = compress_lm(spec, mv.ref, inputs, run_dir, laps, mv.version, run_id)
        promoted = chosen["ref"]
    endpoint = serve_at_end(spec, serve, laps)
    smoke = {}
    if endpoint:
        from maas.pipelines.llm import ask_once

        smoke = ask_once(endpoint, spec.model.name)
        lap("smoke", f"first token {smoke['ttft_ms']:.0f} ms, {smoke['tokens_per_s']:.0f} tokens/s: "
                     f"{smoke['text'][:60]!r}")
    return LMResult(run_id=run_id, run_dir=run_dir, spec_hash=spec.spec_hash(), data_fingerprint=data.fingerprint,
                    data_counts=c, train_device=trained.device, ref=mv.ref, metrics=metrics, history=trained.history,
                    sample=sample, alias=spec.deploy.alias, endpoint=endpoint, smoke=smoke,
                    stage_seconds=laps.seconds, promoted_ref=promoted, variants=variants, report=report,
                    status=mv.status, champion=champion)




# ------------------------------------------------------------------------- what `maas run` and jobs show

def _task_line(scores: Optional[dict]) -> str:
    return "; tasks " + ", ".join(f"{n} {v:.3f}" for n, v in scores.items()) if scores else ""


def _both(first: tuple, second: tuple) -> tuple:
    """Two (holds, why) decisions as one: it holds if both do; why names the failing ones, else both."""
    failing = [why for holds, why in (first, second) if not holds]
    return not failing, "; ".join(failing or [why for _, why in (first, second) if why])


def summary(result: LMResult, spec: LMPipelineSpec) -> str:
    from maas.report import table

    m, nan = result.metrics, float("nan")
    return table(["model", "parameters", "val loss", "perplexity", "bits/byte", "next-word acc", "train tokens/s",
                  "MB"],
                 [[result.ref, f"{m['parameters'] / 1e6:.2f}M", f"{m.get('val_loss', nan):.3f}",
                   f"{m.get('val_perplexity', nan):.1f}", f"{m.get('val_bits_per_byte', nan):.2f}",
                   f"{m.get('next_word_accuracy', nan):.3f}", f"{m['tokens_per_s_train']:.0f}",
                   f"{m['size_bytes'] / 1e6:.2f}"]]) + f"\nsample (greedy): {result.sample!r}" + \
        _decision(result, spec) + _variants(result, spec)


def _decision(result: LMResult, spec: LMPipelineSpec) -> str:
    """Where the alias points after the run and, when there was a champion, how the run compared with it."""
    alias = f"{spec.model.name}@{spec.deploy.alias}"
    line = f"\n{alias} -> {result.ref}" if result.status == "ready" else \
        f"\n{alias} stays at {result.promoted_ref} (the champion): {result.ref} is published as a candidate"
    c = result.champion
    if c:
        mine = result.metrics.get("held_out_bits_per_byte")
        line += f"\nchampion {c['ref']}: " + (c["why"] if not c["comparable"] else NO_HELD_OUT if mine is None else
                                             f"{c['bits_per_byte']:.4f} bits/byte on this run's held-out text, "
                                             f"this run {mine:.4f}")
    return line


def _variants(result: LMResult, spec: LMPipelineSpec) -> str:
    if not result.variants:
        return ""
    return "\n\n" + compress_summary(result.variants, spec, result.promoted_ref, result.report)


def compress_summary(records: list, spec: LMPipelineSpec, promoted: str, report: dict) -> str:
    """The variants' table, where the alias points now and where the report files are."""
    from maas.compress.report import llm_markdown_table

    name = promoted.split("/")[0]
    return (f"{llm_markdown_table(records, spec.compress.concurrency)}\n\n{name}@{spec.deploy.alias} -> "
            f"{promoted}; report: " + ", ".join(f"{k} {v}" for k, v in report.items()))


def try_it(result: LMResult, spec: LMPipelineSpec) -> tuple[str, str]:
    import json

    body = json.dumps({"model": spec.model.name, "prompt": PROMPT, "max_tokens": 64, "stream": True})
    return (f"{result.endpoint}/v1 (completions, chat/completions, models; the openai client works)",
            f"curl -N {result.endpoint}/v1/completions -H 'content-type: application/json' -d '{body}'")


def job_pipeline(spec: LMPipelineSpec, opts: dict, progress: Progress) -> dict:
    result = run(spec, serve=opts.get("serve", False), progress=progress)
    return {"run_id": result.run_id, "run_dir": result.run_dir, "data_counts": result.data_counts,
            "data_fingerprint": result.data_fingerprint, "trained": result.ref, "promoted": result.promoted_ref,
            "alias": result.alias, "variants": variants_summary(result.variants), "report": result.report,
            "metrics": result.metrics, "sample": result.sample, "endpoint": result.endpoint, "smoke": result.smoke,
            "history": result.history, "stage_seconds": result.stage_seconds, "version_status": result.status,
            "champion": result.champion, "summary": summary(result, spec)}


def job_compress(spec: LMPipelineSpec, opts: dict, progress: Progress) -> dict:
    """Compress a published decoder (``--parent``, default: the one ``<model>@<alias>`` serves or, when that is
    a variant, its parent): ``compress.variants`` measured on held-out blocks of ``data`` tokenized with the
    parent's own tokenizer, gated, published, the best promoted to ``deploy.alias``."""
    from transformers import AutoTokenizer

    from maas.data import run_dir_for
    from maas.exceptions import JobError
    from maas.pipelines.lm_compress import compress_lm, eval_inputs
    from maas.registry import Registry

    if not spec.compress.variants:
        raise JobError("compress.variants is empty: name the methods to build (bf16, w8a8, w4a16, w8a16)")
    registry, run_id = Registry(spec.store), new_run_id()
    parent = registry.resolve(opts.get("parent") or f"{spec.model.name}@{spec.deploy.alias}")
    if parent.lineage.get("quantization") and not opts.get("parent"):
        parent = registry.resolve(parent.lineage["parent"])
    if not on_engine(parent) or parent.signature.get("format") != "huggingface" or parent.lineage.get(
            "quantization"):
        raise JobError(f"compress: {parent.ref} is not a whole Hugging Face causal LM to quantize (format "
                         f"{parent.signature.get('format')}, quantization {parent.lineage.get('quantization')})")
    alias_was = alias_target(spec.store, parent.name, spec.deploy.alias)  # variants join the parent's model
    laps, run_dir = Laps(progress), run_dir_for(registry.location, run_id)
    folder, parent = registry.fetch_version(parent)
    max_len = int(parent.signature.get("max_position_embeddings") or spec.model.block_size + 1)
    data = prepare_lm_data(spec.data, min(spec.model.block_size, max_len - 1), run_dir,
                           tokenizer=AutoTokenizer.from_pretrained(folder))
    laps.lap("data", f"{data.counts['splits']['val']} held-out blocks of {spec.data.source}, "
                     f"{parent.ref}'s tokenizer")
    records, chosen, report = compress_lm(spec, parent.ref, eval_inputs(data.val, spec.compress, max_len), run_dir,
                                          laps, alias_was, run_id)
    return {"run_id": run_id, "run_dir": run_dir, "parent": parent.ref, "variants": variants_summary(records),
            "promoted": chosen["ref"], "alias": spec.deploy.alias, "report": report,
            "stage_seconds": laps.seconds, "summary": compress_summary(records, spec, chosen["ref"], report)}


JOB_STAGES = {"pipeline": job_pipeline, "compress": job_compress, "deploy": job_deploy}
