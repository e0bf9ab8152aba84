"""Flow matching as SiT (arXiv 2401.08740) defines it: interpolation paths between noise (t = 0) and data (t = 1),
velocity / noise / score prediction, and ODE / SDE samplers; numbers match SiT's `transport/` package.

    from dico.transport import Sampler, create_transport
    transport = create_transport("Linear", "velocity")                      # SiT's defaults
    losses = transport.training_losses(model, x1, {"y": y}, keys=keys)      # keys: (seed, step, position) per sample
    sample = Sampler(transport).sample_ode(sampling_method="dopri5", num_steps=50)
    x = sample(z, model, y=y)[-1]
    x = sample_loop(transport, model, z, sampler="sde", step_noise=step_noise, model_kwargs={"y": y})  # one call
"""

from .paths import DIFFUSION_FORMS, PATHS, GVPPath, LinearPath, VPPath
from .sampler import Sampler, keyed_rademacher, sample_loop, shift_time, time_grid
from .transport import (LOSS_WEIGHTS, PREDICTIONS, TIME_SAMPLINGS, TRANSPORT_PURPOSES, Transport, create_transport,
                        model_prediction)

__all__ = [
    "create_transport",
    "Transport",
    "Sampler",
    "sample_loop",
    "shift_time",
    "time_grid",
    "keyed_rademacher",
    "model_prediction",
    "LinearPath",
    "GVPPath",
    "VPPath",
    "PATHS",
    "PREDICTIONS",
    "LOSS_WEIGHTS",
    "TIME_SAMPLINGS",
    "DIFFUSION_FORMS",
    "TRANSPORT_PURPOSES",
]
