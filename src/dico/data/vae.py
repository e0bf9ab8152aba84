"""The Stable Diffusion VAE that DiT and DiCo train in: loading, posterior moments, decoding."""

from pathlib import Path

import torch

VAE_ALIASES = {"ema": "stabilityai/sd-vae-ft-ema", "mse": "stabilityai/sd-vae-ft-mse"}
LATENT_SCALE = 0.18215  # scales SD VAE latents to about unit variance, as DiT and DiCo train on them


def resolve_vae(name_or_dir) -> str:
    """The id a VAE is stored under: an alias ("ema", "mse") becomes its Hub id; a local directory its absolute
    path, so that a checkpoint trained on its latents finds it again from any working directory."""
    name = str(name_or_dir)
    if name in VAE_ALIASES:
        return VAE_ALIASES[name]
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    return name


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def load_vae(name_or_dir="ema", device="cpu", dtype=torch.float32, cache_dir=None, local_files_only: bool = False):
    """A frozen `diffusers.AutoencoderKL` in eval mode: "ema" / "mse" (stabilityai/sd-vae-ft-*), another Hub id,
    or a local directory written by `save_pretrained`."""
    from diffusers import AutoencoderKL

    name = resolve_vae(name_or_dir)
    if Path(name).is_dir():
        try:
            vae = AutoencoderKL.from_pretrained(name, torch_dtype=dtype)
        except (OSError, ValueError) as err:
            raise ValueError(f"{name} is not a diffusers AutoencoderKL directory (config.json + weights "
                             f"written by save_pretrained): {err}") from err
    elif _looks_like_path(name):
        raise FileNotFoundError(f"VAE directory {name} does not exist; pass 'ema', 'mse', a Hub id or a directory "
                                "written by AutoencoderKL.save_pretrained")
    else:
        try:
            vae = AutoencoderKL.from_pretrained(name, torch_dtype=dtype, cache_dir=cache_dir,
                                                local_files_only=local_files_only)
        except OSError as err:  # the Hub's offline / not-found errors are all OSErrors
            hint = "" if name in VAE_ALIASES.values() else f" (if you meant a directory: {name} does not exist)"
            raise FileNotFoundError(
                f"could not load the VAE {name!r} from the Hugging Face Hub or its local cache ({err}). When "
                f"offline, download it once where there is network (`huggingface-cli download {name}`) and copy "
                "the cache (HF_HUB_OFFLINE=1 then skips the network retries), or pass a local directory written by "
                f"AutoencoderKL.save_pretrained{hint}") from err
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode_moments(vae, x: torch.Tensor) -> tuple:
    """(mean, std) of the VAE's diagonal Gaussian posterior for images x in [-1, 1], unscaled.

    A latent is mean + std * noise; storing both (rather than one sampled latent, as the official extractor does)
    lets training draw a fresh latent every time it sees an image.
    """
    posterior = vae.encode(x.to(device=vae.device, dtype=vae.dtype)).latent_dist
    return posterior.mean, posterior.std


@torch.no_grad()
def decode_latents(vae, z: torch.Tensor, scale: float = LATENT_SCALE) -> torch.Tensor:
    """Images (about [-1, 1]) from scaled latents z, as the model generates them."""
    return vae.decode(z.to(device=vae.device, dtype=vae.dtype) / scale).sample
