"""Sampling: class-conditional images from a model, as PNG grids or ADM-format .npz files."""

from ..lazy import lazy_exports

EXPORTS = {name: "generate" for name in ["LATENT_SCALE", "OutputSpace", "SamplingOptions", "generate", "image_labels",
                                         "sample_to_npz", "write_class_grid"]}
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
__all__ = list(EXPORTS)
