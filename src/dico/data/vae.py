"""The autoencoders latent models train in: loading any diffusers autoencoder, posterior moments, latent
normalisation and decoding.

The official recipe (DiT, DiCo) trains on the SD-VAE's latents times a fixed 0.18215. Other autoencoders (EQ-VAE,
DC-AE, ...) have latents of other channel counts and scales; those train on per-channel standardised latents
(z - mean_c) / std_c, with statistics measured at extraction and stored in the latents' meta.json.
"""

import json
from pathlib import Path

import torch

VAE_ALIASES = {"ema": "stabilityai/sd-vae-ft-ema", "mse": "stabilityai/sd-vae-ft-mse"}
LATENT_SCALE = 0.18215  # scales SD VAE latents to about unit variance, as DiT and DiCo train on them
LATENT_NORMS = ("scale", "channel")
# diffusers classes `load_vae` accepts; each encodes to a Gaussian posterior (latent_dist) or a plain latent.
AUTOENCODERS = ("AutoencoderKL", "AutoencoderDC")


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


def _autoencoder_class(name: str, **hub_options):
    """The diffusers class named by the config.json of `name` (a directory or a Hub id)."""
    import diffusers

    if Path(name).is_dir():
        config_file = Path(name) / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{name} is not a diffusers autoencoder directory (no config.json; write one with "
                             "save_pretrained)")
        class_name = json.loads(config_file.read_text()).get("_class_name", "AutoencoderKL")
    else:
        class_name = diffusers.AutoencoderKL.load_config(name, **hub_options).get("_class_name", "AutoencoderKL")
    if class_name not in AUTOENCODERS:
        raise ValueError(f"{name} holds a {class_name}; dico reads the latents of {', '.join(AUTOENCODERS)}")
    return getattr(diffusers, class_name)


def load_vae(name_or_dir="ema", device="cpu", dtype=torch.float32, cache_dir=None, local_files_only: bool = False):
    """A frozen diffusers autoencoder in eval mode (AutoencoderKL or AutoencoderDC, as its config names it):
    "ema" / "mse" (stabilityai/sd-vae-ft-*), another Hub id, or a local directory written by `save_pretrained`."""
    name = resolve_vae(name_or_dir)
    if Path(name).is_dir():
        cls = _autoencoder_class(name)
        try:
            vae = cls.from_pretrained(name, torch_dtype=dtype)
        except (OSError, ValueError) as err:
            raise ValueError(f"{name} is not a diffusers {cls.__name__} directory (config.json + weights "
                             f"written by save_pretrained): {err}") from err
    elif _looks_like_path(name):
        raise FileNotFoundError(f"VAE directory {name} does not exist; pass 'ema', 'mse', a Hub id or a directory "
                                "written by save_pretrained (AutoencoderKL, AutoencoderDC)")
    else:
        options = {"cache_dir": cache_dir, "local_files_only": local_files_only}
        try:
            vae = _autoencoder_class(name, **options).from_pretrained(name, torch_dtype=dtype, **options)
        except OSError as err:  # the Hub's offline / not-found errors are all OSErrors
            hint = "" if name in VAE_ALIASES.values() else f" (if you meant a directory: {name} does not exist)"
            raise FileNotFoundError(
                f"could not load the VAE {name!r} from the Hugging Face Hub or its local cache ({err}). When "
                f"offline, download it once where there is network (`hf download {name}`) and copy "
                "the cache (HF_HUB_OFFLINE=1 then skips the network retries), or pass a local directory written by "
                f"save_pretrained{hint}") from err
    return vae.to(device).eval().requires_grad_(False)


def is_sd_vae(vae) -> bool:
    """Whether `vae` has the SD-VAE's latent space (4-channel KL latents with the 0.18215 scale), in which the
    official recipe's fixed scale applies (sd-vae-ft-ema/-mse share that encoder)."""
    config = vae.config
    scale = float(config.scaling_factor or 0)
    return (type(vae).__name__ == "AutoencoderKL" and config.latent_channels == 4
            and abs(scale - LATENT_SCALE) < 1e-9 and not getattr(config, "shift_factor", None))


@torch.no_grad()
def encode_moments(vae, x: torch.Tensor) -> tuple:
    """(mean, std) of the VAE's diagonal Gaussian posterior for images x in [-1, 1], unscaled.

    A latent is mean + std * noise; storing both (rather than one sampled latent, as the official extractor does)
    lets training draw a fresh latent every time it sees an image. A deterministic encoder (AutoencoderDC) has
    std 0.
    """
    encoded = vae.encode(x.to(device=vae.device, dtype=vae.dtype))
    if hasattr(encoded, "latent_dist"):
        return encoded.latent_dist.mean, encoded.latent_dist.std
    return encoded.latent, torch.zeros_like(encoded.latent)


def latent_statistics(sum_z, sum_z2, count: int) -> tuple:
    """Per-channel (mean, std) lists of latents z ~ N(mu, sigma^2) from float64 sums over images, flips and
    positions: sum_z = sum mu, sum_z2 = sum (mu^2 + sigma^2), count = images * 2 * h * w.
    mean_c = sum_z / count; std_c = sqrt(sum_z2 / count - mean_c^2): the moments of the latents training draws."""
    mean = sum_z / count
    var = (sum_z2 / count - mean**2).clip(min=0)
    return [float(m) for m in mean], [float(s) for s in var**0.5]


def latent_normalization(meta: dict, latent_norm: str | None = None) -> dict:
    """How a latent folder's latents are normalised for training, as OutputSpace fields:
    {"latent_scale": s} (scale: z * s) or also {"latent_mean", "latent_std"} (channel: (z - mean) / std).
    None picks "scale" for the SD-VAE (the official recipe) and "channel" for every other autoencoder."""
    if latent_norm is None:
        latent_norm = "scale" if meta.get("sd_vae", True) else "channel"
    if latent_norm not in LATENT_NORMS:
        raise ValueError(f"latent normalisation must be one of {LATENT_NORMS}, got {latent_norm!r}")
    scale = float(meta.get("scale", LATENT_SCALE))
    if latent_norm == "scale":
        return {"latent_scale": scale, "latent_mean": None, "latent_std": None}
    if meta.get("latent_mean") is None:
        raise ValueError("these latents have no per-channel statistics (extracted by an older dico); extract them "
                         "again, or train with --latent-norm scale")
    return {"latent_scale": scale, "latent_mean": list(meta["latent_mean"]), "latent_std": list(meta["latent_std"])}


@torch.no_grad()
def decode_latents(vae, z: torch.Tensor, scale: float = LATENT_SCALE, mean=None, std=None) -> torch.Tensor:
    """Images (about [-1, 1]) from normalised latents z, as the model generates them: z / scale, or with per-channel
    statistics z * std + mean."""
    if mean is None:
        return vae.decode(z.to(device=vae.device, dtype=vae.dtype) / scale).sample
    shape = (1, -1, 1, 1)
    z = z.to(device=vae.device, dtype=torch.float32)
    z = z * torch.as_tensor(std, dtype=z.dtype, device=z.device).view(shape) + torch.as_tensor(
        mean, dtype=z.dtype, device=z.device).view(shape)
    return vae.decode(z.to(vae.dtype)).sample


def check_vae_matches(trained_with: str | None, requested, latent_mean=None, latent_scale: float = LATENT_SCALE) -> str:
    """The VAE to decode a model's samples with: `requested` (if given) must be the one it was trained with. Models
    of the official recipe (SD-VAE latents at the fixed 0.18215) also take the other SD-VAE decoder (ema and mse share
    one encoder, so one latent space) or a local directory (a copy of either, which cannot be verified offline); a
    model trained with per-channel statistics or another autoencoder's scale decodes only with its own autoencoder."""
    if requested is None:
        return trained_with
    requested = resolve_vae(requested)
    if trained_with is None:
        raise ValueError(f"--vae {requested}: this model generates pixels, not latents; drop --vae")
    if requested == trained_with:
        return requested
    sd_like = set(VAE_ALIASES.values())
    official = latent_mean is None and abs(latent_scale - LATENT_SCALE) < 1e-9
    if official and all(name in sd_like or Path(name).is_dir() for name in (trained_with, requested)):
        return requested
    raise ValueError(f"--vae {requested}: this model was trained on the latents of {trained_with}"
                     f"{' with per-channel statistics' if latent_mean is not None else ''}; another autoencoder's "
                     f"decoder would turn them into wrong images. Drop --vae (the checkpoint names its VAE) or pass "
                     f"--vae {trained_with}")
