"""Data stage: Ray Data readers, validation with quarantine, splits, normalisation stats, fingerprints."""

from maas.data.prepare import DataResult, prepare_data, read_dataset, run_dir_for

__all__ = ["DataResult", "prepare_data", "read_dataset", "run_dir_for"]
