"""Training: the official recipe by default, multi-process with torchrun, exact resume."""

from ..lazy import lazy_exports
from ..config.training import PRESETS, TrainConfig, preset

EXPORTS = {name: ".loop" for name in ["NonFiniteError", "ResumePoint", "TrainingInterrupted", "config_from_checkpoint",
                                      "newest_checkpoint", "resume_point", "train"]}
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
__all__ = ["PRESETS", "TrainConfig", "preset", *EXPORTS]
