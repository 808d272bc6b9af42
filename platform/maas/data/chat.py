"""Conversations as training rows (``data.format: chat``): JSON lines of ``{"messages": [{"role", "content"},
...]}``, rendered with the model's chat template, one conversation per row, only the assistant's tokens as
targets. A line that is not UTF-8, not JSON, has malformed messages, or renders longer than the context is
quarantined with its reason, never dropped silently."""

from __future__ import annotations

import json
from typing import Optional

import numpy as np

IGNORE = -100  # no target here (the train loop's cross-entropy ignore_index)
ROLES = ("system", "user", "assistant")


def fast_tokenizer(tokenizer_json: str, chat: dict):
    """A transformers fast tokenizer rebuilt in a Ray Data task from ``tokenizer.json``'s text and the chat
    template and special tokens (``chat``: template, bos, eos, pad)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json), bos_token=chat.get("bos"),
                                  eos_token=chat.get("eos"), pad_token=chat.get("pad"))
    tok.chat_template = chat["template"]
    return tok


def chat_spec(tokenizer) -> Optional[dict]:
    """What a task needs to render conversations like ``tokenizer`` does (None: it has no chat template)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {"template": template, "bos": tokenizer.bos_token, "eos": tokenizer.eos_token,
            "pad": tokenizer.pad_token, "pad_id": int(pad if pad is not None else 0)}


def messages_problem(record) -> Optional[str]:
    """Why a parsed line is not a conversation to learn from (None: it is one)."""
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list) or not record["messages"]:
        return 'not an object with a non-empty "messages" list'
    for i, m in enumerate(record["messages"]):
        if not isinstance(m, dict) or set(m) - {"role", "content", "name"}:
            return f"messages[{i}] is not an object of role and content"
        if m.get("role") not in ROLES:
            return f"messages[{i}].role {m.get('role')!r} is not one of {', '.join(ROLES)}"
        if not isinstance(m.get("content"), str):
            return f"messages[{i}].content is not a string"
    if not any(m["role"] == "assistant" for m in record["messages"]):
        return "no assistant message: nothing to learn"
    return None


def render(tok, messages: list[dict]) -> tuple[list[int], np.ndarray]:
    """(token ids of the whole conversation, 1 where a token belongs to an assistant's turn). An assistant
    turn's tokens are those between the prompt rendered up to it (with the generation prompt) and the
    conversation rendered through it."""
    def ids(msgs, prompt: bool) -> list[int]:
        out = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=prompt)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)

    full = ids(messages, False)
    mask = np.zeros(len(full), np.int8)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            start, end = len(ids(messages[:i], True)) if i else 0, len(ids(messages[:i + 1], False))
            mask[start:end] = 1
    return full, mask


def reject_reason(name: str, line_no: int, why: str, line: bytes) -> str:
    """A quarantined line as ``quarantine.jsonl`` records it: where, why, and its first 200 bytes."""
    return json.dumps({"source": name, "line": line_no, "reason": why, "text": line[:200].decode("utf-8", "replace")})


def chat_rows(name: str, lines: list[tuple[int, bytes]], tok, width: int, pad_id: int):
    """Yield (tokens[width], targets[width - 1], None) per conversation, or (None, None, reject reason JSON)."""
    for line_no, line in lines:
        if not line.strip():
            continue
        why = None
        try:
            record = json.loads(line)
            why = messages_problem(record)
        except ValueError as exc:
            why = f"not JSON ({exc})"
        if why is None:
            full, mask = render(tok, record["messages"])
            if len(full) > width:
                why = f"over the context: {len(full)} tokens, the model's block is {width}"
        if why is not None:
            yield None, None, reject_reason(name, line_no, why, line)
            continue
        tokens = np.full(width, pad_id, np.int32)
        tokens[:len(full)] = full
        targets = np.full(width - 1, IGNORE, np.int32)
        learn = np.nonzero(mask[1:])[0]  # position t predicts token t + 1
        targets[learn] = tokens[learn + 1]
        yield tokens, targets, None
