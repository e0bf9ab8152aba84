"""dico: DiCo (Diffusion ConvNet) models, diffusion, training, sampling, evaluation and benchmarks."""

from .checkpoints import load_checkpoint, load_model
from .models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "load_checkpoint", "load_model", "__version__"]
