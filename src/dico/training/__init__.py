"""Training: the official recipe by default, multi-process with torchrun, exact resume."""

from .config import PRESETS, TrainConfig, preset
from .loop import config_from_checkpoint, newest_checkpoint, train

__all__ = ["PRESETS", "TrainConfig", "config_from_checkpoint", "newest_checkpoint", "preset", "train"]
