"""DiCo-Iso: DiCo's block in an isotropic, patchified stack (the paper's Table 12, in FlowDCN's setting).

The paper's question there is whether DiCo's conv module (1x1 conv, 3x3 depthwise conv, compact channel attention,
1x1 conv) also holds up outside the U-shape, as a drop-in replacement for self-attention in a DiT-like network:
patchify by 2, a stack of blocks at one width on the patch grid, a per-patch linear head, trained with flow
matching (as SiT and FlowDCN are). So everything but the token mixer is DiT's: its sizes (S/B/L/XL = 384/768/1024/1152
wide, 12/12/24/28 blocks), its FFN ratio of 4, its timestep and label embedders and its adaLN-zero modulation; the
block itself is dico's DiCoBlock on the (N, C, H/2, W/2) map. Choices where the paper is silent:
- No position table: the depthwise convolutions see where they are (zero padding at the borders), as in DiCo and
  FlowDCN, so one model takes any H, W divisible by the patch size.
- learn_sigma off: the stack is trained with flow matching, which predicts the velocity only (SiT-S/2 is DiT-S/2 with
  learn_sigma off, and is its baseline).
With the FFN ratio of 4, a block holds 17 C^2 weights against DiT's 18 C^2 (the conv module's three C x C maps replace
attention's four), so DiCo-Iso-S/2 has slightly fewer parameters and MACs than SiT-S/2.
"""

import torch
import torch.nn as nn

from .config import records_config
from .dico import ACTIVATIONS, CHANNEL_ATTENTIONS, DiCoBlock, conv_weights_channels_last
from .dit import FinalLayer, PatchEmbed, unpatchify
from .embedders import LabelEmbedder, TimestepEmbedder, check_second_time, interval, xavier_init
from .fast_ops import conv
from .guidance import combine_guidance, resolve_guidance_channels


class PatchGrid(PatchEmbed):
    """DiT's patch embedding kept as a (N, C, H/p, W/p) map (channels last) for the convolutional blocks."""

    def forward(self, x):
        return conv(self.proj, x.contiguous(memory_format=torch.channels_last))


class DiCoIso(nn.Module):
    """The isotropic DiCo network: `model(x, t, y)` -> (N, out_channels, H, W); H and W divisible by patch_size.

    The keyword arguments are the model's config; channel_attention, kernel_size and activation are DiCo's ablation
    options for the conv module.
    """

    arch = "dico-iso"

    @records_config
    def __init__(self, patch_size: int = 2, in_channels: int = 4, hidden_size: int = 384, depth: int = 12,
                 mlp_ratio: float = 4.0, num_classes: int = 1000, learn_sigma: bool = False,
                 class_dropout_prob: float = 0.1, channel_attention: str = "cca", kernel_size: int = 3,
                 activation: str = "gelu", second_time: bool = False):
        super().__init__()
        if channel_attention not in CHANNEL_ATTENTIONS:
            raise ValueError(f"unknown channel_attention {channel_attention!r}; choose one of {CHANNEL_ATTENTIONS}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.num_classes = num_classes
        self.learn_sigma = learn_sigma
        self.patch_size = patch_size
        self.x_embedder = PatchGrid(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.second_time = second_time  # MeanFlow's second time, as DiT's (see embedders.interval)
        if second_time:
            self.r_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, [hidden_size], class_dropout_prob, names=["embedding_table"])
        self.blocks = nn.ModuleList(
            DiCoBlock(hidden_size, mlp_ratio, kernel_size, activation, channel_attention) for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()
        conv_weights_channels_last(self, self.blocks)  # as DiCo: no gradient copies in DDP

    def initialize_weights(self):
        """DiT's: Xavier-uniform weights and zero biases, the patch embedding as a linear layer, N(0, 0.02)
        embedders, adaLN-zero blocks and a zero head (every block starts as the identity, the output at zero)."""
        xavier_init(self)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for emb in [self.t_embedder] + ([self.r_embedder] if self.second_time else []):
            nn.init.normal_(emb.mlp[0].weight, std=0.02)
            nn.init.normal_(emb.mlp[2].weight, std=0.02)
        for module in [*self.blocks, self.final_layer]:
            nn.init.zeros_(module.adaLN_modulation[-1].weight)
            nn.init.zeros_(module.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        p = self.patch_size
        if x.shape[2] % p or x.shape[3] % p:
            raise ValueError(f"H and W must be divisible by the patch size {p}, got {tuple(x.shape[2:])}")
        n = x.shape[0]
        if t.ndim != 1 or t.shape[0] != n:
            raise ValueError(f"t must be a 1-D tensor of {n} timesteps, got shape {tuple(t.shape)}")
        if y.ndim != 1 or y.shape[0] != n:
            raise ValueError(f"y must be a 1-D tensor of {n} labels, got shape {tuple(y.shape)}")

    def unpatchify(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return unpatchify(x, h, w, self.patch_size, self.out_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, r=None) -> torch.Tensor:
        """`r` (models with second_time only): MeanFlow's second time, as DiT's."""
        self.check_inputs(x, t, y)
        check_second_time(self, t, r)
        h = self.x_embedder(x)
        (y_emb,) = self.y_embedder(y, self.training)
        c = self.t_embedder(t) + y_emb
        if self.second_time:
            c = c + self.r_embedder(interval(t, r))
        for block in self.blocks:
            h = block(h, c)
        grid = h.shape[2:]
        tokens = h.flatten(2).transpose(1, 2)  # (N, T, C): the per-patch head is DiT's
        return self.unpatchify(self.final_layer(tokens, c), *grid).contiguous()

    def forward_with_cfg(self, x, t, y, cfg_scale: float, guidance_channels=3):
        """Classifier-free guidance as DiT.forward_with_cfg: [cond half; uncond half], first 3 channels guided by
        default ("all" guides every channel)."""
        half = x[: len(x) // 2]
        cond, uncond = self(torch.cat([half, half]), t, y).chunk(2)
        return combine_guidance(cond, uncond, cfg_scale, resolve_guidance_channels(guidance_channels, self.in_channels))
