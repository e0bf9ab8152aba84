"""Training: the official recipe by default, multi-process with torchrun, exact resume."""

from ..config.training import PRESETS, TrainConfig, preset
from .loop import (NonFiniteError, ResumePoint, TrainingInterrupted, config_from_checkpoint, newest_checkpoint,
                   resume_point, train)

__all__ = ["PRESETS", "TrainConfig", "preset", "NonFiniteError", "ResumePoint", "TrainingInterrupted",
           "config_from_checkpoint", "newest_checkpoint", "resume_point", "train"]
