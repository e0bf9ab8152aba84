"""Noise schedules (betas over the full process) and timestep respacing.

Both reproduce the iDDPM conventions used by DiT and DiCo exactly, because a checkpoint is only meaningful
together with the schedule it was trained on, and a respaced sampler must visit the very same timesteps.
"""

import math
from typing import Iterable, Union

import numpy as np

NOISE_SCHEDULES = ("linear", "squaredcos_cap_v2")

Respacing = Union[None, str, int, Iterable[int]]


def named_beta_schedule(name: str, num_steps: int) -> np.ndarray:
    """betas[t] for t = 0..num_steps-1 in float64.

    "linear": Ho et al.'s 1e-4..0.02 over 1000 steps; other lengths scale both ends by 1000/num_steps so the
    process keeps the same overall amount of noise. "squaredcos_cap_v2": the cosine schedule of iDDPM
    (alpha_bar(s) = cos^2(((s + 0.008) / 1.008) * pi/2), betas capped at 0.999).
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"diffusion_steps must be a positive integer, got {num_steps!r}")
    if name == "linear":
        scale = 1000 / num_steps
        return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)
    if name == "squaredcos_cap_v2":
        return betas_from_alpha_bar(num_steps, lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2)
    raise ValueError(f"unknown noise schedule {name!r}; valid: {', '.join(NOISE_SCHEDULES)}")


def betas_from_alpha_bar(num_steps: int, alpha_bar, max_beta: float = 0.999) -> np.ndarray:
    """Discretise a continuous alpha_bar(s), s in [0, 1], into num_steps betas (capped to avoid beta = 1)."""
    edges = [alpha_bar(i / num_steps) for i in range(num_steps + 1)]
    return np.array([min(1 - edges[i + 1] / edges[i], max_beta) for i in range(num_steps)], dtype=np.float64)


def space_timesteps(num_steps: int, respacing: Respacing) -> list:
    """The sorted original timesteps a respaced process keeps.

    respacing:
      - None or "": keep all num_steps;
      - "ddimN": the DDIM paper's striding, range(0, num_steps, k) for the smallest integer stride k giving N steps;
      - "N" or N: N steps spread evenly over [0, num_steps - 1] (both ends included);
      - "a,b,c" or [a, b, c]: split the process into len(...) equal sections (the first ones one step longer when
        num_steps does not divide evenly) and spread a, b, c steps evenly over each section.
    """
    if respacing is None or respacing == "":
        return list(range(num_steps))
    if isinstance(respacing, str):
        text = respacing.strip()
        if text.startswith("ddim"):
            return _ddim_striding(num_steps, text)
        try:
            counts = [int(part) for part in text.split(",")]
        except ValueError:
            raise ValueError(
                f"invalid respacing {respacing!r}: expected 'ddimN', 'N' or comma-separated step counts like '10,15,20'"
            ) from None
    elif isinstance(respacing, int):
        counts = [respacing]
    else:
        counts = [int(c) for c in respacing]
    if not counts:
        raise ValueError("respacing needs at least one section")
    if len(counts) > num_steps:
        raise ValueError(f"cannot split {num_steps} steps into {len(counts)} sections")

    base, extra = divmod(num_steps, len(counts))
    kept, start = [], 0
    for section, count in enumerate(counts):
        size = base + (1 if section < extra else 0)
        if not 1 <= count <= size:
            raise ValueError(f"section {section} has {size} steps; cannot take {count} of them (need 1..{size})")
        stride = (size - 1) / (count - 1) if count > 1 else 1
        # Accumulate the fractional position (rather than multiplying) so rounding lands on exactly the timesteps
        # the reference implementation picks; the sampler must query the model at the same t it was evaluated at.
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


def _ddim_striding(num_steps: int, text: str) -> list:
    try:
        wanted = int(text[len("ddim"):])
    except ValueError:
        raise ValueError(f"invalid respacing {text!r}: expected 'ddim' followed by a step count, e.g. 'ddim50'") from None
    for stride in range(1, num_steps + 1):
        if len(range(0, num_steps, stride)) == wanted:
            return list(range(0, num_steps, stride))
    raise ValueError(
        f"cannot take exactly {wanted} steps from {num_steps} with an integer stride ('{text}'); "
        f"use an evenly spaced respacing such as '{wanted}' instead"
    )
