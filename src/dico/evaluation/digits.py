"""Digits-FID: an offline stand-in for Inception on scikit-learn's handwritten digits.

A small ConvNet, trained deterministically in a few seconds on a fixed 80% split of the 1797 bundled 8x8 digits
(upscaled to 16x16 three ways: nearest, bilinear, bicubic), gives 64-d penultimate features for a Fréchet distance and
precision/recall, and class predictions for the accuracy of class-conditional samples. The numbers measure the digits
demo only: Digits-FID is on another scale than ImageNet FID and not comparable with it.

The trained weights are cached (by default under ~/.cache/dico); their hash is part of the feature cache key.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import load_digits_uint8
from ..cache import cache_dir, cached

CLASSIFIER_RESOLUTION = 16
RECIPE_VERSION = "v4"  # bump when the architecture or the training recipe changes
TRAIN_FRACTION = 0.8
SPLIT_SEED = 0


UPSCALINGS = ("nearest", "bilinear", "bicubic")


def digits_images(resolution: int = CLASSIFIER_RESOLUTION, upscale: str = "bilinear") -> tuple[np.ndarray, np.ndarray]:
    """The demo's digits (`dico.data.load_digits_uint8`: 8x8 uint8) as (N, resolution, resolution, 1) images and labels.

    `upscale`: "nearest" or "bilinear" (torch, on the float values, then rounded) or "bicubic" (PIL's filter).
    """
    if upscale not in UPSCALINGS:
        raise ValueError(f"unknown upscale {upscale!r}; choose one of {', '.join(UPSCALINGS)}")
    small, labels = load_digits_uint8()
    if upscale == "bicubic":
        from PIL import Image

        size = (resolution, resolution)
        images = np.stack([np.asarray(Image.fromarray(im).resize(size, resample=Image.BICUBIC)) for im in small])
        return np.ascontiguousarray(images[..., None]), labels.copy()
    pixels = torch.from_numpy(small.astype(np.float32))[:, None]
    if resolution != small.shape[-1]:
        options = {"align_corners": False} if upscale == "bilinear" else {}
        pixels = F.interpolate(pixels, size=(resolution, resolution), mode=upscale, **options)
    images = pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.ascontiguousarray(images), labels.copy()


def digits_split() -> tuple[np.ndarray, np.ndarray]:
    """Indices of the classifier's fixed training split (80%) and held-out split (20%)."""
    order = np.random.default_rng(SPLIT_SEED).permutation(1797)
    cut = int(round(TRAIN_FRACTION * len(order)))
    return np.sort(order[:cut]), np.sort(order[cut:])


NUM_DIGITS = 10
NOT_A_DIGIT = 10  # an 11th class, trained on noise, blobs, constants and pixel-shuffled digits


class DigitsClassifier(nn.Module):
    """Three 3x3 convolutions and two linear layers on 16x16 gray digits; `features` is the 64-d penultimate layer.

    Besides the ten digits it learns an 11th "not a digit" class, so that its features keep junk (the noisy blobs of
    an undertrained generator) away from real digits instead of folding it onto them; a junk sample is never counted
    as correctly classified.
    """

    feature_dim = 64

    def __init__(self, num_classes: int = NUM_DIGITS + 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 4 * 4, self.feature_dim), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(self.feature_dim, num_classes)

    @staticmethod
    def prepare(images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W), any size, gray or RGB -> float (N, 1, 16, 16) in [0, 1]."""
        x = images.float().mean(dim=1, keepdim=True) / 255.0
        if x.shape[-2:] != (CLASSIFIER_RESOLUTION, CLASSIFIER_RESOLUTION):
            x = F.interpolate(x, size=(CLASSIFIER_RESOLUTION,) * 2, mode="bilinear", antialias=True, align_corners=False)
        return x

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(self.prepare(images))
        return features, self.head(features)


def not_a_digit_images(count: int, generator: torch.Generator, digits: torch.Tensor) -> torch.Tensor:
    """uint8 (count, 1, 16, 16) junk of four kinds: uniform noise, smooth random blobs, constant images and digits
    with their pixels shuffled (right intensities, no shape)."""
    size = (count, 1, CLASSIFIER_RESOLUTION, CLASSIFIER_RESOLUTION)
    kind = torch.randint(0, 4, (count,), generator=generator)
    noise = torch.rand(size, generator=generator)
    blobs = F.interpolate(torch.rand((count, 1, 4, 4), generator=generator), size=size[-2:], mode="bilinear")
    constant = torch.rand((count, 1, 1, 1), generator=generator).expand(size)
    picked = digits[torch.randint(0, len(digits), (count,), generator=generator)].flatten(1).float() / 255
    shuffled = picked[:, torch.randperm(picked.shape[1], generator=generator)].view(size)
    junk = torch.stack([noise, blobs, constant, shuffled])[kind, torch.arange(count)]
    return (junk * 255).round().to(torch.uint8)


def train_digits_classifier(seed: int = 0, epochs: int = 10, batch_size: int = 64) -> DigitsClassifier:
    """Train on the fixed split, from nearest, bilinear and bicubic 16x16 upscalings (so any usual resampling of the
    demo data reads alike), with one-pixel random shifts and one "not a digit" image per eight digits; the seed fixes
    initialisation, junk and batch order."""
    train_idx, _ = digits_split()
    variants = [digits_images(upscale=mode) for mode in UPSCALINGS]
    digits = torch.from_numpy(np.concatenate([v[0][train_idx] for v in variants])).permute(0, 3, 1, 2)
    digit_labels = torch.from_numpy(np.concatenate([v[1][train_idx] for v in variants]))
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier()
    threads = torch.get_num_threads()
    # One thread: ops this small gain nothing from more, it is several times faster on a busy machine, and the
    # weights then do not depend on the machine's core count.
    torch.set_num_threads(1)
    try:
        return _fit(model, digits, digit_labels, generator, epochs, batch_size)
    finally:
        torch.set_num_threads(threads)


def _fit(model, digits, digit_labels, generator, epochs, batch_size) -> DigitsClassifier:
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        junk = not_a_digit_images(len(digits) // 8, generator, digits)
        images = torch.cat([digits, junk])
        labels = torch.cat([digit_labels, torch.full((len(junk),), NOT_A_DIGIT)])
        for batch in torch.randperm(len(images), generator=generator).split(batch_size):
            shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
            x = torch.roll(images[batch], shifts=shift, dims=(2, 3))
            _, logits = model(x)
            loss = F.cross_entropy(logits, labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval().requires_grad_(False)


def load_digits_classifier(directory=None) -> tuple[DigitsClassifier, Path]:
    """The cached classifier, trained and cached on first use; returns it and its weights file."""
    from safetensors.torch import load_file, save_file

    directory = Path(directory) if directory is not None else cache_dir()
    path = directory / f"digits-classifier-{RECIPE_VERSION}.safetensors"
    model = DigitsClassifier()

    def read(file):
        model.load_state_dict(load_file(str(file)))
        return model.eval().requires_grad_(False)

    def write(trained, file):
        save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(file))

    return cached(path, train_digits_classifier, write, read), path


class DigitsFeatures:
    """Digits classifier features of uint8 NHWC images: {"features": 64, "logits": 11 (ten digits, not a digit)}."""

    kind = "digits"
    layers = {"features": DigitsClassifier.feature_dim, "logits": NUM_DIGITS + 1}
    label_classes = NUM_DIGITS  # sample labels (arr_1) name one of the ten digits
    stored_layers = ("features", "logits")  # precision/recall, class accuracy
    statistics_layers = ("features",)  # Digits-FID

    def __init__(self, device="cpu", directory=None):
        model, path = load_digits_classifier(directory)
        self.identity = f"digits-{RECIPE_VERSION}-{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
        self.device = torch.device(device)
        self.network = model.to(self.device)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2)
        features, logits = self.network(x)
        return {"features": features.float().cpu().numpy(), "logits": logits.float().cpu().numpy()}
