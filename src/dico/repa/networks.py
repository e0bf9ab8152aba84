"""Small encoder architectures that dico builds itself (saved as a state dict + config, see `patch_encoder`)."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class DigitsPatchEncoder(nn.Module):
    """A REPA teacher for the 8x8 digits: three convolutions at full resolution (5x5, then two 3x3 with a residual),
    GELU, no pooling, so every pixel keeps a `dim`-d token on the 8x8 grid; a linear head on the mean token trains it.

    Deliberately unlike the Digits-FID classifier (`dico.evaluation.digits`: ReLU, max-pooling, 16x16 input, an
    11th junk class): the network that judges samples is not the one the model is aligned to.
    """

    def __init__(self, dim: int = 64, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, dim // 2, 5, padding=2)
        self.conv1 = nn.Conv2d(dim // 2, dim, 3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)
        self.norm = nn.GroupNorm(1, dim)
        self.head = nn.Linear(dim, num_classes)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 8, 8) in [-1, 1] -> (N, dim, 8, 8) feature map (the patch tokens)."""
        h = F.gelu(self.conv1(F.gelu(self.stem(x))))
        return self.norm(h + self.conv2(F.gelu(h)))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self(x).mean(dim=(2, 3)))


# Architectures a local encoder file may name ("arch" + "config" + "state_dict").
ARCHITECTURES = {"digits-patch-convnet": DigitsPatchEncoder}
