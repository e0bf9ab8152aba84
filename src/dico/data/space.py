"""What a model's samples are: their size and channels, and the VAE that decodes them (None: pixels)."""

from dataclasses import dataclass

from .vae import LATENT_SCALE, VAE_ALIASES, decode_latents


@dataclass
class OutputSpace:
    resolution: int
    channels: int
    vae: str | None = None
    latent_scale: float = LATENT_SCALE
    # Per-channel statistics of latents trained standardised, (z - mean) / std (autoencoders other than the SD-VAE);
    # None: the latents were trained as z * latent_scale.
    latent_mean: list | None = None
    latent_std: list | None = None

    def decode(self, vae, z):
        """Images (about [-1, 1]) from latents z as the model generates them, normalisation undone."""
        return decode_latents(vae, z, self.latent_scale, self.latent_mean, self.latent_std)

    @classmethod
    def latent(cls, image_size: int = 256, vae: str = VAE_ALIASES["ema"]) -> "OutputSpace":
        """The space of the official ImageNet models: SD-VAE latents, 4 x (image_size / 8)^2."""
        if image_size % 8:
            raise ValueError(f"image size must be divisible by 8 (the VAE's downsampling), got {image_size}")
        return cls(image_size // 8, 4, vae)
