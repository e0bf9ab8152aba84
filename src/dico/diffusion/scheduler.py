"""dico's iDDPM sampling process as a diffusers scheduler, so it saves and loads with a pipeline.

Every step is computed by dico's own `GaussianDiffusion` (the process `dico sample` runs), so a pipeline with this
scheduler makes the very images of `dico sample`. The config holds the keys diffusers' schedulers read
(`num_train_timesteps`, `beta_*`, `prediction_type`, `clip_sample`, `timestep_spacing`), so that
`DDIMScheduler.from_config(pipe.scheduler.config)` builds the same noise schedule.
"""

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from ..options import check_steps
from .gaussian_diffusion import GaussianDiffusion
from .schedules import named_beta_schedule, space_timesteps

SAMPLERS = ("ddpm", "ddim")


@dataclass
class StepOutput(SchedulerOutput):
    """prev_sample (x_{t-1}) and the model's estimate of x_0 at this step."""

    pred_original_sample: torch.Tensor | None = None


class DiCoScheduler(SchedulerMixin, ConfigMixin):
    """Ancestral iDDPM ("ddpm", the official protocol) or DDIM ("ddim", with `eta`) sampling of a discrete process.

    A model output with twice the sample's channels carries iDDPM's learned-range variance (eps and v); with as many
    channels the variance is fixed (beta_t). `num_inference_steps` respaces the process as dico does (evenly, both
    ends included) and the model is called with the original timesteps.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear", beta_start: float = 0.0001,
                 beta_end: float = 0.02, sampler: str = "ddpm", eta: float = 0.0, prediction_type: str = "epsilon",
                 clip_sample: bool = False, timestep_spacing: str = "linspace"):
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if prediction_type != "epsilon":
            raise ValueError(f"dico's models predict the noise (prediction_type='epsilon'), got {prediction_type!r}")
        if sampler == "ddpm" and eta != 0:
            raise ValueError("eta only applies to the 'ddim' sampler")
        if beta_schedule == "linear":
            self.betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
        else:
            self.betas = named_beta_schedule(beta_schedule, num_train_timesteps)
        # diffusers' from_config drops keys a config left at their defaults, so that the new scheduler uses its own
        # (DDIMScheduler clips x_0 by default, wrong for latents). Every key but two defines the process: keep them.
        # `sampler` and `eta` only choose this scheduler's algorithm: at their defaults they are dropped, so that
        # `DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)` is not told of keys it cannot use.
        self.register_to_config(_use_default_values=[name for name, value, default in (
            ("sampler", sampler, "ddpm"), ("eta", eta, 0.0)) if value == default])
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.processes = {}
        self.set_timesteps(num_train_timesteps)

    def set_timesteps(self, num_inference_steps: int, device=None):
        steps = self.config.num_train_timesteps
        if check_steps(num_inference_steps) > steps:  # 2.5 is refused, not run as 2
            raise ValueError(f"--steps (num_inference_steps) must be an integer in [1, {steps}], "
                             f"got {num_inference_steps!r}")
        self.num_inference_steps = int(num_inference_steps)
        self.kept = np.array(space_timesteps(steps, str(self.num_inference_steps)), dtype=np.int64)
        self.index_of = {int(t): i for i, t in enumerate(self.kept)}
        self.processes = {}
        self.timesteps = torch.from_numpy(self.kept[::-1].copy()).to(device)

    def process(self, learn_sigma: bool) -> GaussianDiffusion:
        if learn_sigma not in self.processes:
            self.processes[learn_sigma] = GaussianDiffusion(self.betas, self.kept, learn_sigma=learn_sigma)
        return self.processes[learn_sigma]

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True):
        """x_t -> x_{t-1}. `variance_noise` is the fresh N(0, I) noise of this step (else drawn from `generator`)."""
        key = int(timestep)
        if key not in self.index_of:
            raise ValueError(f"timestep {key} is not one of this scheduler's {self.num_inference_steps} steps; "
                             "call set_timesteps first")
        process = self.process(model_output.shape[1] == 2 * sample.shape[1])
        t = torch.full((sample.shape[0],), self.index_of[key], dtype=torch.long, device=sample.device)
        stochastic = self.config.sampler == "ddpm" or self.config.eta != 0
        if variance_noise is None and stochastic:
            variance_noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)

        def precomputed(x, t_model, **kwargs):  # the process asks its "model"; the pipeline has already run it
            return model_output

        common = dict(clip_denoised=self.config.clip_sample, noise=variance_noise)
        if self.config.sampler == "ddpm":
            out = process.p_sample(precomputed, sample, t, **common)
        else:
            out = process.ddim_sample(precomputed, sample, t, eta=self.config.eta, **common)
        if not return_dict:
            return out["sample"], out["pred_xstart"]
        return StepOutput(prev_sample=out["sample"], pred_original_sample=out["pred_xstart"])

    def __len__(self):
        return self.config.num_train_timesteps
