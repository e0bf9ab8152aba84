"""Sampling: class-conditional images from a model, as PNG grids or ADM-format .npz files."""

from ..lazy import lazy_exports

EXPORTS = {"LATENT_SCALE": "..data.vae", "OutputSpace": "..data.space", "SampleConfig": "..config.sampling",
           "sample": ".from_checkpoint",
           "SamplingOptions": "..config.sampling",
           **{name: ".generate" for name in ["generate", "image_labels", "sample_to_npz",
                                             "write_class_grid"]}}
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
__all__ = list(EXPORTS)
