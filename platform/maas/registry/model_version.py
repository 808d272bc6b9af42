"""What the registry records about one published model version, and how versions are referred to."""

from __future__ import annotations

import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from maas.exceptions import RegistryError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class ModelVersion(BaseModel):
    """One immutable version: its files (with sha256), metrics, lineage and input/output signature."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="Model name.")
    version: int = Field(..., ge=1, description="Version number, 1, 2, ... per name.")
    created_at: float = Field(..., description="Unix time of publication.")
    runtime: str = Field(..., description="How to load it: 'torch' (safetensors + JSON) or 'onnxruntime'.")
    files: dict[str, dict[str, Any]] = Field(..., description="Artifact name -> {sha256, size}.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Evaluation figures (accuracy, size, latency).")
    lineage: dict[str, Any] = Field(default_factory=dict, description="data_fingerprint, spec_hash, run_id, "
                                                                       "parent, method ...")
    signature: dict[str, Any] = Field(default_factory=dict, description="Inputs/outputs (name, datatype, shape).")
    status: Literal["ready", "rejected"] = Field("ready", description="'rejected': failed its quality gate.")
    description: str = Field("", description="Free text, e.g. why the gate rejected it.")
    aliases: list[str] = Field(default_factory=list, description="Aliases pointing here (filled on read).")

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def size_bytes(self) -> int:
        return sum(int(f["size"]) for f in self.files.values())

    @staticmethod
    def check_name(name: str, what: str = "model name") -> None:
        if not _NAME.match(name or ""):
            raise RegistryError(f"invalid {what} {name!r}: use lower-case letters, digits, '-', '_' or '.'")


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
        if not ver.isdigit() or int(ver) < 1:
            raise RegistryError(f"invalid version in {ref!r}: expected a number >= 1, e.g. {name}/1")
        return name, int(ver), None
    ModelVersion.check_name(ref)
    return ref, None, None
