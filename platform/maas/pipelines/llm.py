"""The large-language-model kind (``kind: llm``): a Hugging Face causal LM (a folder, local or in object
storage, or a random tiny Llama built here for the demo) -> the registry (every file checksummed, the source
in lineage) -> ``<model>@<alias>`` -> vLLM engines through Ray Serve LLM behind the maas endpoint, answered
once through ``/v1/chat/completions`` to measure the first token and the decode speed."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

from maas.pipelines.base import Laps, Progress, alias_target, job_deploy, new_run_id, noop, serve_at_end
from maas.spec import LLMPipelineSpec

SPEC = LLMPipelineSpec


@dataclass
class LLMResult:
    run_id: str
    spec_hash: str
    ref: str
    source: str
    signature: dict
    size_bytes: int
    files: int
    alias: str = "production"
    endpoint: Optional[str] = None
    smoke: dict = field(default_factory=dict)
    stage_seconds: dict = field(default_factory=dict)
    promoted_ref: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def run(spec: LLMPipelineSpec, *, serve: Optional[bool] = None, run_id: Optional[str] = None,
        progress: Progress = noop) -> LLMResult:
    """Import the model as a new version, point ``deploy.alias`` at it (if nobody moved the alias since the
    run started) and, optionally, serve it and ask it once."""
    from maas.registry import Registry
    from maas.registry.hf_import import import_hf_model

    registry = Registry(spec.store)
    run_id = run_id or new_run_id()
    alias_was = alias_target(spec.store, spec.model.name, spec.deploy.alias)
    laps = Laps(progress)
    source = spec.model.source
    progress("import", source)
    with tempfile.TemporaryDirectory(prefix="maas-llm-") as tmp:
        if source.startswith("random:"):
            from maas.models import make_tiny_llama

            folder = str(make_tiny_llama(tmp, seed=spec.model.seed))
        else:
            folder = source
        mv, skipped = import_hf_model(registry, folder, spec.model.name, by=f"run:{run_id}")
    sig = mv.signature
    not_imported = f"; not imported: {', '.join(skipped)}" if skipped else ""
    laps.lap("import", f"{mv.ref}: {sig.get('architecture')}, {len(mv.files)} files, {mv.size_bytes / 1e6:.1f} MB, "
                       f"context {sig.get('max_position_embeddings')}{not_imported}")
    registry.set_alias(spec.model.name, spec.deploy.alias, mv.version, expected=alias_was, by=f"run:{run_id}")
    laps.lap("promote", f"{spec.model.name}@{spec.deploy.alias} -> {mv.ref}")
    endpoint = serve_at_end(spec, serve, laps)
    smoke = {}
    if endpoint:
        ask_once(endpoint, spec.model.name, max_tokens=2)  # the first request warms the path up
        smoke = ask_once(endpoint, spec.model.name)
        laps.lap("smoke", f"first token {smoke['ttft_ms']:.0f} ms, {smoke['tokens_per_s']:.0f} tokens/s "
                          f"({smoke['completion_tokens']} tokens): {smoke['text'][:60]!r}")
    return LLMResult(run_id=run_id, spec_hash=spec.spec_hash(), ref=mv.ref, source=source, signature=sig,
                     size_bytes=mv.size_bytes, files=len(mv.files), alias=spec.deploy.alias, endpoint=endpoint,
                     smoke=smoke, stage_seconds=laps.seconds, promoted_ref=mv.ref)


def ask_once(endpoint: str, model: str, max_tokens: int = 32) -> dict:
    """One streamed chat request: time to first token, decode speed, the text (API keys: MAAS_API_KEY)."""
    import os

    import requests

    headers = {"Authorization": f"Bearer {os.environ['MAAS_API_KEY']}"} if os.environ.get("MAAS_API_KEY") else {}
    body = {"model": model, "messages": [{"role": "user", "content": "Say something."}], "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first, text, usage = None, [], {}
    with requests.post(f"{endpoint}/v1/chat/completions", json=body, headers=headers, stream=True, timeout=120) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices"):
                first = first or time.perf_counter()
                text.append(chunk["choices"][0].get("delta", {}).get("content") or "")
            usage = chunk.get("usage") or usage
    ended = time.perf_counter()
    tokens = int(usage.get("completion_tokens", 0))
    return {"ttft_ms": ((first or ended) - started) * 1e3, "completion_tokens": tokens, "text": "".join(text),
            "tokens_per_s": tokens / max(ended - started, 1e-9)}


# ------------------------------------------------------------------------- what `maas run` and jobs show

def summary(result: LLMResult, spec: LLMPipelineSpec) -> str:
    from maas.report import table

    s, m = result.signature, result.smoke
    return table(["model", "architecture", "context", "chat template", "files", "MB", "first token ms",
                  "tokens/s (c=1)"],
                 [[result.ref, s.get("architecture", "?"), str(s.get("max_position_embeddings", "?")),
                   "yes" if s.get("chat_template") else "no", str(result.files), f"{result.size_bytes / 1e6:.1f}",
                   f"{m['ttft_ms']:.0f}" if m else "-", f"{m['tokens_per_s']:.0f}" if m else "-"]])


def try_it(result: LLMResult, spec: LLMPipelineSpec) -> tuple[str, str]:
    body = json.dumps({"model": spec.model.name, "messages": [{"role": "user", "content": "Hello!"}],
                       "max_tokens": 32, "stream": True})
    return (f"{result.endpoint}/v1 (chat/completions, completions, models; the openai client works)",
            f"curl -N {result.endpoint}/v1/chat/completions -H 'content-type: application/json' -d '{body}'")


def job_pipeline(spec: LLMPipelineSpec, opts: dict, progress: Progress) -> dict:
    result = run(spec, serve=opts.get("serve", False), progress=progress)
    return {"run_id": result.run_id, "promoted": result.ref, "alias": result.alias, "source": result.source,
            "endpoint": result.endpoint, "smoke": result.smoke, "stage_seconds": result.stage_seconds,
            "summary": summary(result, spec)}


JOB_STAGES = {"pipeline": job_pipeline, "deploy": job_deploy}
