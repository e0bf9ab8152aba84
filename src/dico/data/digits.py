"""The bundled demo data: scikit-learn's handwritten digits (1797 images, 8x8, 10 classes), no download needed.

The demo trains in pixel space on one grey channel at the native 8x8 (DiCo's U-shape goes 8 -> 4 -> 2): values
0..16 scale to 0..255 and are rounded to uint8 once. Those uint8 images are the data set: training maps them to
[-1, 1], and `export_digits` writes them unchanged, so samples and real data compare directly. Native resolution
keeps a laptop run to minutes (an upscaled 16x16 copy would cost 4x the compute for no new information).
No flips: a mirrored digit is not a digit.
"""

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..images import write_npz
from ..options import check_new_output

DIGITS_RESOLUTION = 8
DIGITS_CLASSES = [str(d) for d in range(10)]


@lru_cache(maxsize=1)
def load_digits_uint8() -> tuple:
    """(images uint8 (1797, 8, 8), labels int64 (1797,)): exactly what the demo trains on."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(np.round(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    images.setflags(write=False)
    return images, digits.target.astype(np.int64)


class DigitsDataset(torch.utils.data.Dataset):
    """(x float32 (1, 8, 8) in [-1, 1], label) pairs; held in memory (460 KB)."""

    def __init__(self):
        images, labels = load_digits_uint8()
        self.images = torch.from_numpy(images.copy()).float().div(127.5).sub(1.0)[:, None]
        self.labels = torch.from_numpy(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]


def digits_fingerprint() -> str:
    images, labels = load_digits_uint8()
    return hashlib.sha256(images.tobytes() + labels.astype("int64").tobytes()).hexdigest()


def export_digits(path, overwrite: bool = False) -> Path:
    """The demo's training images in ADM .npz format (`arr_0` uint8 NHWC, grey replicated to 3 channels;
    `arr_1` labels), the reference for evaluating the demo. An existing file is replaced only with `overwrite`."""
    check_new_output(path, overwrite, "out")
    images, labels = load_digits_uint8()
    rgb = np.repeat(images[..., None], 3, axis=-1)
    return write_npz(path, [rgb], len(rgb), rgb.shape[1:], labels)
