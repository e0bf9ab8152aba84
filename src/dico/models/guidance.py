"""Classifier-free guidance, for DiCo, DiT and the cached sampler alike: a batch laid out [cond half; uncond half]
(labels of the second half are the null class), guidance on the first few output channels only.
"""

import torch


def resolve_guidance_channels(requested, in_channels: int) -> int:
    """How many leading output channels guidance acts on: `requested` (3, the official rule, kept for
    reproducibility), or every noise channel for "all" or None; never more than the model's `in_channels` (a grey
    pixel model has one noise channel, then its learned variance)."""
    if requested in (None, "all"):
        return in_channels
    return min(int(requested), in_channels)


def combine_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float, channels: int) -> torch.Tensor:
    """The guided output of a [cond; uncond] batch from the outputs of its two halves: both halves get
    uncond + scale * (cond - uncond) on the first `channels` channels, and keep their own remaining channels (the
    learned variance is never guided)."""
    guided = uncond[:, :channels] + scale * (cond[:, :channels] - uncond[:, :channels])
    return torch.cat([torch.cat([guided, cond[:, channels:]], dim=1), torch.cat([guided, uncond[:, channels:]], dim=1)])
