"""Data sets the trainer reads: the bundled digits, image folders and pre-extracted VAE latents.

Names load on first use (dico.lazy), so the command line's --help imports no torch.
"""

from ..lazy import lazy_exports

EXPORTS = {
    **dict.fromkeys(["DataFacts", "build_dataset"], ".datasets"),
    **dict.fromkeys(["OutputSpace"], ".space"),
    **dict.fromkeys(["DigitsDataset", "export_digits", "load_digits_uint8", "DIGITS_CLASSES", "DIGITS_RESOLUTION"],
                    ".digits"),
    **dict.fromkeys(["IMAGE_EXTENSIONS", "ImageFolderDataset", "center_crop_arr", "scan_image_folder"], ".folders"),
    **dict.fromkeys(["LatentDataset", "is_latent_dir", "read_meta"], ".latents"),
    **dict.fromkeys(["extract_latents"], ".extract"),
    **dict.fromkeys(["LATENT_SCALE", "VAE_ALIASES", "LATENT_NORMS", "check_vae_matches", "decode_latents",
                     "encode_moments", "load_vae", "resolve_vae"], ".vae"),
}
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
__all__ = list(EXPORTS)
