"""Training data with REPA targets: each item is (x, label, encoder tokens of the same image as drawn)."""

import copy

import torch

from ..data import DigitsDataset, LatentDataset
from .encoders import encoder_identity, load_encoder


class TokensBeside(torch.utils.data.Dataset):
    """(x, label, tokens[index]) for a data set without augmentation and tokens computed once, in memory."""

    def __init__(self, dataset, tokens: torch.Tensor, encoder: str):
        if len(tokens) != len(dataset):
            raise ValueError(f"{len(tokens)} token sets for {len(dataset)} items")
        self.dataset, self.tokens, self.repa_encoder = dataset, tokens, encoder

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        x, y = self.dataset[index]
        return x, y, self.tokens[index]


@torch.no_grad()
def encode_dataset(dataset, encoder, batch_size: int = 256) -> torch.Tensor:
    """(N, T, D) float32 tokens of every image of an in-memory data set (as it yields them, in [-1, 1])."""
    out = []
    for start in range(0, len(dataset), batch_size):
        x = torch.stack([dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))])
        out.append(encoder(x).cpu())
    return torch.cat(out)


def repa_dataset(dataset, encoder: str | None = None, device="cpu"):
    """`dataset` with REPA targets: latents extracted with `--repa-encoder` read their stored tokens (`encoder`, if
    given, must name the same encoder); the bundled digits are encoded once, in memory ("digits" by default).
    Returns (dataset yielding (x, label, tokens), the token feature size D)."""
    if isinstance(dataset, LatentDataset):
        stored = dataset.repa_encoder
        if stored is None:
            raise ValueError(f"{dataset.directory} holds no REPA encoder features; extract them with "
                             "`dico extract-latents ... --repa-encoder NAME`")
        if encoder is not None and encoder_identity(encoder) != stored:
            raise ValueError(f"--repa-encoder {encoder}: the latents in {dataset.directory} hold the features of "
                             f"{stored}; train with that encoder or extract again")
        with_tokens = copy.copy(dataset)
        with_tokens.repa_features = True
        return with_tokens, int(dataset.meta["repa_shape"][1])
    if isinstance(dataset, DigitsDataset):
        name = encoder or "digits"
        network = load_encoder(name, image_size=dataset.images.shape[-1], device=device)
        tokens = encode_dataset(dataset, network).to(torch.float16).float()  # stored precision, as extraction
        return TokensBeside(dataset, tokens, network.name), tokens.shape[-1]
    raise ValueError(f"REPA needs encoder features stored with the data: extract latents with `dico extract-latents "
                     f"--repa-encoder NAME` (got a {type(dataset).__name__}; pixel-space image folders are not "
                     "supported)")
