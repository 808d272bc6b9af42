"""Text as token blocks for a language model (the data stage of ``kind: lm``).

Text comes from installed packages' documentation (nothing is downloaded) or from UTF-8 files anywhere
pyarrow.fs reaches. A byte-level BPE tokenizer is learnt from the text (``maas.models.llama.train_tokenizer``)
unless the run brings one (fine-tuning a base model). A Ray Data pass splits each document into lines,
quarantines lines that are not UTF-8 or hold NUL bytes (counted and written to ``<run>/quarantine.jsonl``,
never dropped silently), tokenizes the rest (each document ends with the end-of-text token) and packs the
ids into blocks of ``block_size + 1`` tokens (stride ``block_size``, so every token is a target exactly
once); a seeded hash of each block sends it to train or val. ``format: chat`` reads JSON lines of
conversations instead (``maas.data.chat``): one row each, the assistant's tokens its only targets.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from maas.data.chat import reject_reason
from maas.exceptions import DataError
from maas.spec import TextDataSpec

QUARANTINE_KEEP = 1000  # quarantined lines written out in full (all are counted)


@dataclass
class LMData:
    train: object  # ray.data.Dataset of {"tokens": int32[block_size + 1]}
    val: Optional[object]
    counts: dict  # bytes, tokens, bytes_per_token, lines, lines_rejected, splits, block_size, vocab_size
    fingerprint: str
    block_size: int
    tokenizer: object  # the transformers fast tokenizer the blocks were made with


def _documents(spec: TextDataSpec) -> tuple[list[dict], dict]:
    """[{"name", "data": bytes}] to pack, and the fingerprint inputs."""
    if spec.source == "package-docs":
        from maas.data.corpus import english_corpus

        sentences = english_corpus(limit=spec.limit, packages=tuple(spec.packages))
        if not sentences:
            raise DataError("data: the installed packages gave no English sentences; check data.packages")
        # a few documents, so the packing pass runs as parallel Ray Data tasks
        n = max(1, min(16, len(sentences) // 2000))
        step = math.ceil(len(sentences) / n)
        return [{"name": f"package-docs/{i}", "data": "\n".join(sentences[i * step:(i + 1) * step]).encode()}
                for i in range(n)], {"packages": list(spec.packages), "limit": spec.limit}
    from maas.data.source import resolve_files

    fs, files, _ = resolve_files(spec.path, "text")
    docs = []
    for f in files:
        with fs.open_input_stream(f) as stream:
            docs.append({"name": f, "data": stream.read()})
    return docs, {"files": [f.rsplit("/", 1)[-1] for f in files], "limit": spec.limit}


def _good_lines(data: bytes) -> tuple[list[tuple[int, bytes]], list[tuple[int, str, bytes]]]:
    """([(line number, line)] to learn from, [(line number, why, line)] to quarantine): not UTF-8, or holding
    NUL bytes."""
    good, bad = [], []
    for i, line in enumerate(bytes(data).split(b"\n")):
        why = "NUL byte" if b"\x00" in line else None
        if why is None:
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                why = f"not UTF-8 ({exc.reason} at byte {exc.start})"
        if why is None:
            good.append((i + 1, line))
        else:
            bad.append((i + 1, why, line))
    return good, bad


def _split_of(block: np.ndarray, seed: int, val_fraction: float) -> str:
    h = int.from_bytes(hashlib.sha256(seed.to_bytes(8, "little", signed=True) + block.tobytes()).digest()[:8],
                       "big") / 2**64
    return "val" if h < val_fraction else "train"


def _pack(batch: dict, block_size: int, val_fraction: float, seed: int, tokenizer_json: str, eos_id: int,
          chat: Optional[dict] = None) -> dict:
    """Ray Data map_batches: documents -> token blocks (train/val) plus quarantined lines ('reject' rows);
    ``chat``: JSON lines of conversations -> one row each, with its targets (see ``maas.data.chat``)."""
    if chat is not None:
        return _pack_chat(batch, block_size, val_fraction, seed, tokenizer_json, chat)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    tokens, split, reason = [], [], []
    width = block_size + 1
    for name, data in zip(batch["name"], batch["data"]):
        good, bad = _good_lines(data)
        for line_no, why, line in bad:
            tokens.append(np.zeros(width, np.int32))
            split.append("reject")
            reason.append(reject_reason(str(name), line_no, why, line))
        ids = tok.encode(b"\n".join(line for _, line in good).decode("utf-8") + "\n", add_special_tokens=False).ids
        ids += [eos_id] if eos_id is not None else []
        buf = np.asarray(ids, dtype=np.int32)
        for start in range(0, len(buf) - width + 1, block_size):
            block = buf[start:start + width]
            tokens.append(block.copy())
            split.append(_split_of(block, seed, val_fraction))
            reason.append("")
        tokens.append(np.zeros(width, np.int32))  # one 'count' row per document: its token count
        split.append("count")
        reason.append(str(len(ids)))
    return {"tokens": np.stack(tokens) if tokens else np.zeros((0, width), np.int32),
            "split": np.array(split, dtype=object), "reason": np.array(reason, dtype=object)}


def _pack_chat(batch: dict, block_size: int, val_fraction: float, seed: int, tokenizer_json: str,
               chat: dict) -> dict:
    from maas.data.chat import chat_rows, fast_tokenizer

    tok = fast_tokenizer(tokenizer_json, chat)
    width = block_size + 1
    tokens, targets, split, reason = [], [], [], []
    for name, data in zip(batch["name"], batch["data"]):
        good, bad = _good_lines(data)
        rows = [(None, None, reject_reason(str(name), n, why, line)) for n, why, line in bad]
        n_tokens = 0
        for row, target, rejected in [*rows, *chat_rows(str(name), good, tok, width, chat["pad_id"])]:
            tokens.append(row if row is not None else np.zeros(width, np.int32))
            targets.append(target if target is not None else np.zeros(width - 1, np.int32))
            split.append("reject" if rejected else _split_of(row, seed, val_fraction))
            reason.append(rejected or "")
            n_tokens += int((target >= 0).sum()) if target is not None else 0
        tokens.append(np.zeros(width, np.int32))  # the 'count' row: tokens learnt from this document
        targets.append(np.zeros(width - 1, np.int32))
        split.append("count")
        reason.append(str(n_tokens))
    return {"tokens": np.stack(tokens), "targets": np.stack(targets), "split": np.array(split, dtype=object),
            "reason": np.array(reason, dtype=object)}


def _text_lines(docs: list[dict], chat: bool = False):
    """The learnable text of every document (what a tokenizer is trained on): its lines, or for chat data
    the messages' contents of the lines that parse."""
    for d in docs:
        for _, line in _good_lines(d["data"])[0]:
            if not chat:
                yield line.decode("utf-8")
                continue
            try:
                record = json.loads(line)
                yield from (m["content"] for m in record["messages"] if isinstance(m.get("content"), str))
            except (ValueError, TypeError, KeyError, AttributeError):
                continue


def prepare_lm_data(spec: TextDataSpec, block_size: int, run_dir: str, *, vocab_size: int = 1024,
                    tokenizer=None) -> LMData:
    """Read, quarantine, tokenize, pack and split the text (see the module docstring). ``tokenizer``: a
    transformers fast tokenizer to use (a base model's); else one of at most ``vocab_size`` tokens is learnt.

    Raises:
        DataError: no text, too little for one block, or more than ``max_reject_fraction`` of lines quarantined.
    """
    import ray

    docs, extra = _documents(spec)
    if spec.source == "files" and spec.limit:
        kept, left = [], spec.limit
        for d in docs:
            lines = d["data"].split(b"\n")[:left]
            left -= len(lines)
            kept.append({"name": d["name"], "data": b"\n".join(lines)})
            if left <= 0:
                break
        docs = kept
    is_chat = spec.format == "chat"
    if tokenizer is None:
        from maas.models.llama import train_tokenizer

        tokenizer = train_tokenizer(_text_lines(docs, is_chat), vocab_size)
    tokenizer_json = tokenizer.backend_tokenizer.to_str()
    chat = None
    if is_chat:
        from maas.data.chat import chat_spec

        chat = chat_spec(tokenizer)
        if chat is None:
            raise DataError("data.format=chat needs a tokenizer with a chat template; the base model's has none: "
                            "train on plain text (format: text) or import a model whose tokenizer has one")
    digest = hashlib.sha256(json.dumps({**extra, "block_size": block_size, "seed": spec.seed, "format": spec.format,
                                        "val_fraction": spec.val_fraction}, sort_keys=True).encode())
    digest.update(tokenizer_json.encode())
    for d in docs:
        digest.update(d["data"])
    lines_total = sum(d["data"].count(b"\n") + 1 for d in docs)
    ds = ray.data.from_items(docs, override_num_blocks=len(docs)).map_batches(
        _pack, batch_size=1, fn_kwargs={"block_size": block_size, "val_fraction": spec.val_fraction,
                                        "seed": spec.seed, "tokenizer_json": tokenizer_json,
                                        "eos_id": tokenizer.eos_token_id, "chat": chat}).materialize()
    quarantined = ds.filter(expr="split == 'reject'").materialize()
    rejects = quarantined.take(QUARANTINE_KEEP)
    n_rejected = quarantined.count()
    columns = ["tokens", "targets"] if is_chat else ["tokens"]
    splits = {s: ds.filter(expr=f"split == '{s}'").select_columns(columns).materialize() for s in ("train", "val")}
    n_tokens = sum(int(r["reason"]) for r in ds.filter(expr="split == 'count'").select_columns(["reason"]).take_all())
    learnt_bytes = sum(len(line.encode()) + 1 for line in _text_lines(docs, is_chat))
    counts = {"documents": len(docs), "lines": lines_total, "lines_rejected": n_rejected,
              "bytes": int(sum(len(d["data"]) for d in docs)), "tokens": n_tokens,
              "bytes_per_token": learnt_bytes / max(n_tokens, 1), "vocab_size": len(tokenizer),
              "splits": {s: d.count() for s, d in splits.items()}, "block_size": block_size}
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run_dir) / "quarantine.jsonl", "w") as f:
        for r in rejects:
            f.write(r["reason"] + "\n")
    (Path(run_dir) / "data_report.json").write_text(json.dumps({"counts": counts,
                                                                "fingerprint": digest.hexdigest()}, indent=2))
    if lines_total and n_rejected / lines_total > spec.max_reject_fraction:
        raise DataError(f"data: {n_rejected} of {lines_total} lines quarantined ({n_rejected / lines_total:.1%}), "
                        f"over data.max_reject_fraction={spec.max_reject_fraction}; see {run_dir}/quarantine.jsonl")
    if counts["splits"]["train"] == 0:
        raise DataError(f"data: {counts['bytes']} bytes of text ({n_tokens} tokens) make no training block of "
                        f"{block_size + 1} tokens; add text or lower model.block_size")
    return LMData(train=splits["train"], val=splits["val"] if counts["splits"]["val"] else None, counts=counts,
                  fingerprint=digest.hexdigest(), block_size=block_size, tokenizer=tokenizer)
