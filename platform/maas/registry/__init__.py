"""Model registry: versions, aliases with history, lineage, checksums, atomic publication on any store."""

from maas.registry.cache import sha256_file
from maas.registry.model_version import ModelVersion, parse_ref
from maas.registry.store import UNCHECKED, Registry

__all__ = ["ModelVersion", "Registry", "UNCHECKED", "parse_ref", "sha256_file"]
