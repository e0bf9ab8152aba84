"""dico: DiCo (Diffusion ConvNet) models, diffusion, training, sampling, evaluation and benchmarks."""

import importlib

__version__ = "0.1.0"
# `dico` on the command line runs this file before reading its flags, and `dico --help` must not load torch (nor
# DiCoPipeline diffusers, ~1.5 s): these names are imported from their packages when first asked for (PEP 562).
EXPORTS = {"create_model": "models", "list_models": "models", "load_checkpoint": "checkpoints",
           "load_model": "checkpoints", "load_pretrained": "checkpoints", "DiCoPipeline": "pipelines"}
__all__ = [*EXPORTS, "__version__"]


def __getattr__(name: str):
    if name not in EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{EXPORTS[name]}", __name__), name)
