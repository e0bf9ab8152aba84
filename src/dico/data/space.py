"""What a model's samples are: their size and channels, and the VAE that decodes them (None: pixels)."""

from dataclasses import dataclass

from .vae import LATENT_SCALE, VAE_ALIASES


@dataclass
class OutputSpace:
    resolution: int
    channels: int
    vae: str | None = None
    latent_scale: float = LATENT_SCALE

    @classmethod
    def latent(cls, image_size: int = 256, vae: str = VAE_ALIASES["ema"]) -> "OutputSpace":
        """The space of the official ImageNet models: SD-VAE latents, 4 x (image_size / 8)^2."""
        if image_size % 8:
            raise ValueError(f"image size must be divisible by 8 (the VAE's downsampling), got {image_size}")
        return cls(image_size // 8, 4, vae)
