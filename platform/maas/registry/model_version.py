"""What the registry records about one published model version, and how versions are referred to."""

from __future__ import annotations

import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from maas.exceptions import RegistryError
from maas.models.tasks import TASKS, Task, task_from_signature

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")  # always fullmatch: re.match(...$) accepts a trailing newline
ARTIFACT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # a plain file name
MANIFEST = "manifest.json"


class ModelVersion(BaseModel):
    """One immutable version: its files (with sha256), metrics, lineage and input/output signature."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="Model name.")
    version: int = Field(..., ge=1, description="Version number, 1, 2, ... per name.")
    created_at: float = Field(..., allow_inf_nan=False, description="Unix time of publication.")
    runtime: str = Field(..., description="How to load it: 'torch' (safetensors + JSON) or 'onnxruntime'.")
    task: Task = Field("classify", description="What it does: " + ", ".join(TASKS) + " (picks the predictor "
                                               "and the serving routes).")
    files: dict[str, dict[str, Any]] = Field(..., description="Artifact name -> {sha256, size}.")
    objects: Optional[str] = Field(None, pattern=r"^objects/[0-9a-f]{32}$", description="Where the artifacts "
                                   "live, under the model's folder (None: beside the manifest, older layout).")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Evaluation figures (accuracy, size, latency).")
    lineage: dict[str, Any] = Field(default_factory=dict, description="data_fingerprint, spec_hash, run_id, "
                                                                       "parent, method ...")
    signature: dict[str, Any] = Field(default_factory=dict, description="Inputs/outputs (name, datatype, shape).")
    status: Literal["ready", "candidate", "rejected"] = Field(
        "ready", description="'rejected': failed its quality gate (never aliased); 'candidate': passed it but did "
                             "not match the version that held the alias (the champion) on the same evaluation, so "
                             "the alias stayed (`maas models alias ... --force --reason` moves it anyway).")
    description: str = Field("", description="Free text, e.g. why the gate rejected it.")
    aliases: list[str] = Field(default_factory=list, description="Aliases pointing here (filled on read).")

    @field_validator("files")
    @classmethod
    def _plain_artifacts(cls, files: dict) -> dict:
        """Artifact names are plain file names and every entry has a sha256 and a size: a manifest is read
        from shared storage, so its names must never become paths elsewhere."""
        for art, meta in files.items():
            if not ARTIFACT.fullmatch(art) or art == MANIFEST:
                raise ValueError(f"artifact name {art!r} is not a plain file name")
            if not (isinstance(meta, dict) and isinstance(meta.get("sha256"), str)
                    and re.fullmatch(r"[0-9a-f]{64}", meta["sha256"]) and isinstance(meta.get("size"), int)
                    and meta["size"] >= 0):
                raise ValueError(f"artifact {art!r} needs a sha256 (64 hex digits) and a size")
        return files

    @model_validator(mode="before")
    @classmethod
    def _task_of_older_manifests(cls, data: Any) -> Any:
        """A manifest written before versions recorded their task: the task its signature describes."""
        if isinstance(data, dict) and "task" not in data:
            data = {**data, "task": task_from_signature(data.get("signature"))}
        return data

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def size_bytes(self) -> int:
        return sum(int(f["size"]) for f in self.files.values())

    @staticmethod
    def check_name(name: str, what: str = "model name") -> str:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise RegistryError(f"invalid {what} {name!r}: use lower-case letters, digits, '-', '_' or '.' "
                                "(starting with a letter or digit, at most 63)")
        return name


def parse_ref(ref: str) -> tuple[str, Optional[int], Optional[str]]:
    """``name@alias`` -> (name, None, alias); ``name/3`` -> (name, 3, None); ``name`` -> (name, None, None)."""
    if not isinstance(ref, str) or not ref:
        raise RegistryError("empty model reference: use name@alias or name/version")
    if "@" in ref:
        name, _, alias = ref.partition("@")
        ModelVersion.check_name(name)
        ModelVersion.check_name(alias, what="alias")
        return name, None, alias
    if "/" in ref:
        name, _, ver = ref.partition("/")
        ModelVersion.check_name(name)
        if not re.fullmatch(r"[0-9]{1,9}", ver) or int(ver) < 1:
            raise RegistryError(f"invalid version in {ref!r}: expected a number >= 1, e.g. {name}/1")
        return name, int(ver), None
    ModelVersion.check_name(ref)
    return ref, None, None
