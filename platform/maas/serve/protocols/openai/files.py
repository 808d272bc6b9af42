"""The OpenAI Batch API's files and batch objects, kept in the registry's store (``{store}/openai/``: a local
folder or object storage), so every replica and node of an endpoint sees the same ones.

A file is its bytes (``files/{id}``) and its object (``files/{id}.json``); a batch is its object
(``batches/{id}.json``, written by its run), its run's arguments and launches (``batches/{id}.run.json``) and
a working folder (``batches/{id}/``: the rows handed to ``maas batch`` and its output). Each object records
its owner (the digest of the API key that made it, or ``open`` when the endpoint has no keys) and is answered
without it; a key sees only its own files and batches.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Optional

import pyarrow.fs as pafs

from maas.registry.objects import open_store
from maas.storage import open_uri

OWNER = "maas_owner"
TERMINAL = ("completed", "failed", "cancelled", "expired")
# a batch's endpoints: the column of maas batch's input each line's body becomes
ENDPOINTS = {"/v1/completions": "prompt", "/v1/chat/completions": "messages", "/v1/embeddings": "input"}


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def public(obj: dict) -> dict:
    """An object as the API answers it: without its owner."""
    return {k: v for k, v in obj.items() if k != OWNER}


class BatchStore:
    """Files and batches under ``{store}/openai``."""

    def __init__(self, store: str):
        self.store = store
        self.fs, root = open_uri(store)
        self.root = f"{root.rstrip('/')}/openai"
        self.objects = open_store(store)

    def uri(self, rel: str) -> str:
        """The URI of ``rel`` under ``{store}/openai`` (a batch's working folder: ``maas batch`` reads it)."""
        return f"{self.store.rstrip('/')}/openai/{rel}"

    def parts(self, rel: str) -> list[dict]:
        """The rows of the JSON Lines part files ``maas batch`` wrote in ``rel``."""
        infos = self.fs.get_file_info(pafs.FileSelector(f"{self.root}/{rel}", allow_not_found=True))
        rows = []
        for path in sorted(i.path for i in infos if i.base_name.startswith("part-")):
            with self.fs.open_input_stream(path) as f:
                rows += [json.loads(line) for line in f.read().splitlines() if line.strip()]
        return rows

    # ---- files
    def put_file(self, owner: str, filename: str, purpose: str, data: bytes) -> dict:
        obj = {"id": new_id("file-"), "object": "file", "bytes": len(data), "created_at": int(time.time()),
               "filename": filename, "purpose": purpose, "status": "processed", "expires_at": None, OWNER: owner}
        self.write(f"files/{obj['id']}", data)
        self.write(f"files/{obj['id']}.json", json.dumps(obj).encode())
        return obj

    def file(self, owner: str, file_id: str) -> Optional[dict]:
        """The file's object, or None when there is none or another key owns it."""
        obj = self._read_json(f"files/{file_id}.json") if _safe(file_id) else None
        return obj if obj is not None and obj.get(OWNER) == owner else None

    def content(self, file_id: str) -> bytes:
        return self._read(f"files/{file_id}")

    # ---- batches
    def put_batch(self, obj: dict) -> dict:
        self.write(f"batches/{obj['id']}.json", json.dumps(obj).encode())
        return obj

    def batch(self, owner: Optional[str], batch_id: str) -> Optional[dict]:
        """The batch's object (any owner's when ``owner`` is None), or None."""
        obj = self._read_json(f"batches/{batch_id}.json") if _safe(batch_id) else None
        return obj if obj is not None and (owner is None or obj.get(OWNER) == owner) else None

    def update(self, batch_id: str, **fields) -> dict:
        """Set ``fields`` on a batch (its run is the one writer), keeping a cancellation asked meanwhile."""
        obj = self.batch(None, batch_id)
        obj.update(fields)
        if obj["status"] not in TERMINAL and self.cancelled(batch_id):
            obj["status"], obj["cancelling_at"] = "cancelling", obj.get("cancelling_at") or int(time.time())
        return self.put_batch(obj)

    def fail(self, batch_id: str, message: str) -> dict:
        """End a batch as failed, with ``message`` as its one error (OpenAI's ``errors`` list)."""
        return self.update(batch_id, status="failed", failed_at=int(time.time()), errors={"object": "list", "data": [
            {"code": "batch_failed", "message": message[:2000], "param": None, "line": None}]})

    def cancel(self, batch_id: str) -> dict:
        """Ask a batch to stop: a marker of its own (the run, which rewrites the batch's object, never writes
        it, so no cancellation is lost between a read and a write of the object), then the status."""
        self.write(f"batches/{batch_id}.cancel", b"")
        return self.update(batch_id)

    def cancelled(self, batch_id: str) -> bool:
        return self.fs.get_file_info(f"{self.root}/batches/{batch_id}.cancel").type == pafs.FileType.File

    def put_run(self, batch_id: str, run: dict) -> None:
        """What the batch's run needs ({model name: version}, engine settings) and how often it was launched:
        a file of its own, which the serving side writes and the run only reads."""
        self.write(f"batches/{batch_id}.run.json", json.dumps(run).encode())

    def run_args(self, batch_id: str) -> dict:
        return self._read_json(f"batches/{batch_id}.run.json") or {}

    def batches(self, owner: str) -> list[dict]:
        """The owner's batches, newest first."""
        infos = self.fs.get_file_info(pafs.FileSelector(f"{self.root}/batches", allow_not_found=True))
        found = [self._read_json(f"batches/{i.base_name}") for i in infos
                 if i.type == pafs.FileType.File and i.base_name.endswith(".json") and
                 not i.base_name.endswith(".run.json")]
        mine = [b for b in found if b is not None and b.get(OWNER) == owner]
        return sorted(mine, key=lambda b: (b["created_at"], b["id"]), reverse=True)

    # ---- bytes
    def write(self, rel: str, data: bytes) -> None:
        """Write ``rel`` whole or not at all: the store's put (a local one stages it beside and renames)."""
        self.objects.put(f"openai/{rel}", data)

    def _read(self, rel: str) -> bytes:
        with self.fs.open_input_stream(f"{self.root}/{rel}") as f:
            return f.read()

    def _read_json(self, rel: str) -> Optional[dict]:
        try:
            return json.loads(self._read(rel))
        except (FileNotFoundError, OSError, ValueError):
            return None


def _safe(object_id: str) -> bool:
    """An id as this module makes them: no path can be reached through one."""
    return 6 <= len(object_id) <= 64 and object_id.replace("-", "").replace("_", "").isalnum()
