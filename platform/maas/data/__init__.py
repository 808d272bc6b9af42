"""Data stage: Ray Data readers, validation with quarantine, splits, normalisation stats, fingerprints.

readers (any pyarrow.fs source) -> ops (declarative, per batch; accounting marks rather than drops) and
schema -> prepare (the stage: split, fit on train, write) -> runs (the run folder later stages read); fitting
(encoders, statistics), text (tokenize, image ops), corpus, blocks and chat (text for encoders, token blocks and
conversations for language models).
"""

from maas.data.prepare import prepare_data
from maas.data.readers import read_dataset
from maas.data.runs import DataResult, load_prepared, run_dir_for, save_prepared

__all__ = ["DataResult", "load_prepared", "prepare_data", "read_dataset", "run_dir_for", "save_prepared"]
