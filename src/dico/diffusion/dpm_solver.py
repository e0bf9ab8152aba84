"""DPM-Solver++ (Lu et al. 2022, arXiv 2211.01095): multistep solvers of the probability-flow ODE in data
prediction form, for good samples in 10-25 model evaluations.

Why our own implementation rather than diffusers' DPMSolverMultistepScheduler: we want the solver to live on
exactly the discrete schedule the model was trained on (the float64 alpha_bar of this process, queried only at
integer timesteps the model has seen, through the same timestep map as DDPM/DDIM), to take any callable model
(classifier-free guidance included) with learned-variance outputs, and to keep one source of truth for the schedule.
The solver itself is a few lines of arithmetic.

Discretisation: with alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t) and lambda_t = log(alpha_t /
sigma_t), the exact solution from s to t is
    x_t = (sigma_t / sigma_s) x_s + sigma_t * integral_{lambda_s}^{lambda_t} e^lambda x0_hat(lambda) d lambda,
and the k-th order multistep method approximates x0_hat by the polynomial through the last k data predictions.
The grid is `steps + 1` integer timesteps of the process (the model is only queried at timesteps it was trained
on), from the last index down to 0, spaced by `skip_type`:
  - "logSNR" (default): evenly in lambda, snapped to the nearest timestep (kept strictly decreasing);
  - "time_uniform": evenly in t; "time_quadratic": evenly in sqrt(t).
The model is evaluated at the first `steps` points and the result is x at index 0 (alpha_bar_0 = 1 - 1e-4: its
residual noise is far below what a VAE decoder resolves). On this linear schedule lambda runs from -5.1 to 4.6 and
a time-uniform grid crosses lambda 1.9..4.6 in its last step; against the exact Gaussian-data flow that costs
+10..+30 % in the sample std at 15-25 steps with 2M, while the logSNR grid is within 1.5 % at 20 steps (and 0.2 %
at 50). Hence the default.
"""

import math
from typing import Optional

import numpy as np
import torch

from .common import compute_dtype, initial_noise

# Below this many steps the last steps fall back to lower orders (Lu et al.'s rule): with very few steps the final
# step sizes are large and extrapolating from older predictions becomes unreliable.
LOWER_ORDER_FINAL_BELOW = 10
SKIP_TYPES = ("logSNR", "time_uniform", "time_quadratic")


def dpm_solver_timesteps(alphas_cumprod: np.ndarray, steps: int, skip_type: str = "logSNR") -> np.ndarray:
    """The steps + 1 time points (indices into alphas_cumprod), strictly decreasing from the last index to 0."""
    n = len(alphas_cumprod)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= n - 1:
        raise ValueError(f"steps must be an integer in 1..{n - 1} for a {n}-step process, got {steps!r}")
    if skip_type == "time_uniform":
        grid = np.round(np.linspace(n - 1, 0, steps + 1))
    elif skip_type == "time_quadratic":
        grid = np.round(np.linspace(np.sqrt(n - 1), 0, steps + 1) ** 2)
    elif skip_type == "logSNR":
        lam = 0.5 * (np.log(alphas_cumprod) - np.log1p(-alphas_cumprod))  # decreasing in t
        targets = np.linspace(lam[-1], lam[0], steps + 1)
        grid = np.abs(lam[None, :] - targets[:, None]).argmin(axis=1)
    else:
        raise ValueError(f"unknown skip_type {skip_type!r}; valid: {', '.join(SKIP_TYPES)}")
    grid = grid.astype(np.int64)
    # Rounding can merge neighbours where the grid is dense in t (near t = 0): push them apart by one timestep at
    # least, then keep the top end inside the process.
    for k in range(steps - 1, -1, -1):
        grid[k] = max(grid[k], grid[k + 1] + 1)
    return np.minimum(grid, n - 1 - np.arange(steps + 1))


def dpm_solver_plus_plus(diffusion, model, shape, steps: int = 20, order: int = 2, noise: Optional[torch.Tensor] = None,
                         clip_denoised: bool = False, model_kwargs: Optional[dict] = None, device=None,
                         progress: bool = False, skip_type: str = "logSNR") -> torch.Tensor:
    """Sample with DPM-Solver++(order M), `steps` model evaluations, on `diffusion`'s schedule.

    model(x, t, **model_kwargs) returns eps (C channels) or eps and a variance output (2C channels; only the first C
    are used). The solver is deterministic given `noise` (default: torch.randn(shape) on the model's device).
    order: 1 (= DDIM on the same grid), 2 (2M, the usual choice, also with guidance) or 3 (3M; best from ~15 steps).
    skip_type: the time grid, see the module docstring.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    grid = dpm_solver_timesteps(diffusion.alphas_cumprod, steps, skip_type)
    alpha_bar = diffusion.alphas_cumprod[grid]
    alpha = np.sqrt(alpha_bar)
    sigma = np.sqrt(1.0 - alpha_bar)
    lam = np.log(alpha) - np.log(sigma)

    x = initial_noise(model, shape, noise, device)
    out_dtype = x.dtype
    x = x.to(compute_dtype(x))
    channels = x.shape[1]
    history = []  # (lambda, data prediction) of the most recent evaluations, newest last
    positions = range(steps)
    if progress:
        from tqdm.auto import tqdm

        positions = tqdm(positions)
    for i in positions:
        t = torch.full((x.shape[0],), int(grid[i]), device=x.device, dtype=torch.long)
        with torch.no_grad():
            output = model(x.to(out_dtype), diffusion.model_timesteps(t), **(model_kwargs or {}))
        if output.shape[1] not in (channels, 2 * channels):
            raise ValueError(f"model output has {output.shape[1]} channels; expected {channels} (eps) or "
                             f"{2 * channels} (eps and variance)")
        eps = output[:, :channels].to(x.dtype)
        x0 = (x - float(sigma[i]) * eps) / float(alpha[i])
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        history = (history + [(float(lam[i]), x0)])[-3:]

        step_order = min(order, i + 1)
        if steps < LOWER_ORDER_FINAL_BELOW:
            step_order = min(step_order, steps - i)
        x = _multistep_update(x, history, step_order, float(lam[i + 1]), float(alpha[i + 1]),
                              float(sigma[i + 1]), float(sigma[i]))
    return x.to(out_dtype)


def _multistep_update(x, history, order, lam_next, alpha_next, sigma_next, sigma_now):
    """One DPM-Solver++ step from the newest history point to lam_next (eqs. of Lu et al., App. B, data form)."""
    lam0, d0 = history[-1]
    h = lam_next - lam0
    phi1 = math.expm1(-h)  # e^{-h} - 1 < 0
    x_next = (sigma_next / sigma_now) * x - (alpha_next * phi1) * d0
    if order == 1:
        return x_next
    lam1, d1 = history[-2]
    r0 = (lam0 - lam1) / h
    slope0 = (d0 - d1) / r0  # h * dD/dlambda, estimated from the last two predictions
    if order == 2:
        return x_next - (0.5 * alpha_next * phi1) * slope0
    lam2, d2 = history[-3]
    r1 = (lam1 - lam2) / h
    slope1 = (d1 - d2) / r1
    first = slope0 + (r0 / (r0 + r1)) * (slope0 - slope1)  # h D'   at lam0, second-order accurate
    second = (slope0 - slope1) / (r0 + r1)                 # h^2 D''/2 estimate
    phi2 = phi1 / h + 1.0
    phi3 = phi2 / h - 0.5
    return x_next + (alpha_next * phi2) * first - (alpha_next * phi3) * second
