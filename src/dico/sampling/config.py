"""What `dico sample` (and `dico.sampling.sample`) takes: the checkpoint, the output and the sampling options."""

from dataclasses import dataclass, fields
from typing import Annotated, Literal

from ..options import comma_separated


@dataclass(kw_only=True)
class SampleConfig:
    """Sample images from a checkpoint: ours, an official one (then --model is required) or a Hub file."""

    ckpt: str  # checkpoint: ours, official (needs --model) or owner/repo/file
    model: str | None = None  # model name; required for official checkpoints
    weights: Literal["ema", "model"] = "ema"
    image_size: int = 256  # official latent models: 256 or 512 px
    num_classes: int | None = None  # official models: number of classes (1000)
    vae: str | None = None  # ema | mse | a local VAE directory (latent models)
    # The fields of dico.sampling.SamplingOptions (seed and batch_size below too).
    method: Literal["ddpm", "ddim", "dpm++2m", "dpm++3m"] = "ddpm"
    steps: int = 250
    eta: float = 0.0  # DDIM eta
    cfg_scale: float = 1.0  # classifier-free guidance scale (1: no guidance)
    guidance_channels: int | Literal["all"] = 3  # guide the first N output channels (official: 3) or 'all'
    # Class ids, cycled (default: random classes).
    classes: Annotated[tuple[int, ...] | None, comma_separated(int, "C1,C2,...")] = None
    num_samples: int = 16
    out: str  # samples.png (a grid) or samples.npz (ADM format)
    nrow: int | None = None  # images per grid row (default: a square grid)
    batch_size: int = 32
    seed: int = 0
    device: str | None = None  # cpu, cuda, cuda:1 ... (default: the local GPU if any)
    cache_interval: int = 1  # DeepCache: full forward every N steps (1 = off)
    cache_depth: Literal[1, 2] = 1  # DeepCache: outer levels recomputed
    cache_guidance: bool = True  # DeepCache with guidance: cached steps reuse cond - uncond (off: run both halves)

    def sampling_options(self, options_class, **objective):
        """`options_class` (dico.sampling.SamplingOptions) from the fields of the same names; `objective` sets the
        rest (noise_schedule, diffusion_steps: what the checkpoint was trained with)."""
        names = {f.name for f in fields(self)}
        return options_class(**{f.name: getattr(self, f.name) for f in fields(options_class) if f.name in names},
                             **objective)
