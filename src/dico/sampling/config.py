"""What `dico sample` (and `dico.sampling.sample`) takes: the checkpoint, the output and the sampling options."""

from dataclasses import dataclass
from typing import Annotated, Literal

from ..options import comma_separated


@dataclass(kw_only=True)
class SampleConfig:
    """Sample images from a checkpoint: ours, an official one (then --model is required) or a Hub file.

    method ... cache_guidance (and seed, batch_size) are the fields of dico.sampling.SamplingOptions; method and steps
    default to what the checkpoint's objective calls for: DDPM models ancestral sampling (ddpm) over 250 steps (the
    official protocol), flow models dopri5 over 50 time points (ODE) or Euler over 250 steps (SDE), as SiT.
    """

    ckpt: str  # checkpoint: ours, official (needs --model) or owner/repo/file
    model: str | None = None  # model name; required for official checkpoints
    weights: Literal["ema", "model"] = "ema"
    image_size: int = 256  # official latent models: 256 or 512 px
    num_classes: int | None = None  # official models: number of classes (1000)
    vae: str | None = None  # ema | mse | a local VAE directory (latent models)
    method: str | None = None
    """DDPM: ddpm | ddim | dpm++2m | dpm++3m; flow ODE: a torchdiffeq method; flow SDE: Euler | Heun (None: ddpm for
    DDPM models, dopri5 / Euler for flow models)."""
    steps: int | None = None  # model calls (DDPM) or time points (flow) (None: 250 for DDPM, 50 / 250 for flow)
    eta: float = 0.0  # DDIM eta
    cfg_scale: float = 1.0  # classifier-free guidance scale (1: no guidance)
    guidance_channels: int | Literal["all"] = 3  # guide the first N output channels (official: 3) or 'all'
    guidance_interval: Annotated[tuple[float, float], comma_separated(float, "LO,HI", count=2)] = (0.0, 1.0)
    """Guide only while the time t (0 = noise, 1 = data) lies in [LO, HI]."""
    sampler: Literal["ode", "sde"] = "ode"  # flow models: probability-flow ODE or SDE
    atol: float = 1e-6  # flow ODE, adaptive methods: absolute tolerance
    rtol: float = 1e-3  # flow ODE, adaptive methods: relative tolerance
    shift: float = 1.0  # flow: timestep shift of the integration grid (LightningDiT/SD3); 1 = none
    diffusion_form: Literal["constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing"] = "sigma"
    """Flow SDE: SiT's diffusion coefficient form."""
    diffusion_norm: float = 1.0  # flow SDE: scale of the diffusion coefficient
    last_step: Literal["Mean", "Tweedie", "Euler"] | None = "Mean"  # flow SDE: SiT's last step
    last_step_size: float = 0.04  # flow SDE: size of the last step
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

