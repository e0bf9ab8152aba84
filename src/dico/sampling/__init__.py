"""Sampling: class-conditional images from a model, as PNG grids or ADM-format .npz files."""

from ..config.sampling import SampleConfig, SamplingOptions
from ..data import LATENT_SCALE, OutputSpace
from .from_checkpoint import sample
from .generate import generate, image_labels, sample_to_npz, write_class_grid

__all__ = ["LATENT_SCALE", "OutputSpace", "SampleConfig", "sample", "SamplingOptions", "generate", "image_labels",
           "sample_to_npz", "write_class_grid"]
