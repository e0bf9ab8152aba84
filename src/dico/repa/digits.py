"""The REPA teacher of the digits demo: a small network trained on the bundled digits for this purpose only.

It plays DINOv2's part at toy scale: patch tokens (64-d on the 8x8 pixel grid) of a network that learnt to tell the
digits apart. It differs from the Digits-FID classifier in architecture (see `DigitsPatchEncoder`), seed, data
(all 1797 digits at their native 8x8 rather than an 80% split upscaled to 16x16) and objective (no junk class), so
the judge of the samples is not their teacher. Trained once, deterministically on one thread, in a few seconds,
and cached beside the Digits-FID classifier.
"""

from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import DigitsDataset
from ..cache import cache_dir, cached
from .networks import DigitsPatchEncoder
from .patch_encoder import PatchEncoder, read_encoder_file, save_encoder_file

DIGITS_ENCODER = "digits"
DIGITS_ENCODER_RECIPE = "v1"  # bump when the architecture or the training recipe changes
DIGITS_ENCODER_SEED = 1  # the Digits-FID classifier uses 0
DIGITS_PREPROCESSING = {"input_size": 8, "channels": 1, "mean": (0.5,), "std": (0.5,)}  # [-1, 1] as the data


def train_digits_encoder(seed: int = DIGITS_ENCODER_SEED, epochs: int = 12, batch_size: int = 64,
                         dim: int = 64) -> DigitsPatchEncoder:
    """Supervised digit classification from the mean token, with one-pixel random shifts; the seed fixes the
    initialisation and the batch order. Returns the network in eval mode (call it for (N, dim, 8, 8) maps)."""
    data = DigitsDataset()
    images, labels = data.images, data.labels
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsPatchEncoder(dim=dim)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops; and the weights then do not depend on the machine's core count
    try:
        model.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(images), generator=generator).split(batch_size):
                shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
                x = torch.roll(images[batch], shifts=shift, dims=(2, 3))
                loss = F.cross_entropy(model.classify(x), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval().requires_grad_(False)


def digits_encoder_path(directory=None) -> Path:
    directory = Path(directory) if directory is not None else cache_dir()
    return directory / f"digits-repa-encoder-{DIGITS_ENCODER_RECIPE}.pt"


def load_digits_encoder(directory=None) -> PatchEncoder:
    """The cached digits teacher as a PatchEncoder (images in [-1, 1], (N, 64, 64) tokens), trained on first use."""

    def write(network, file):
        save_encoder_file(file, network, arch="digits-patch-convnet", config={"dim": network.dim},
                          **DIGITS_PREPROCESSING)

    def read(file):
        return read_encoder_file(file, name=DIGITS_ENCODER)

    return cached(digits_encoder_path(directory), train_digits_encoder, write, read,
                  damaged=(ValueError, RuntimeError, KeyError))


def digits_accuracy(network: DigitsPatchEncoder) -> float:
    """Accuracy of the teacher's head on the digits it trained on (a sanity check that it learnt digits)."""
    data = DigitsDataset()
    with torch.no_grad():
        return float((network.classify(data.images).argmax(1) == data.labels).float().mean())
