"""Interpolation paths x_t = alpha_t * x1 + sigma_t * x0 between noise x0 (t = 0) and data x1 (t = 1).

Each path gives its coefficients and their time derivatives; everything else (the velocity target, the
probability-flow drift, score <-> velocity conversions, SDE diffusion forms) is written once on top of them.
The formulas and the order of floating-point operations follow SiT's `transport/path.py`, so losses and samples
agree with SiT's to rounding.

Notation: for a velocity field v(x, t) of the path, v = f(x, t) + g(t) * score(x, t) with
    f(x, t) = (d alpha_t / alpha_t) * x          (the "mean drift")
    g(t) = (d alpha_t / alpha_t) * sigma_t^2 - sigma_t * d sigma_t
"""

import math

import torch


def expand_like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-sample time vector (B,) reshaped to broadcast against x (B, ...)."""
    return t.view(t.shape[0], *([1] * (x.dim() - 1)))


class LinearPath:
    """alpha_t = t, sigma_t = 1 - t (rectified flow / SiT's "Linear")."""

    name = "Linear"

    def alpha(self, t):
        """(alpha_t, d alpha_t / dt)."""
        return t, 1

    def sigma(self, t):
        """(sigma_t, d sigma_t / dt)."""
        return 1 - t, -1

    def alpha_log_derivative(self, t):
        """d alpha_t / alpha_t, written per path so it stays finite where a generic ratio would not."""
        return 1 / t

    def drift_terms(self, x, t):
        """(f(x, t), g(t)) of the module docstring; t is (B,)."""
        t = expand_like(t, x)
        ratio = self.alpha_log_derivative(t)
        sigma_t, d_sigma_t = self.sigma(t)
        return ratio * x, ratio * sigma_t**2 - sigma_t * d_sigma_t

    def diffusion(self, x, t, form: str = "SBDM", norm: float = 1.0):
        """The SDE diffusion coefficient D(t) (the noise enters as sqrt(2 D) dW) for SiT's named forms."""
        t = expand_like(t, x)
        if form == "constant":
            return torch.full_like(t, norm)
        if form == "SBDM":  # score-based diffusion matching: D = g, the SDE whose marginals are the path's
            return norm * self.drift_terms(x, t.flatten())[1]
        if form == "sigma":
            return norm * self.sigma(t)[0]
        if form == "linear":
            return norm * (1 - t)
        if form == "decreasing":
            return 0.25 * (norm * torch.cos(math.pi * t) + 1) ** 2
        if form == "increasing-decreasing":
            return norm * torch.sin(math.pi * t) ** 2
        raise ValueError(f"unknown diffusion form {form!r}; valid: {', '.join(DIFFUSION_FORMS)}")

    def score_from_velocity(self, velocity, x, t):
        """score = ((alpha/d alpha) v - x) / (sigma^2 - (alpha/d alpha) d sigma sigma): the form that stays finite
        at t = 0 for the linear path, where d alpha / alpha is infinite."""
        t = expand_like(t, x)
        alpha_t, d_alpha_t = self.alpha(t)
        sigma_t, d_sigma_t = self.sigma(t)
        inverse_ratio = alpha_t / d_alpha_t
        variance = sigma_t**2 - inverse_ratio * d_sigma_t * sigma_t
        return (inverse_ratio * velocity - x) / variance

    def noise_from_velocity(self, velocity, x, t):
        """The noise x0 that a velocity prediction implies (noise = -sigma * score)."""
        t = expand_like(t, x)
        alpha_t, d_alpha_t = self.alpha(t)
        sigma_t, d_sigma_t = self.sigma(t)
        inverse_ratio = alpha_t / d_alpha_t
        return (inverse_ratio * velocity - x) / (inverse_ratio * d_sigma_t - sigma_t)

    def velocity_from_score(self, score, x, t):
        f, g = self.drift_terms(x, t)
        return f + g * score

    def interpolate(self, t, x0, x1):
        """x_t for per-sample times t (B,)."""
        t = expand_like(t, x1)
        alpha_t, _ = self.alpha(t)
        sigma_t, _ = self.sigma(t)
        return alpha_t * x1 + sigma_t * x0

    def target_velocity(self, t, x0, x1):
        """d x_t / dt along the straight-in-coefficients path from x0 to x1."""
        t = expand_like(t, x1)
        _, d_alpha_t = self.alpha(t)
        _, d_sigma_t = self.sigma(t)
        return d_alpha_t * x1 + d_sigma_t * x0


class GVPPath(LinearPath):
    """Generalised variance preserving: alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2)."""

    name = "GVP"

    def alpha(self, t):
        return torch.sin(t * math.pi / 2), math.pi / 2 * torch.cos(t * math.pi / 2)

    def sigma(self, t):
        return torch.cos(t * math.pi / 2), -math.pi / 2 * torch.sin(t * math.pi / 2)

    def alpha_log_derivative(self, t):
        return math.pi / (2 * torch.tan(t * math.pi / 2))


class VPPath(LinearPath):
    """The variance-preserving SDE of score-based diffusion (linear beta from beta_min 0.1 to beta_max 20), run
    backwards so that t = 1 is data: alpha_t = exp(m(t)), sigma_t = sqrt(1 - alpha_t^2) with
    m(t) = -(1 - t)^2 (beta_max - beta_min) / 4 - (1 - t) beta_min / 2."""

    name = "VP"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min, self.beta_max = beta_min, beta_max

    def log_alpha(self, t):
        return -0.25 * ((1 - t) ** 2) * (self.beta_max - self.beta_min) - 0.5 * (1 - t) * self.beta_min

    def alpha_log_derivative(self, t):
        return 0.5 * (1 - t) * (self.beta_max - self.beta_min) + 0.5 * self.beta_min

    def alpha(self, t):
        alpha_t = torch.exp(self.log_alpha(t))
        return alpha_t, alpha_t * self.alpha_log_derivative(t)

    def sigma(self, t):
        alpha_squared = torch.exp(2 * self.log_alpha(t))
        sigma_t = torch.sqrt(1 - alpha_squared)
        return sigma_t, alpha_squared * (2 * self.alpha_log_derivative(t)) / (-2 * sigma_t)

    def drift_terms(self, x, t):
        # Closed form: f = beta_t x / 2 and g = beta_t / 2 with beta_t the VP SDE's noise rate at time 1 - t.
        t = expand_like(t, x)
        beta_t = self.beta_min + (1 - t) * (self.beta_max - self.beta_min)
        return 0.5 * beta_t * x, beta_t / 2


PATHS = {"Linear": LinearPath, "GVP": GVPPath, "VP": VPPath}
DIFFUSION_FORMS = ("constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing")
