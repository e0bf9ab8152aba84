"""Randomness keyed by (seed, purpose, step, sample index).

Every random draw that shapes a result comes from a generator seeded by the draw's key, never from a global stream,
so results do not depend on batch size, process count or where a run was interrupted.
"""

from typing import Callable

import numpy as np
import torch

# The samplers' noise hook, for DDPM and flow SDE sampling alike: step_noise(i, shape) gives the fresh N(0, I) noise
# of step i (keyed per image by the caller, so an image's noise does not depend on its batch).
StepNoise = Callable[[int, tuple], torch.Tensor]

PURPOSES = {"noise": 1, "timestep": 2, "label_drop": 3, "data": 4, "sample_init": 5, "sample_step": 6, "label": 7}


def keyed_seed(*key: int) -> int:
    """A 63-bit seed mixed from integer keys (numpy's SeedSequence hashing: nearby keys give unrelated seeds)."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFFFFFFFFFF for k in key]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def keyed_generator(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(keyed_seed(*key))


def keyed_randn(keys, shape, device=None, dtype=torch.float32) -> torch.Tensor:
    """One standard-normal tensor of `shape` per key, stacked: (len(keys), *shape). Drawn on the CPU for
    bit-identical results on every device, then moved."""
    out = torch.stack([torch.randn(shape, generator=keyed_generator(*k)) for k in keys])
    return out.to(device=device, dtype=dtype)


def keyed_uniform(keys, device=None) -> torch.Tensor:
    return torch.tensor([torch.rand(1, generator=keyed_generator(*k)).item() for k in keys], device=device)


def keyed_randint(keys, high: int, device=None) -> torch.Tensor:
    return torch.tensor([int(torch.randint(high, (1,), generator=keyed_generator(*k))) for k in keys], device=device)
