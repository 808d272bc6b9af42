"""Batch generation with a registered language model: Ray Data LLM's vLLM engine processor
(``ray.data.llm``) on the registry's verified folder, with the engine settings the endpoint would use
(``maas.serve.runtimes.vllm_config.llm_config``: dtype, context, KV cache, LoRA, GPUs or CPUs).

The input holds a ``prompt`` column (text, answered as ``/v1/completions`` answers it), a ``messages`` column
(a chat: a list of ``{"role", "content"}`` or its JSON text, answered as ``/v1/chat/completions`` answers it,
the model's own chat template applied and no special token added on top), or both (a row with a chat is a
chat). Optional ``max_tokens`` and ``temperature`` columns set a row's own sampling (an OpenAI batch line's). A
LoRA adapter version runs on its base's engine with the adapter loaded by vLLM's multi-LoRA, as the endpoint
serves it.

A row that cannot be asked (an empty prompt, a chat that is not a list of role/content turns) goes through the
engine as a one-token placeholder marked with its reason, so every row flows through one pipeline and ends in
exactly one output file; a row the engine refuses (a prompt longer than the context) keeps the engine's error
(``should_continue_on_error``). Both are rejects, with the reason.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import pandas as pd

from maas.batch.files import ANSWERS, REJECTS, open_output, write_part
from maas.exceptions import BatchError

PROMPT, MESSAGES = "prompt", "messages"
ROLES = ("system", "user", "assistant")
MAX_PROMPT_CHARS = 1_000_000
_PLACEHOLDER = {PROMPT: ".", MESSAGES: [{"role": "user", "content": "."}]}


def prompt_columns(have: list[str]) -> list[str]:
    """The columns a language model's batch reads: ``prompt`` (text) and/or ``messages`` (chats); a row with a
    chat is asked as a chat, any other as a completion."""
    columns = [c for c in (PROMPT, MESSAGES) if c in have]
    if not columns:
        raise BatchError(f"--input: a language model reads a {PROMPT!r} column (text) or a {MESSAGES!r} column (a "
                         f"chat: a list of {{role, content}}); the input has {', '.join(have[:12])}"
                         f"{' ...' if len(have) > 12 else ''}")
    return columns


def sampling(max_tokens: Optional[int], temperature: Optional[float], spec) -> dict:
    """vLLM's sampling parameters for every row: greedy unless ``temperature`` is given, at most ``max_tokens``
    new tokens (default and cap: ``deploy.llm.max_tokens``, as the endpoint caps a request)."""
    tokens = spec.max_tokens if max_tokens is None else max_tokens
    if not 1 <= tokens <= spec.max_tokens:
        raise BatchError(f"--max-tokens must be between 1 and {spec.max_tokens} (deploy.llm.max_tokens), got {tokens}")
    if temperature is not None and not 0 <= temperature <= 2:
        raise BatchError(f"--temperature must be between 0 and 2, got {temperature}")
    return {"max_tokens": int(tokens), "temperature": float(temperature or 0.0)}


def check_row(row: dict) -> tuple[str, Any, Optional[str]]:
    """(``prompt`` or ``messages``, what the engine is given, None) for a row that can be asked; else (the
    column, a placeholder, the reason it cannot). A row with a chat (not null) is a chat."""
    chat = row.get(MESSAGES)
    if chat is not None and not (isinstance(chat, float) and chat != chat):  # NaN: pandas' empty cell
        turns, why = _turns(chat)
        if why is not None:
            return MESSAGES, _PLACEHOLDER[MESSAGES], f"column {MESSAGES!r} {why}"
        return MESSAGES, turns, None
    value = row.get(PROMPT)
    if not isinstance(value, str) or not value.strip():
        return PROMPT, _PLACEHOLDER[PROMPT], f"column {PROMPT!r} must hold a non-empty text"
    if len(value) > MAX_PROMPT_CHARS:
        return PROMPT, _PLACEHOLDER[PROMPT], f"column {PROMPT!r} holds {len(value):,} characters (at most " \
                                             f"{MAX_PROMPT_CHARS:,})"
    return PROMPT, value, None


def row_sampling(row: dict, params: dict, cap: int) -> tuple[dict, Optional[str]]:
    """``params`` with the row's own ``max_tokens`` (at most ``cap``) and ``temperature`` where it has them (an
    OpenAI batch line's body; optional columns of a batch input), or the reason they cannot be used."""
    out = dict(params)
    for key, low, high in (("max_tokens", 1, cap), ("temperature", 0, 2)):
        value = row.get(key)
        if value is None or (isinstance(value, float) and value != value):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high or \
                (key == "max_tokens" and value != int(value)):
            return params, f"{key!r} must be a {'whole ' if key == 'max_tokens' else ''}number from {low} to {high}"
        out[key] = int(value) if key == "max_tokens" else float(value)
    return out, None


def _turns(value: Any) -> tuple[Optional[list], Optional[str]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None, "holds text that is not JSON"
    if hasattr(value, "tolist"):  # Arrow lists arrive as numpy arrays
        value = value.tolist()
    if not isinstance(value, list) or not value:
        return None, "must hold a non-empty list of {role, content} turns"
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            return None, f"turn {i} must be {{role: {'|'.join(ROLES)}, content: text}}"
        turns.append({"role": turn["role"], "content": turn["content"]})
    if sum(len(t["content"]) for t in turns) > MAX_PROMPT_CHARS:
        return None, f"holds over {MAX_PROMPT_CHARS:,} characters"
    return turns, None


class Ask:
    """Ray Data actor before the engine: each row's prompt (a chat rendered with the model's own chat template
    and asked without special tokens added, as vLLM's chat route asks it; a text with them, as its completions
    route does), its sampling, and why it cannot be asked when it cannot."""

    def __init__(self, folder: str, id_column: str, params: dict, adapter: Optional[str], cap: int):
        self.folder, self.id_column, self.params, self.adapter, self.cap = folder, id_column, params, adapter, cap
        self.tokenizer = None

    def __call__(self, row: dict) -> dict:
        column, asked, why = check_row(row)
        params, bad = row_sampling(row, self.params, self.cap)
        if bad and not why:  # a row that can be asked but not with its own sampling: its column's placeholder
            asked, why = _PLACEHOLDER[column], bad
        if column == MESSAGES:
            asked = self._template(asked)
        out = {"maas_id": row[self.id_column], "prompt": asked, "maas_reject": why or "",
               "maas_max_tokens": params["max_tokens"],
               "sampling_params": {**params, "max_tokens": 1} if why else params,
               "tokenization_kwargs": {"add_special_tokens": column == PROMPT}}
        if self.adapter:
            out["model"] = self.adapter  # a local folder: Ray Data LLM hands it to vLLM as the LoRA's path
        return out

    def _template(self, turns: list) -> str:
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        return self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


def _answered(row: dict) -> dict:
    return {"maas_id": row["maas_id"], "maas_reject": row["maas_reject"], "maas_max_tokens": row["maas_max_tokens"],
            "text": row.get("generated_text") or "",
            "prompt_tokens": int(row.get("num_input_tokens") or 0),
            "completion_tokens": int(row.get("num_generated_tokens") or 0)}


class Writer:
    """After the engine: each block's answers and rejects written whole (``maas.batch.files``); its counts out."""

    def __init__(self, output: str, id_column: str, fmt: str, ref: str):
        self.fs, self.output = open_output(output)
        self.id_column, self.fmt, self.ref = id_column, fmt, ref

    def __call__(self, df: pd.DataFrame) -> pd.DataFrame:
        ids = df["maas_id"]  # a row the engine failed skips the postprocessing: it keeps its error, and maas_id
        error = df["__inference_error__"] if "__inference_error__" in df else pd.Series("", index=df.index)
        asked = df["maas_reject"].fillna("")
        reason = asked.where(asked != "", error.map(_engine_error)).to_numpy()
        bad = reason != ""
        ok = df[~bad]
        done = ok["completion_tokens"].fillna(0).astype(int).to_numpy()
        limit = ok["maas_max_tokens"].to_numpy()
        answers = pd.DataFrame({self.id_column: ids[~bad].to_numpy(), "text": ok["text"].fillna("").to_numpy(),
                                "finish_reason": ["length" if n >= cap else "stop" for n, cap in zip(done, limit)],
                                "prompt_tokens": ok["prompt_tokens"].fillna(0).astype(int).to_numpy(),
                                "completion_tokens": done, "version": self.ref})
        rejects = pd.DataFrame({self.id_column: ids[bad].to_numpy(), "reason": reason[bad], "version": self.ref})
        write_part(self.fs, f"{self.output}/{ANSWERS}", answers, self.id_column, self.fmt)
        write_part(self.fs, f"{self.output}/{REJECTS}", rejects, self.id_column, self.fmt)
        return pd.DataFrame({"answered": [len(answers)], "rejected": [len(rejects)], "skipped": [0]})


def _engine_error(message) -> str:
    if not isinstance(message, str) or not message.strip():  # Arrow hands "no error" over as NA at times
        return ""
    return f"the engine refused it: {message.strip().splitlines()[-1][:300]}"


def answers(ds, store: str, mv, output: str, id_column: str, fmt: str, params: dict,
            concurrency: Optional[int], batch_size: int, spec):
    """The Ray dataset of per-block counts that answering ``ds`` with language model version ``mv`` makes."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from maas.models.vllm_kernels import check_vllm_kernels
    from maas.registry import Registry
    from maas.serve.runtimes.vllm_config import engine_of, is_adapter, llm_config

    registry = Registry(store)
    if is_adapter(mv):
        adapter = str(registry.fetch_version(mv)[0])
        name, version, _ = engine_of(mv)
        folder, base = registry.fetch(f"{name}/{version}")
    else:
        adapter, (folder, base) = None, registry.fetch_version(mv)
    check_vllm_kernels(str(folder))
    rank = int(mv.signature.get("lora_rank", 1)) if adapter else 0
    cfg = llm_config(store, base, spec, rank, source=str(folder))
    env = dict((cfg.runtime_env or {}).get("env_vars") or {})
    config = vLLMEngineProcessorConfig(
        model_source=str(folder), engine_kwargs=dict(cfg.engine_kwargs), batch_size=batch_size,
        concurrency=concurrency or 1, placement_group_config=cfg.placement_group_config,
        runtime_env={"env_vars": env} if env else None, should_continue_on_error=True,
        chat_template_stage=False, tokenize_stage=False, detokenize_stage=False)
    processor = build_processor(config, postprocess=_answered)
    # the asking actor holds no CPU of its own: on 2 cores it and the engine would hold both, and Ray Data's
    # read tasks would never run (measured: with Ray Data LLM's own chat-template actor the batch stalled)
    asked = ds.map(Ask, fn_constructor_kwargs={"folder": str(folder), "id_column": id_column, "params": params,
                                               "adapter": adapter, "cap": spec.max_tokens}, concurrency=1, num_cpus=0)
    return processor(asked).map_batches(
        Writer, fn_constructor_kwargs={"output": output, "id_column": id_column, "fmt": fmt, "ref": mv.ref},
        batch_size=batch_size, batch_format="pandas", concurrency=1, num_cpus=0)
