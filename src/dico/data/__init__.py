"""Data sets the trainer reads: the bundled digits, image folders and pre-extracted VAE latents."""

from .datasets import DataFacts, build_dataset
from .digits import DIGITS_CLASSES, DIGITS_RESOLUTION, DigitsDataset, export_digits, load_digits_uint8
from .extract import extract_latents
from .folders import IMAGE_EXTENSIONS, ImageFolderDataset, center_crop_arr, scan_image_folder
from .latents import LatentDataset, is_latent_dir, read_meta
from .space import OutputSpace
from .vae import (LATENT_NORMS, LATENT_SCALE, VAE_ALIASES, check_vae_matches, decode_latents, encode_moments, load_vae,
                  resolve_vae)

__all__ = ["DataFacts", "build_dataset", "OutputSpace", "DigitsDataset", "export_digits", "load_digits_uint8",
           "DIGITS_CLASSES", "DIGITS_RESOLUTION", "IMAGE_EXTENSIONS", "ImageFolderDataset", "center_crop_arr",
           "scan_image_folder", "LatentDataset", "is_latent_dir", "read_meta", "extract_latents", "LATENT_SCALE",
           "VAE_ALIASES", "LATENT_NORMS", "check_vae_matches", "decode_latents", "encode_moments", "load_vae",
           "resolve_vae"]
