"""Pipeline folders written before the scheduler moved to dico.diffusion name this module in model_index.json."""

from ..diffusion.scheduler import DiCoScheduler

__all__ = ["DiCoScheduler"]
