"""DiT (Peebles & Xie, 2023): the Transformer baseline DiCo is compared against.

Parameter names follow facebookresearch/DiT so its checkpoints load with strict=True. Attention runs through
torch.nn.functional.scaled_dot_product_attention (flash / memory-efficient kernels where available).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import records_config
from .embedders import LabelEmbedder, TimestepEmbedder, check_second_time, interval, xavier_init
from .fast_ops import attention, conv, linear
from .guidance import combine_guidance, resolve_guidance_channels


def modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos.reshape(-1, 1).double() * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid_size: int) -> torch.Tensor:
    """MAE/DiT fixed 2-D sin-cos position table, (grid_size**2, dim); first half encodes the column index."""
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1).float()


def unpatchify(x: torch.Tensor, h: int, w: int, patch: int, channels: int) -> torch.Tensor:
    """Per-patch outputs (N, h * w, patch * patch * channels) as an image (N, channels, h * patch, w * patch)."""
    n = x.shape[0]
    x = x.reshape(n, h, w, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(n, channels, h * patch, w * patch)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)

    def forward(self, x):
        return conv(self.proj, x).flatten(2).transpose(1, 2)  # (N, T, D)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = linear(self.qkv, x).reshape(n, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = attention(q, k, v)
        return linear(self.proj, x.transpose(1, 2).reshape(n, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return linear(self.fc2, self.act(linear(self.fc1, x)))


class DiTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = linear(self.adaLN_modulation[1], F.silu(c)).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        shift, scale = linear(self.adaLN_modulation[1], F.silu(c)).chunk(2, dim=1)
        return linear(self.linear, modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """The DiT network for `input_size` x `input_size` latents; its keyword arguments are its config."""

    arch = "dit"

    @records_config
    def __init__(self, input_size: int = 32, patch_size: int = 2, in_channels: int = 4, hidden_size: int = 1152,
                 depth: int = 28, num_heads: int = 16, mlp_ratio: float = 4.0, class_dropout_prob: float = 0.1,
                 num_classes: int = 1000, learn_sigma: bool = True, second_time: bool = False):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.num_classes = num_classes
        self.learn_sigma = learn_sigma
        self.patch_size = patch_size
        self.input_size = input_size
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, [hidden_size], class_dropout_prob, names=["embedding_table"])
        self.second_time = second_time  # MeanFlow's second time, as DiCo's (see embedders.interval)
        if second_time:
            self.r_embedder = TimestepEmbedder(hidden_size)
        grid = input_size // patch_size
        # A frozen parameter (not a buffer) so that official DiT checkpoints, which hold it, load strictly.
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self):
        xavier_init(self, nn.Linear)
        self.pos_embed.data.copy_(sincos_2d(self.pos_embed.shape[-1], self.input_size // self.patch_size)[None])
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for emb in [self.t_embedder] + ([self.r_embedder] if self.second_time else []):
            nn.init.normal_(emb.mlp[0].weight, std=0.02)
            nn.init.normal_(emb.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x):
        g = self.input_size // self.patch_size
        return unpatchify(x, g, g, self.patch_size, self.out_channels)

    def forward(self, x, t, y, r=None):
        """`r` (models with second_time only): as DiCo's."""
        check_second_time(self, t, r)
        expected = (self.in_channels, self.input_size, self.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"DiT built for input_size={self.input_size} expects x of shape (N, {expected[0]}, "
                             f"{expected[1]}, {expected[2]}), got {tuple(x.shape)}")
        x = self.x_embedder(x) + self.pos_embed
        (y_emb,) = self.y_embedder(y, self.training)
        c = self.t_embedder(t) + y_emb
        if self.second_time:
            c = c + self.r_embedder(interval(t, r))
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))

    def forward_with_cfg(self, x, t, y, cfg_scale: float, guidance_channels=3):
        """Classifier-free guidance as DiCo.forward_with_cfg: [cond half; uncond half], first 3 channels guided."""
        half = x[: len(x) // 2]
        cond, uncond = self(torch.cat([half, half]), t, y).chunk(2)
        return combine_guidance(cond, uncond, cfg_scale, resolve_guidance_channels(guidance_channels, self.in_channels))
