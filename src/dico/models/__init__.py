"""DiCo and DiT: the architectures (dico.py, dit.py), their shared layers (layers.py) and the registry of named
sizes (registry.py)."""

from .dico import DiCo, DiCoConfig
from .dit import DiT, DiTConfig
from .registry import DICO_SIZES, DIT_SIZES, MODELS, build_model, create_model, list_models, model_spec

__all__ = ["DiCo", "DiCoConfig", "DiT", "DiTConfig", "DICO_SIZES", "DIT_SIZES", "MODELS", "create_model",
           "list_models", "model_spec", "build_model"]
