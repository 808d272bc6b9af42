"""Model registry: versions, aliases, lineage, checksums, atomic publication."""

from maas.registry.model_version import ModelVersion, parse_ref
from maas.registry.store import Registry, sha256_file

__all__ = ["ModelVersion", "Registry", "parse_ref", "sha256_file"]
