"""Tensor helpers shared by the diffusion (dico.diffusion) and flow-matching (dico.transport) objectives."""

import torch


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch one: one value per sample."""
    return x.mean(dim=tuple(range(1, x.ndim)))
