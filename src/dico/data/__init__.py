"""Data sets the trainer reads: the bundled digits, image folders and pre-extracted VAE latents."""

from .captions import (CaptionedImageDataset, CaptionedImages, caption_generator, draw_caption, evaluation_captions,
                       is_captioned_folder, read_captioned_images)
from .datasets import DIGITS_TEXT, DataFacts, build_dataset, digits_text_dataset
from .digits import DIGITS_CLASSES, DIGITS_RESOLUTION, DigitsDataset, export_digits, load_digits_uint8
from .digits_text import DIGIT_WORDS, SEEN_PHRASINGS, UNSEEN_PHRASINGS, DigitsTextDataset, digits_prompts
from .extract import extract_latents
from .folders import IMAGE_EXTENSIONS, ImageFolderDataset, center_crop_arr, scan_image_folder
from .latents import LatentDataset, TextLatentDataset, is_latent_dir, read_captions, read_meta
from .space import OutputSpace
from .vae import (LATENT_NORMS, LATENT_SCALE, VAE_ALIASES, check_vae_matches, decode_latents, encode_moments, load_vae,
                  resolve_vae)

__all__ = ["DataFacts", "build_dataset", "OutputSpace", "DigitsDataset", "export_digits", "load_digits_uint8",
           "DIGITS_CLASSES", "DIGITS_RESOLUTION", "IMAGE_EXTENSIONS", "ImageFolderDataset", "center_crop_arr",
           "scan_image_folder", "LatentDataset", "is_latent_dir", "read_meta", "extract_latents", "LATENT_SCALE",
           "VAE_ALIASES", "LATENT_NORMS", "check_vae_matches", "decode_latents", "encode_moments", "load_vae",
           "resolve_vae", "DIGITS_TEXT", "digits_text_dataset", "DigitsTextDataset", "digits_prompts", "DIGIT_WORDS",
           "SEEN_PHRASINGS", "UNSEEN_PHRASINGS", "caption_generator", "draw_caption", "evaluation_captions",
           "CaptionedImages", "CaptionedImageDataset", "is_captioned_folder", "read_captioned_images",
           "TextLatentDataset", "read_captions"]
