"""DiCo and DiT: the architectures (dico.py, dit.py), what they share (config.py, embedders.py, fast_ops.py,
guidance.py) and the registry of named sizes (registry.py)."""

from .dico import DiCo, FeatureCache
from .dit import DiT
from .config import ModelConfig, ModelSpec
from .fast_ops import clear_inference_cache
from .guidance import combine_guidance, resolve_guidance_channels
from .text_dico import TextDiCo
from .registry import DICO_SIZES, DIT_SIZES, MODELS, build_model, create_model, list_models, model_spec

__all__ = ["DiCo", "DiT", "TextDiCo", "FeatureCache", "ModelConfig", "ModelSpec", "DICO_SIZES", "DIT_SIZES", "MODELS",
           "build_model", "create_model", "list_models", "model_spec", "clear_inference_cache", "combine_guidance",
           "resolve_guidance_channels"]
