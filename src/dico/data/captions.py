"""Captioned images: which caption an item carries at each visit, and (below) the caption sources dico reads."""

import torch

from ..randomness import PURPOSES, keyed_generator

# The last word of a caption draw's key (seed, PURPOSES["data"], epoch, index, CAPTION_DRAW): a stream apart from the
# item's flip and latent noise (folders.AUGMENT_DRAW = 1), so adding captions changes no image draw.
CAPTION_DRAW = 2


def caption_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of item `index`'s caption draw in `epoch`."""
    return keyed_generator(seed, PURPOSES["data"], epoch, index, CAPTION_DRAW)


def draw_caption(seed: int, epoch: int, index: int, count: int) -> int:
    """Which of an item's `count` captions it carries in this epoch: uniform, keyed by (seed, epoch, index)."""
    return int(torch.randint(count, (1,), generator=caption_generator(seed, epoch, index)))
