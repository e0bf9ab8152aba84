"""What `dico sample` (and `dico.sampling.sample`) takes: the checkpoint, the output and the sampling options."""

import math
from dataclasses import dataclass
from typing import Annotated, Literal

from ..options import comma_separated


@dataclass
class SamplingOptions:
    """How to sample. `method` and `steps` default to what the model's objective calls for: DDPM models ancestral
    sampling over 250 steps (the official protocol), flow models dopri5 over 50 time points (ODE) or Euler over 250
    steps (SDE), as SiT's sample.py."""

    method: str | None = None
    """DDPM: ddpm | ddim | dpm++2m | dpm++3m; flow ODE: a torchdiffeq method; flow SDE: Euler | Heun (None: ddpm for
    DDPM models, dopri5 / Euler for flow models)."""
    steps: int | None = None  # model calls (DDPM) or time points (flow) (None: 250 for DDPM, 50 / 250 for flow)
    cfg_scale: float = 1.0  # classifier-free guidance scale (1: no guidance)
    guidance_channels: int | Literal["all"] = 3  # guide the first N output channels (official: 3) or 'all'
    guidance_interval: Annotated[tuple[float, float], comma_separated(float, "LO,HI", count=2)] = (0.0, 1.0)
    """Guide only while the time t (0 = noise, 1 = data) lies in [LO, HI]."""
    eta: float = 0.0  # DDIM eta
    seed: int = 0  # every image's noise and label are keyed by (seed, image index)
    batch_size: int = 32  # images per model call (results do not depend on it)
    sampler: Literal["ode", "sde"] = "ode"  # flow models: probability-flow ODE or SDE
    atol: float = 1e-6  # flow ODE, adaptive methods: absolute tolerance
    rtol: float = 1e-3  # flow ODE, adaptive methods: relative tolerance
    shift: float = 1.0  # flow: timestep shift of the integration grid (LightningDiT/SD3); 1 = none
    diffusion_form: Literal["constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing"] = "sigma"
    """Flow SDE: SiT's diffusion coefficient form."""
    diffusion_norm: float = 1.0  # flow SDE: scale of the diffusion coefficient
    last_step: Literal["Mean", "Tweedie", "Euler"] | None = "Mean"  # flow SDE: SiT's last step
    last_step_size: float = 0.04  # flow SDE: size of the last step
    cache_interval: int = 1  # DeepCache: full forward every N steps (1 = off)
    cache_depth: Literal[1, 2] = 1  # DeepCache: outer levels recomputed
    cache_guidance: bool = True  # DeepCache with guidance: cached steps reuse cond - uncond (off: run both halves)

    def __post_init__(self):
        """Every value checked before any work, each error naming the option and what it accepts."""
        self.guidance_interval = tuple(self.guidance_interval)
        positive = {"batch_size": self.batch_size, "cache_interval": self.cache_interval}
        if self.steps is not None:
            positive["steps"] = self.steps
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        numbers = (("cfg_scale", self.cfg_scale), ("eta", self.eta), ("atol", self.atol), ("rtol", self.rtol),
                   ("shift", self.shift), ("diffusion_norm", self.diffusion_norm),
                   ("last_step_size", self.last_step_size), *(("guidance_interval", v) for v in self.guidance_interval))
        for name, value in numbers:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        if min(self.atol, self.rtol, self.shift) <= 0:
            raise ValueError(f"atol, rtol and shift must be > 0, got {self.atol}, {self.rtol}, {self.shift}")
        lo, hi = (self.guidance_interval + (None, None))[:2] if len(self.guidance_interval) == 2 else (None, None)
        if lo is None or not 0 <= lo <= hi <= 1:
            raise ValueError(f"guidance_interval must be two numbers 0 <= lo <= hi <= 1, got {self.guidance_interval}")
        if self.sampler not in ("ode", "sde"):
            raise ValueError(f"sampler must be 'ode' or 'sde', got {self.sampler!r}")
        if self.guidance_channels != "all" and (isinstance(self.guidance_channels, bool) or
                                                not isinstance(self.guidance_channels, int) or
                                                self.guidance_channels < 1):
            raise ValueError(f"guidance_channels must be a positive integer or 'all', got {self.guidance_channels!r}")
        if self.cache_depth not in (1, 2):
            raise ValueError(f"cache_depth must be 1 or 2, got {self.cache_depth!r}")


@dataclass(kw_only=True)
class SampleConfig(SamplingOptions):
    """Sample images from a checkpoint: ours, an official one (then --model is required) or a Hub file.

    The sampling options are SamplingOptions' (method and steps default to what the checkpoint's objective calls
    for); these add where the model comes from and where the images go.
    """

    ckpt: str  # checkpoint: ours, official (needs --model) or owner/repo/file
    model: str | None = None  # model name; required for official checkpoints
    weights: Literal["ema", "model"] = "ema"
    image_size: int = 256  # official latent models: 256 or 512 px
    num_classes: int | None = None  # official models: number of classes (1000)
    vae: str | None = None  # ema | mse | a local VAE directory (latent models)
    classes: Annotated[tuple[int, ...] | None, comma_separated(int, "C1,C2,...")] = None
    """Class ids, cycled (None: random classes)."""
    num_samples: int = 16  # images to write
    out: str  # samples.png (a grid) or samples.npz (ADM format)
    nrow: int | None = None  # images per grid row (None: a square grid)
    device: str | None = None  # cpu, cuda, cuda:1 ... (None: the local GPU if any)
