"""One entry point for every sampling method, so the sampling layer picks a method by name."""

from typing import Optional, Union

import torch

from ..randomness import StepNoise
from .gaussian_diffusion import GaussianDiffusion

SAMPLING_METHODS = ("ddpm", "ddim", "dpm++2m", "dpm++3m")


def sample_loop(diffusion: GaussianDiffusion, model, shape, method: str = "ddpm", steps: Union[int, str] = 250,
                eta: float = 0.0, noise: Optional[torch.Tensor] = None, step_noise: Optional[StepNoise] = None,
                model_kwargs: Optional[dict] = None, clip_denoised: bool = False, device=None,
                progress: bool = False) -> torch.Tensor:
    """Final samples x_0 of shape `shape` from `model`, starting at `noise` (default standard normal).

    method: "ddpm" (ancestral, as the official sample_ddp.py), "ddim" (eta = 0 deterministic), "dpm++2m" or
        "dpm++3m" (DPM-Solver++ multistep, deterministic).
    steps: the number of model evaluations. For ddpm/ddim an int respaces the base process evenly
        (`create_diffusion(str(steps))`, both ends included, as the official sampler); a string is used as the
        respacing itself, e.g. "ddim50" or "10,15,20". DPM-Solver++ takes an int.
    step_noise: per-step fresh noise for ddpm and ddim with eta > 0 (see GaussianDiffusion.p_sample_loop).
    The process is always respaced from `diffusion`'s full base schedule, whatever its own respacing.
    """
    if method not in SAMPLING_METHODS:
        raise ValueError(f"unknown sampling method {method!r}; valid: {', '.join(SAMPLING_METHODS)}")
    if eta != 0 and method != "ddim":
        raise ValueError(f"eta only applies to method 'ddim' (got eta={eta} with {method!r})")
    common = dict(noise=noise, model_kwargs=model_kwargs, clip_denoised=clip_denoised, device=device, progress=progress)
    if method.startswith("dpm++"):
        if not isinstance(steps, int):
            raise ValueError(f"{method} needs an integer number of steps, got {steps!r}")
        return diffusion.respaced(None).dpm_solver_sample_loop(model, shape, steps=steps, order=int(method[-2]), **common)
    if isinstance(steps, bool) or not isinstance(steps, (int, str)):
        raise ValueError(f"steps must be an int or a respacing string, got {steps!r}")
    process = diffusion.respaced(str(steps))
    if method == "ddpm":
        return process.p_sample_loop(model, shape, step_noise=step_noise, **common)
    return process.ddim_sample_loop(model, shape, eta=eta, step_noise=step_noise, **common)
