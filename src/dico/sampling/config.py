"""What `dico sample` (and `dico.sampling.sample`) takes: the checkpoint, the output and the sampling options."""

from dataclasses import dataclass
from typing import Annotated, Literal

from ..options import comma_separated


@dataclass(kw_only=True)
class SampleConfig:
    """Sample images from a checkpoint: ours, an official one (then --model is required) or a Hub file.

    method ... cache_guidance, seed and batch_size are the fields of dico.sampling.SamplingOptions.
    """

    ckpt: str  # checkpoint: ours, official (needs --model) or owner/repo/file
    model: str | None = None  # model name; required for official checkpoints
    weights: Literal["ema", "model"] = "ema"
    image_size: int = 256  # official latent models: 256 or 512 px
    num_classes: int | None = None  # official models: number of classes (1000)
    vae: str | None = None  # ema | mse | a local VAE directory (latent models)
    method: Literal["ddpm", "ddim", "dpm++2m", "dpm++3m"] = "ddpm"
    steps: int = 250
    eta: float = 0.0  # DDIM eta
    cfg_scale: float = 1.0  # classifier-free guidance scale (1: no guidance)
    guidance_channels: int | Literal["all"] = 3  # guide the first N output channels (official: 3) or 'all'
    classes: Annotated[tuple[int, ...] | None, comma_separated(int, "C1,C2,...")] = None
    """Class ids, cycled (None: random classes)."""
    num_samples: int = 16  # images to write
    out: str  # samples.png (a grid) or samples.npz (ADM format)
    nrow: int | None = None  # images per grid row (None: a square grid)
    batch_size: int = 32
    seed: int = 0
    device: str | None = None  # cpu, cuda, cuda:1 ... (None: the local GPU if any)
    cache_interval: int = 1  # DeepCache: full forward every N steps (1 = off)
    cache_depth: Literal[1, 2] = 1  # DeepCache: outer levels recomputed
    cache_guidance: bool = True  # DeepCache with guidance: cached steps reuse cond - uncond (off: run both halves)

