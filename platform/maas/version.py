"""The version of maas (one place: the package, the OIP server metadata and the OpenAPI document)."""

__version__ = "0.1.0"
