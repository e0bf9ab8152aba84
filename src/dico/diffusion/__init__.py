"""The iDDPM Gaussian diffusion of DiT and DiCo (training loss, DDPM and DDIM sampling, respacing) and a
DPM-Solver++ multistep sampler for few-step generation.

    from dico.diffusion import create_diffusion, sample_loop
    diffusion = create_diffusion("")                     # 1000 linear steps, learned-range variance
    losses = diffusion.training_losses(model, x0, t, dict(y=y))
    x = sample_loop(diffusion, model, (n, 4, 32, 32), method="dpm++2m", steps=20, model_kwargs=dict(y=y))
"""

from .dpm_solver import dpm_solver_plus_plus, dpm_solver_timesteps
from .gaussian_diffusion import GaussianDiffusion, create_diffusion
from .sampler import SAMPLING_METHODS, sample_loop
from .schedules import NOISE_SCHEDULES, named_beta_schedule, space_timesteps

__all__ = [
    "GaussianDiffusion",
    "create_diffusion",
    "sample_loop",
    "SAMPLING_METHODS",
    "dpm_solver_plus_plus",
    "dpm_solver_timesteps",
    "named_beta_schedule",
    "space_timesteps",
    "NOISE_SCHEDULES",
]
