"""DiCo: Diffusion ConvNet (arXiv 2505.11196).

A three-level U-shaped ConvNet (widths C, 2C, 4C; decoder level 1 and the head run at 2C) of DiCo blocks.
Parameter names and initialisation follow the official release, so its checkpoints load with strict=True.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import records_config
from .embedders import LabelEmbedder, TimestepEmbedder, check_second_time, interval, xavier_init
from .fast_ops import (activation, channel_attention_weights, conv, ffn_chunks, gated_residual, linear, modulated_norm,
                       scale_channels)
from .guidance import combine_guidance, resolve_guidance_channels


CHANNEL_ATTENTIONS = ("cca", "se", "none")
ACTIVATIONS = ("gelu", "relu")


def channel_attention(kind: str, channels: int, se_reduction: int) -> nn.Module:
    """Compact channel attention (the paper's CCA: pool -> 1x1 conv -> sigmoid, no reduction), SE, or none."""
    if kind == "cca":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels, 1), nn.Sigmoid())
    if kind == "se":
        hidden = max(channels // se_reduction, 1)
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1), nn.Sigmoid()
        )
    if kind == "none":
        return None
    raise ValueError(f"unknown channel_attention {kind!r}; choose one of {CHANNEL_ATTENTIONS}")


class DiCoBlock(nn.Module):
    """norm -> modulate -> 1x1 conv -> depthwise conv -> act -> channel attention -> 1x1 conv (gated residual),
    then norm -> modulate -> 1x1-conv FFN (gated residual)."""

    def __init__(self, hidden_size: int, mlp_ratio: float, kernel_size: int = 3, activation: str = "gelu",
                 channel_attention_kind: str = "cca", se_reduction: int = 4):
        super().__init__()
        ffn = int(mlp_ratio * hidden_size)
        self.conv1 = nn.Conv2d(hidden_size, hidden_size, 1)
        self.conv2 = nn.Conv2d(hidden_size, hidden_size, kernel_size, padding=kernel_size // 2, groups=hidden_size)
        self.conv3 = nn.Conv2d(hidden_size, hidden_size, 1)
        self.ca = channel_attention(channel_attention_kind, hidden_size, se_reduction)
        self.conv4 = nn.Conv2d(hidden_size, ffn, 1)
        self.conv5 = nn.Conv2d(ffn, hidden_size, 1)
        self.activation = activation  # (the norms and activations have no parameters: functions in forward)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)
        return self.ffn_module(self.conv_module(x, shift1, scale1, gate1), shift2, scale2, gate2)

    # The two halves of the block are methods so that a variant can insert a step between them (the text models of
    # text_dico.py condition on the prompt after the conv module).
    def modulation(self, c: torch.Tensor):
        """shift1, scale1, gate1 (conv module), shift2, scale2, gate2 (FFN) from the conditioning vector."""
        return linear(self.adaLN_modulation[1], F.silu(c)).chunk(6, dim=1)

    def conv_module(self, x, shift, scale, gate) -> torch.Tensor:
        h = activation(self.activation, conv(self.conv2, conv(self.conv1, modulated_norm(x, shift, scale))))
        if self.ca is not None:
            h = scale_channels(h, channel_attention_weights(self.ca, h))
        return gated_residual(x, gate, conv(self.conv3, h))

    def ffn_module(self, x, shift2, scale2, gate2) -> torch.Tensor:
        h = modulated_norm(x, shift2, scale2)
        chunks = ffn_chunks(h, self.conv4.out_channels)
        if chunks == 1:
            return gated_residual(x, gate2, self.ffn(h))
        # Inference with a large hidden map: run the FFN on slices of the batch (every op is per sample), each
        # writing its gated residual into its slice of one output map.
        out = torch.empty(x.shape, dtype=torch.result_type(x, h), device=x.device, memory_format=torch.channels_last)
        for parts in zip(*(t.tensor_split(chunks) for t in (x, gate2, h, out))):
            x_part, gate_part, h_part, out_part = parts
            gated_residual(x_part, gate_part, self.ffn(h_part), out=out_part)
        return out

    def ffn(self, h: torch.Tensor) -> torch.Tensor:
        return conv(self.conv5, activation(self.activation, conv(self.conv4, h)))


def conv_weights_channels_last(model: nn.Module, blocks) -> None:
    """On channels-last maps, the gradients of 1x1 and depthwise convolution weights come out with channels-last
    strides: the same memory order as NCHW for those shapes, other strides on the size-1 dims. Autograd keeps them as
    they are, and DDP, whose gradient buckets take each parameter's strides, then copies every one with a warning.
    Giving those weights the channels-last strides makes the layouts agree (their values and memory stay as they
    are). The channel-attention convolutions of `blocks` act on a vector of channel means, as linear layers: left."""
    attention = {p for block in blocks if block.ca is not None for p in block.ca.parameters()}
    for p in model.parameters():
        if p.ndim == 4 and p not in attention and p.is_contiguous(memory_format=torch.channels_last):
            p.data = p.data.to(memory_format=torch.channels_last)


class OverlapPatchEmbed(nn.Module):
    """3x3 conv stem (stride 1): no patchification."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 3, padding=1)

    def forward(self, x):
        return conv(self.proj, x)


class Downsample(nn.Module):
    """3x3 conv to C/2 then PixelUnshuffle(2): C -> 2C channels at half resolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x):
        return self.body[1](conv(self.body[0], x))


class Upsample(nn.Module):
    """3x3 conv to 2C then PixelShuffle(2): C -> C/2 channels at double resolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x):
        return self.body[1](conv(self.body[0], x))


class FinalLayer(nn.Module):
    """Modulated norm then a 3x3 conv to the output channels."""

    def __init__(self, hidden_size: int, out_channels: int):
        super().__init__()
        self.out_proj = nn.Conv2d(hidden_size, out_channels, 3, padding=1)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = linear(self.adaLN_modulation[1], F.silu(c)).chunk(2, dim=1)
        return conv(self.out_proj, modulated_norm(x, shift, scale))


class DiCo(nn.Module):
    """The DiCo network. `model(x, t, y)` -> (N, out_channels, H, W); H and W must be divisible by 4 (it is fully
    convolutional: one model serves every resolution).

    The keyword arguments are the model's config (`model.config`); the defaults are the paper's model, and
    channel_attention ("cca" | "se" | "none"), kernel_size (3, 5 or 7), activation ("gelu" | "relu") and
    se_reduction (for "se") are the paper's ablations. depth lists the stage depths [enc1, enc2, mid, dec2, dec1].
    """

    arch = "dico"
    label_table = True  # class-label embeddings (y_embedder); variants conditioned otherwise have none

    @records_config
    def __init__(self, hidden_size: int = 128, depth=(5, 4, 4, 4, 4), mlp_ratio: float = 2.0, in_channels: int = 4,
                 num_classes: int = 1000, learn_sigma: bool = True, class_dropout_prob: float = 0.1,
                 channel_attention: str = "cca", kernel_size: int = 3, activation: str = "gelu",
                 se_reduction: int = 4, second_time: bool = False):
        super().__init__()
        depth = list(depth)
        if len(depth) != 5:
            raise ValueError(f"depth must list 5 stage depths [enc1, enc2, mid, dec2, dec1], got {depth}")
        if channel_attention not in CHANNEL_ATTENTIONS:
            raise ValueError(f"unknown channel_attention {channel_attention!r}; choose one of {CHANNEL_ATTENTIONS}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if hidden_size % 2:
            raise ValueError(f"hidden_size must be even (Downsample halves it), got {hidden_size}")
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.num_classes = num_classes
        self.learn_sigma = learn_sigma
        C = hidden_size

        def stage(width, n):
            return nn.ModuleList(
                self.make_block(width, mlp_ratio, kernel_size, activation, channel_attention, se_reduction)
                for _ in range(n)
            )

        self.x_embedder = OverlapPatchEmbed(in_channels, C)
        # One timestep embedder and one label table per width (C, 2C, 4C).
        self.t_embedder_1 = TimestepEmbedder(C)
        self.t_embedder_2 = TimestepEmbedder(2 * C)
        self.t_embedder_3 = TimestepEmbedder(4 * C)
        self.y_embedder = LabelEmbedder(num_classes, [C, 2 * C, 4 * C], class_dropout_prob) if self.label_table else None
        # MeanFlow's second time (second_time): the interval r - t through embedders of its own, one per width,
        # summed with t's. Absent when off, so the official parameter names and checkpoints stay as they are.
        self.second_time = second_time
        if second_time:
            self.r_embedder_1 = TimestepEmbedder(C)
            self.r_embedder_2 = TimestepEmbedder(2 * C)
            self.r_embedder_3 = TimestepEmbedder(4 * C)

        self.encoder_level_1 = stage(C, depth[0])
        self.down1_2 = Downsample(C)
        self.encoder_level_2 = stage(2 * C, depth[1])
        self.down2_3 = Downsample(2 * C)
        self.latent = stage(4 * C, depth[2])
        self.up3_2 = Upsample(4 * C)
        self.reduce_chan_level2 = nn.Conv2d(4 * C, 2 * C, 1)
        self.decoder_level_2 = stage(2 * C, depth[3])
        self.up2_1 = Upsample(2 * C)
        # Upsampled C channels + skip C channels -> 2C: decoder level 1 runs at 2C, not C.
        self.reduce_chan_level1 = nn.Conv2d(2 * C, 2 * C, 1)
        self.decoder_level_1 = stage(2 * C, depth[4])
        self.final_layer = FinalLayer(2 * C, self.out_channels)
        self.initialize_weights()
        conv_weights_channels_last(self, self.blocks())

    def initialize_weights(self):
        xavier_init(self)
        # Stem initialised like a linear layer, as in DiT's patch embedding.
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        for table in self.y_embedder.tables if self.y_embedder is not None else ():
            nn.init.normal_(table.weight, std=0.02)
        for emb in self.time_embedders():
            nn.init.normal_(emb.mlp[0].weight, std=0.02)
            nn.init.normal_(emb.mlp[2].weight, std=0.02)
        # adaLN-Zero: every block starts as the identity, and the output starts at zero.
        for block in self.blocks():
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.out_proj.weight)
        nn.init.zeros_(self.final_layer.out_proj.bias)

    def time_embedders(self):
        second = (self.r_embedder_1, self.r_embedder_2, self.r_embedder_3) if self.second_time else ()
        return [self.t_embedder_1, self.t_embedder_2, self.t_embedder_3, *second]

    def make_block(self, width: int, *block_options) -> nn.Module:
        """One block of a stage of `width` channels (a variant's blocks come from its override)."""
        return DiCoBlock(width, *block_options)

    def blocks(self):
        return [*self.encoder_level_1, *self.encoder_level_2, *self.latent, *self.decoder_level_2, *self.decoder_level_1]

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, r: torch.Tensor | None = None):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % 4 or x.shape[3] % 4:
            raise ValueError(f"H and W must be divisible by 4 (two 2x downsamplings), got {tuple(x.shape[2:])}")
        n = x.shape[0]
        if t.ndim != 1 or t.shape[0] != n:
            raise ValueError(f"t must be a 1-D tensor of {n} timesteps, got shape {tuple(t.shape)}")
        if y.ndim != 1 or y.shape[0] != n:
            raise ValueError(f"y must be a 1-D tensor of {n} labels, got shape {tuple(y.shape)}")
        check_second_time(self, t, r)

    def conditioning(self, t: torch.Tensor, y: torch.Tensor, r: torch.Tensor | None = None):
        """Per-width conditioning vectors c1 (C), c2 (2C), c3 (4C)."""
        y1, y2, y3 = self.y_embedder(y, self.training)
        c = [self.t_embedder_1(t) + y1, self.t_embedder_2(t) + y2, self.t_embedder_3(t) + y3]
        if self.second_time:
            h = interval(t, r)
            c = [ci + emb(h) for ci, emb in zip(c, (self.r_embedder_1, self.r_embedder_2, self.r_embedder_3))]
        return c

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cache: "FeatureCache | None" = None,
                r: torch.Tensor | None = None):
        """`cache` (sampling only) reuses the deep features of an earlier call; see FeatureCache. `r` (models with
        second_time only): the other end of the interval whose average velocity the model predicts (None: r = t,
        the instantaneous velocity)."""
        self.check_inputs(x, t, y, r)
        return self.u_shape(x, self.conditioning(t, y, r), cache)

    def u_shape(self, x: torch.Tensor, conditions, cache: "FeatureCache | None" = None, **block_inputs):
        """The U-shaped network on the input x given the per-width conditioning vectors (c1, c2, c3); `block_inputs`
        go to every block as keywords (the text models' prompt tokens)."""
        c1, c2, c3 = conditions
        skip1 = x = self.x_embedder(x.contiguous(memory_format=torch.channels_last))
        for block in self.encoder_level_1:
            skip1 = block(skip1, c1, **block_inputs)
        if cache is not None and cache.hit(1):
            up1 = cache.features
        else:
            skip2 = self.down1_2(skip1)
            for block in self.encoder_level_2:
                skip2 = block(skip2, c2, **block_inputs)
            if cache is not None and cache.hit(2):
                up2 = cache.features
            else:
                h = self.down2_3(skip2)
                for block in self.latent:
                    h = block(h, c3, **block_inputs)
                up2 = self.up3_2(h)
                if cache is not None:
                    cache.store(2, up2)
            h = conv(self.reduce_chan_level2, torch.cat([up2, skip2], dim=1))
            for block in self.decoder_level_2:
                h = block(h, c2, **block_inputs)
            up1 = self.up2_1(h)
            if cache is not None:
                cache.store(1, up1)
        h = conv(self.reduce_chan_level1, torch.cat([up1, skip1], dim=1))
        for block in self.decoder_level_1:
            h = block(h, c2, **block_inputs)
        return self.final_layer(h, c2).contiguous()  # callers expect a plain NCHW tensor

    def forward_with_cfg(self, x, t, y, cfg_scale: float, guidance_channels=3, cache: "FeatureCache | None" = None):
        """Classifier-free guidance on a batch laid out [cond half; uncond half] (labels of the second half are the
        null class), on the first `guidance_channels` output channels: 3 by default, as the official release does;
        "all" (or None) guides every noise channel (see guidance.resolve_guidance_channels)."""
        half = x[: len(x) // 2]
        cond, uncond = self(torch.cat([half, half]), t, y, cache=cache).chunk(2)
        return combine_guidance(cond, uncond, cfg_scale, resolve_guidance_channels(guidance_channels, self.in_channels))


@dataclass
class FeatureCache:
    """DeepCache-style reuse of deep U-shape features across sampling steps.

    On a refresh call the network runs in full and keeps what enters the outer level(s) from below: with depth 1 the
    upsampled output of decoder level 2 (everything below level 1 is skipped next time), with depth 2 the upsampled
    output of the middle stage. Other calls recompute only the outer level(s) on those features.
    """

    depth: int = 1
    refresh: bool = True
    features: torch.Tensor | None = None

    def __post_init__(self):
        if self.depth not in (1, 2):
            raise ValueError(f"cache depth must be 1 (outer level recomputed) or 2 (two outer levels), got {self.depth}")

    def hit(self, depth: int) -> bool:
        """Whether this call reuses the features kept at `depth`."""
        return not self.refresh and self.depth == depth and self.features is not None

    def store(self, depth: int, features: torch.Tensor) -> None:
        if self.depth == depth:
            self.features = features


