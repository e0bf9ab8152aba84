"""Conditioning embedders shared by DiCo and DiT: sinusoidal timesteps and class labels (and MeanFlow's second time)."""

import math

import torch
import torch.nn as nn


def xavier_init(model: nn.Module, kinds=(nn.Linear, nn.Conv2d)) -> None:
    """DiT's base initialisation: Xavier-uniform weights and zero biases for every layer of `kinds` (DiT: linear
    layers only; DiCo: convolutions too). Models then set their embedders, adaLN and heads on top."""
    def init(module):
        if isinstance(module, kinds):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    model.apply(init)


def timestep_frequencies(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) timesteps, cos half first as in GLIDE/DiT."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Timestep -> sinusoidal features -> MLP(SiLU) -> vector of `hidden_size`."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_frequencies(t, self.frequency_embedding_size)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


def drop_labels(labels: torch.Tensor, num_classes: int, prob: float, force_drop_ids=None) -> torch.Tensor:
    """Replace labels by the null class `num_classes`, at random (training) or where force_drop_ids == 1."""
    if force_drop_ids is None:
        drop = torch.rand(labels.shape[0], device=labels.device) < prob
    else:
        drop = force_drop_ids == 1
    return torch.where(drop, num_classes, labels)


class LabelEmbedder(nn.Module):
    """Class label -> vector, one table per output width.

    The table has a extra null row (index `num_classes`) whenever label dropout is on, which is what
    classifier-free guidance uses. `num_classes=0` gives an unconditional model: every label is the null one.
    DiT names its single table `embedding_table`; DiCo names its three `embedding_table_0/1/2`.
    """

    def __init__(self, num_classes: int, hidden_sizes, dropout_prob: float, names=None):
        super().__init__()
        hidden_sizes = list(hidden_sizes)
        names = names or [f"embedding_table_{i}" for i in range(len(hidden_sizes))]
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        # Our trainer draws label dropout per sample from keyed generators (so results do not depend on batch
        # split or process count) and switches the module's own random drop off.
        self.drop_in_forward = True
        rows = num_classes + int(dropout_prob > 0 or num_classes == 0)
        self.table_names = names
        for name, width in zip(names, hidden_sizes):
            self.add_module(name, nn.Embedding(rows, width))

    @property
    def tables(self):
        return [getattr(self, n) for n in self.table_names]

    def forward(self, labels: torch.Tensor, train: bool, force_drop_ids=None):
        if self.num_classes == 0:
            labels = torch.zeros_like(labels)
        elif (train and self.dropout_prob > 0 and self.drop_in_forward) or force_drop_ids is not None:
            labels = drop_labels(labels, self.num_classes, self.dropout_prob, force_drop_ids)
        return [table(labels) for table in self.tables]


def interval(t: torch.Tensor, r: torch.Tensor | None) -> torch.Tensor:
    """What the second time embedder reads: r - t (0 when r is None), MeanFlow's (t, t - r) input in dico's time
    direction (t = 0 noise, 1 = data, so r >= t and the interval is >= 0; zero for the instantaneous velocity)."""
    return torch.zeros_like(t, dtype=torch.float32) if r is None else r - t


def check_second_time(model, t: torch.Tensor, r: torch.Tensor | None) -> None:
    if r is None:
        return
    if not model.second_time:
        raise ValueError("this model has no second time input (r): build it with second_time=True (MeanFlow)")
    if r.shape != t.shape:
        raise ValueError(f"r must have the shape of t {tuple(t.shape)}, got {tuple(r.shape)}")
