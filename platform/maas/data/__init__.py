"""Data stage: Ray Data readers, validation with quarantine, splits, normalisation stats, fingerprints."""

from maas.data.prepare import (DataResult, load_prepared, prepare_data, read_dataset, run_dir_for,
                               save_prepared)

__all__ = ["DataResult", "load_prepared", "prepare_data", "read_dataset", "run_dir_for", "save_prepared"]
