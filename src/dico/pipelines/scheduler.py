"""Pipeline folders written before the scheduler moved to dico.diffusion name this module in model_index.json.

diffusers resolves such a component through this module's names: the class, and the base (SchedulerMixin) whose
loading methods it has."""

from diffusers import SchedulerMixin

from ..diffusion.scheduler import DiCoScheduler

__all__ = ["DiCoScheduler", "SchedulerMixin"]
