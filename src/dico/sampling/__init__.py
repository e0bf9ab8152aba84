"""Sampling: class-conditional images from a model, as PNG grids or ADM-format .npz files."""

from ..data import LATENT_SCALE, OutputSpace
from .generate import SamplingOptions, generate, image_labels, sample_to_npz, write_class_grid

__all__ = ["LATENT_SCALE", "OutputSpace", "SamplingOptions", "generate", "image_labels", "sample_to_npz",
           "write_class_grid"]
