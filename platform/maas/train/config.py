"""What each Ray Train worker receives: the user's training settings (``TrainSpec``, validated once, its
defaults stated once, there) and the facts of this run the driver worked out. Frozen: a worker reads it, never
changes it."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from maas.spec import TrainSpec

Task = Literal["classify", "classify_text", "lm"]


class LoopConfig(BaseModel):
    """The per-worker recipe's input (``train_loop_per_worker(config)``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    train: TrainSpec = Field(..., description="The spec's training settings, as validated.")
    architecture: dict = Field(..., description="The model's configuration (model.json's content).")
    normalization: dict = Field(default_factory=dict, description="Statistics that initialise the model's "
                                "input standardisation (part of the weights afterwards, not of model.json).")
    task: Task = Field("classify", description="'classify': feature rows; 'classify_text': token ids and a "
                                               "mask; 'lm': token blocks, next-token prediction.")
    features: tuple[str, ...] = Field((), description="Feature columns in model input order ('classify').")
    has_val: bool = Field(..., description="Whether a validation split is given (else checkpoints rank by epoch).")
    steps_per_epoch: int = Field(..., ge=1, description="Optimizer steps per epoch (sizes the LR schedule).")
    shards: dict[str, list[Any]] = Field(default_factory=dict, description="Small splits cut on the driver: "
                                         "per split name, one object ref per worker rank (maas.train.shards).")
    progress_path: Optional[str] = Field(None, description="Local file for the latest epoch and step (live view).")
    peak_flops_per_worker: float = Field(0.0, ge=0, description="The GPU's peak FLOP/s for MFU (0: not reported).")

    @property
    def cache_shards(self) -> bool:
        """Each worker holds its (driver-cut) shard in memory and reshuffles it every epoch."""
        return bool(self.shards)

    @property
    def shuffle_buffer(self) -> int:
        return max(self.train.batch_size * 8, 256)

    @property
    def total_steps(self) -> int:
        return self.train.epochs * self.steps_per_epoch
