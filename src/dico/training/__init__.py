"""Training: the official recipe by default, multi-process with torchrun, exact resume."""

from ..lazy import lazy_exports
from .config import PRESETS, TrainConfig, preset

EXPORTS = {"config_from_checkpoint": "loop", "newest_checkpoint": "loop", "train": "loop"}
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
__all__ = ["PRESETS", "TrainConfig", "preset", *EXPORTS]
