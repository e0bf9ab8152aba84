"""dico: DiCo (Diffusion ConvNet) models, diffusion, training, sampling, evaluation and benchmarks."""

from .lazy import lazy_exports

__version__ = "0.1.0"
EXPORTS = {"create_model": ".models", "list_models": ".models", "load_checkpoint": ".checkpoints",
           "load_model": ".checkpoints", "load_pretrained": ".checkpoints",
           "DiCoPipeline": ".pipelines"}  # dico.pipelines imports diffusers (~1.5 s): only when asked for
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
__all__ = [*EXPORTS, "__version__"]
