"""MeanFlow's sampler as a diffusers scheduler, so DiCoPipeline and the web demo drive MeanFlow models as any other.

Timesteps are flow times (dico's direction: 0 noise, 1 data) times num_train_timesteps, one per jump of the uniform
grid; `interval(timestep)` gives the jump's (t, r), the model is called as model(x, t, y, r=r) (the objective's
pipeline_timesteps and pipeline_model_inputs) and `step` jumps x + (r - t) u. N steps give the samples of
`dico sample --steps N` for the same noise.
"""

import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerOutput

from ..options import check_steps
from . import time_points


class MeanFlowScheduler(SchedulerMixin, ConfigMixin):
    """Jumps along the uniform flow-time grid with the model's average velocity: x_r = x_t + (r - t) u."""

    config_name = "scheduler_config.json"
    order = 1
    init_noise_sigma = 1.0

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000):
        self.set_timesteps(1)

    def set_timesteps(self, num_inference_steps: int = 1, device=None):
        self.num_inference_steps = check_steps(num_inference_steps)
        self.points = time_points(self.num_inference_steps)
        scale = self.config.num_train_timesteps
        self.timesteps = torch.tensor([p * scale for p in self.points[:-1]], dtype=torch.float64, device=device)

    def index_for_timestep(self, timestep) -> int:
        matches = (self.timesteps - float(timestep)).abs() < 1e-6 * self.config.num_train_timesteps
        if not bool(matches.any()):
            raise ValueError(f"timestep {float(timestep)} is not one of this scheduler's ({self.timesteps.tolist()})")
        return int(matches.nonzero()[0])

    def interval(self, timestep) -> tuple:
        """The jump (t, r) in flow time that starts at `timestep`."""
        i = self.index_for_timestep(timestep)
        return self.points[i], self.points[i + 1]

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        t, r = self.interval(timestep)
        prev = sample + (r - t) * model_output.to(sample.dtype)
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def __len__(self):
        return self.config.num_train_timesteps
