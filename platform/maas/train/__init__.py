"""Train stage: Ray Train TorchTrainer (DDP), checkpoints, resume, validation."""

from maas.train.trainer import TrainResult, choose_device, train_model

__all__ = ["TrainResult", "choose_device", "train_model"]
