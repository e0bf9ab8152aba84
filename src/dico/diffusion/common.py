"""Helpers every sampler of the package shares: the starting noise and the dtype sampling arithmetic runs in."""

from typing import Optional

import torch


def initial_noise(model, shape, noise: Optional[torch.Tensor], device) -> torch.Tensor:
    """The starting x_T: `noise` if given, else standard normal on `device` (or the model's device, or CPU)."""
    if not isinstance(shape, (tuple, list, torch.Size)):
        raise ValueError(f"shape must be a tuple like (N, C, H, W), got {shape!r}")
    if noise is not None:
        if tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
        return noise.to(device) if device is not None else noise
    if device is None:
        parameters = getattr(model, "parameters", None)
        first = next(iter(parameters()), None) if callable(parameters) else None
        device = first.device if first is not None else "cpu"
    return torch.randn(*shape, device=device)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)
