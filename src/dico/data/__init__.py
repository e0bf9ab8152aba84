"""Data sets the trainer reads: the bundled digits, image folders and pre-extracted VAE latents."""

from dataclasses import dataclass

from .digits import DIGITS_CLASSES, DIGITS_RESOLUTION, DigitsDataset, export_digits, load_digits_uint8


@dataclass
class DataFacts:
    """What the trainer and sampler need to know about a data set."""

    in_channels: int  # channels the model sees
    resolution: int  # spatial size the model sees (latent size for latent data)
    num_classes: int  # 0 = unconditional
    vae: str | None = None  # the VAE that decodes samples (latent data), else None (pixels)
    latent_scale: float = 0.18215
    class_names: list | None = None


def build_dataset(spec=None, image_size: int = 256, seed: int = 0, vae=None):
    """(dataset, DataFacts) for `spec`: None or "digits" -> the bundled digits."""
    if spec in (None, "digits"):
        return DigitsDataset(), DataFacts(1, DIGITS_RESOLUTION, 10, class_names=DIGITS_CLASSES)
    raise ValueError(f"unknown data {spec!r}")


__all__ = ["DataFacts", "DigitsDataset", "build_dataset", "export_digits", "load_digits_uint8",
           "DIGITS_CLASSES", "DIGITS_RESOLUTION"]
