"""Text-conditioned DiCo: the two variants of the paper's text-to-image experiment (arXiv 2505.11196, Table 3).

The network is DiCo's U-shape and blocks, conditioned on the timestep by adaLN exactly as DiCo is, without the
class-label tables. Every block gains one text step after its conv module (before the FFN):

- "dwc" (dynamic depthwise convolution): the prompt's tokens pass through an MLP, the last token is repeated until
  there are k*k of them (81 for the paper's 9x9), and they are reshaped into a k x k depthwise kernel per sample and
  per channel, which filters the block's feature map.
- "cross_attn": cross-attention from the image positions (queries) to the prompt's tokens (keys and values).

Those sentences are the paper's. What it leaves open, and what we chose, is written in the README ("Text-to-image
models: choices where the paper is silent"): how the step's output enters the block (a residual add through a
zero-initialised output, so every block starts as the class-free DiCo block), the normalisation of the generated
kernel, the attention heads and the norms.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import records_config
from .dico import DiCo, DiCoBlock
from .embedders import interval
from .fast_ops import attention, conv, eager_inference, linear, nchw, nhwc

TEXT_CONDITIONINGS = ("dwc", "cross_attn")
KERNEL_NORMS = ("l1", "softmax", "sqrt", "none")
DWC_OUTPUTS = ("scale", "proj")


def repeat_last_token(tokens: torch.Tensor, count: int) -> torch.Tensor:
    """(N, L, C) -> (N, count, C): the tokens, then the last one repeated until there are `count` (L <= count)."""
    n, length, channels = tokens.shape
    if length > count:
        raise ValueError(f"{length} text tokens do not fit in {count} kernel taps")
    return torch.cat([tokens, tokens[:, -1:].expand(n, count - length, channels)], dim=1)


def dynamic_kernels(tokens: torch.Tensor, kernel_size: int, norm: str = "l1", eps: float = 1e-6) -> torch.Tensor:
    """Per-sample depthwise kernels (N, C, k, k) from per-token channel vectors (N, L, C): token i fills tap i in
    row-major order (row i // k, column i % k), the last token fills the remaining taps, and `norm` rescales each
    channel's k*k taps: "l1" divides by their absolute sum (a kernel of gain at most 1 that keeps its signs), "softmax"
    makes them a weighted average, "sqrt" divides by k (sqrt of the tap count, as a fan-in scale), "none" keeps them."""
    if norm not in KERNEL_NORMS:
        raise ValueError(f"unknown kernel norm {norm!r}; choose one of {KERNEL_NORMS}")
    n, _, channels = tokens.shape
    taps = repeat_last_token(tokens, kernel_size * kernel_size).transpose(1, 2)  # (N, C, k*k)
    low = taps.dtype
    taps = taps.float()  # (the normalising sums over 81 taps in fp32 under bf16 autocast)
    if norm == "l1":
        taps = taps / taps.abs().sum(-1, keepdim=True).clamp_min(eps)
    elif norm == "softmax":
        taps = taps.softmax(-1)
    elif norm == "sqrt":
        taps = taps / kernel_size
    return taps.to(low).reshape(n, channels, kernel_size, kernel_size)


def per_sample_depthwise(h: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Each sample's map (N, C, H, W) filtered by its own depthwise kernels (N, C, k, k), 'same' padding: one grouped
    convolution over the batch folded into the channels (N*C groups), so no kernel is copied or unfolded."""
    n, channels, height, width = h.shape
    k = kernels.shape[-1]
    if eager_inference() and h.device.type == "cpu":
        # One depthwise convolution per sample on its channels-last map: oneDNN's channels-last depthwise kernel
        # runs about 2x faster than the grouped one over the folded batch, which also needs a layout copy each way
        # (measured at DiCo-S widths, 1 thread). On the GPU and under autograd, one call for the batch.
        return torch.cat([F.conv2d(h[i:i + 1], kernels[i, :, None].to(h.dtype), padding=k // 2, groups=channels)
                          for i in range(n)])
    weight = kernels.reshape(n * channels, 1, k, k).to(h.dtype)
    out = F.conv2d(h.reshape(1, n * channels, height, width), weight, padding=k // 2, groups=n * channels)
    return out.view(n, channels, height, width)


def residual(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """x + h; in eager inference it overwrites h, the step's fresh output (never x, the block's input)."""
    if eager_inference() and torch.result_type(x, h) == h.dtype:
        return h.add_(x)
    return x + h


def channel_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm over the channels, no affine (the step's own projections carry the scale), as an NHWC map."""
    return F.layer_norm(nhwc(x), (x.shape[1],), eps=eps)


class DynamicDepthwiseConv(nn.Module):
    """The "dwc" text step: x + out(depthwise(norm(x), kernels(MLP(prompt tokens)))), where `out` ("scale" | "proj")
    is a learned per-channel scale or a 1x1 convolution."""

    def __init__(self, width: int, context_dim: int, kernel_size: int = 9, kernel_norm: str = "l1",
                 output: str = "scale", zero_init: bool = True):
        super().__init__()
        if output not in DWC_OUTPUTS:
            raise ValueError(f"unknown dwc output {output!r}; choose one of {DWC_OUTPUTS}")
        self.kernel_size, self.kernel_norm, self.zero_init = kernel_size, kernel_norm, zero_init
        self.mlp = nn.Sequential(nn.Linear(context_dim, width), nn.GELU(approximate="tanh"), nn.Linear(width, width))
        if output == "proj":
            self.proj = nn.Conv2d(width, width, 1)
        else:
            self.scale = nn.Parameter(torch.ones(width))

    def kernels(self, context: torch.Tensor) -> torch.Tensor:
        """(N, L, context_dim) -> (N, width, k, k). The MLP acts on each token alone, so it runs on the L tokens and
        its last output is repeated (the same as repeating the last token first, with fewer rows to compute)."""
        tokens = linear(self.mlp[2], self.mlp[1](linear(self.mlp[0], context)))
        return dynamic_kernels(tokens, self.kernel_size, self.kernel_norm)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        kernels = self.kernels(context)
        if not hasattr(self, "proj"):  # (the scale folded into the small kernels rather than applied to the map)
            kernels = kernels * self.scale[:, None, None].to(kernels.dtype)
        h = per_sample_depthwise(nchw(channel_norm(x)), kernels).contiguous(memory_format=torch.channels_last)
        return residual(x, conv(self.proj, h) if hasattr(self, "proj") else h)

    def reset_output(self):
        if not self.zero_init:
            return
        if hasattr(self, "proj"):
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)
        else:
            nn.init.zeros_(self.scale)


class TextCrossAttention(nn.Module):
    """The "cross_attn" text step: x + proj(attention(queries from norm(x), keys and values from the tokens))."""

    def __init__(self, width: int, context_dim: int, head_dim: int = 32, zero_init: bool = True):
        super().__init__()
        if width % head_dim:
            raise ValueError(f"attention head dim {head_dim} does not divide the block width {width}")
        self.heads, self.head_dim, self.zero_init = width // head_dim, head_dim, zero_init
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(context_dim, 2 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, width, height, w = x.shape
        q = linear(self.q, channel_norm(x).reshape(n, height * w, width))
        k, v = linear(self.kv, context).view(n, -1, 2, self.heads, self.head_dim).unbind(2)
        q = q.view(n, height * w, self.heads, self.head_dim)
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        out = linear(self.proj, out.transpose(1, 2).reshape(n, height * w, width))
        return residual(x, nchw(out.view(n, height, w, width)))

    def reset_output(self):
        if self.zero_init:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)


class TextDiCoBlock(DiCoBlock):
    """A DiCo block with a text step between its conv module and its FFN: `block(x, c, context=tokens)`."""

    def __init__(self, hidden_size: int, *block_options, text: nn.Module):
        super().__init__(hidden_size, *block_options)
        self.text = text

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c)
        x = self.text(self.conv_module(x, shift1, scale1, gate1), context)
        return self.ffn_module(x, shift2, scale2, gate2)


class TextDiCo(DiCo):
    """Text-conditioned DiCo: `model(x, t, context)` with `context` (N, context_length, context_dim) prompt token
    embeddings (e.g. CLIP ViT-L/14's last hidden state, 77 x 768) -> (N, out_channels, H, W).

    The DiCo options keep their meaning (see DiCo); there are no class labels (`num_classes` is 0). The text options:
    `text_conditioning` "dwc" | "cross_attn" (the paper's two variants), `dwc_kernel_size` (9: the paper's 9x9 kernel
    of 81 taps; the context may have at most k*k tokens), `dwc_kernel_norm` ("l1" | "softmax" | "sqrt" | "none") and
    `dwc_output` ("scale": a learned gain per channel; "proj": a 1x1 convolution, +15% MACs at DiCo-XL),
    `attn_head_dim` (32 divides every DiCo width; 64 does not divide 352 or 416), and `text_zero_init` (the text
    step's output projection starts at zero, so the initial model ignores the prompt and each block starts as the
    class-free DiCo block).
    """

    arch = "text-dico"
    label_table = False

    @records_config
    def __init__(self, hidden_size: int = 128, depth=(5, 4, 4, 4, 4), mlp_ratio: float = 2.0, in_channels: int = 4,
                 learn_sigma: bool = True, channel_attention: str = "cca", kernel_size: int = 3,
                 activation: str = "gelu", se_reduction: int = 4, context_dim: int = 768, context_length: int = 77,
                 text_conditioning: str = "dwc", dwc_kernel_size: int = 9, dwc_kernel_norm: str = "l1",
                 dwc_output: str = "scale", attn_head_dim: int = 32, text_zero_init: bool = True,
                 second_time: bool = False):
        if text_conditioning not in TEXT_CONDITIONINGS:
            raise ValueError(f"unknown text_conditioning {text_conditioning!r}; choose one of {TEXT_CONDITIONINGS}")
        if dwc_kernel_norm not in KERNEL_NORMS:
            raise ValueError(f"unknown dwc_kernel_norm {dwc_kernel_norm!r}; choose one of {KERNEL_NORMS}")
        if dwc_output not in DWC_OUTPUTS:
            raise ValueError(f"unknown dwc_output {dwc_output!r}; choose one of {DWC_OUTPUTS}")
        if context_dim < 1 or context_length < 1:
            raise ValueError(f"context_dim and context_length must be positive, got {context_dim}, {context_length}")
        if text_conditioning == "dwc":
            if dwc_kernel_size < 1 or dwc_kernel_size % 2 != 1:
                raise ValueError(f"dwc_kernel_size must be odd (same padding), got {dwc_kernel_size}")
            if context_length > dwc_kernel_size**2:
                raise ValueError(f"a {dwc_kernel_size}x{dwc_kernel_size} dynamic kernel has {dwc_kernel_size**2} taps, "
                                 f"fewer than the {context_length} context tokens: raise dwc_kernel_size")
        else:
            widths = (hidden_size, 2 * hidden_size, 4 * hidden_size)
            if attn_head_dim < 1 or any(w % attn_head_dim for w in widths):
                raise ValueError(f"attn_head_dim {attn_head_dim} must divide every block width {widths}")
        # Read by make_block and initialize_weights while DiCo's constructor builds the network (plain values may be
        # set on a module before nn.Module.__init__).
        self.text_options = dict(conditioning=text_conditioning, context_dim=context_dim,
                                 kernel_size=dwc_kernel_size, kernel_norm=dwc_kernel_norm, output=dwc_output,
                                 head_dim=attn_head_dim, zero_init=text_zero_init)
        super().__init__(hidden_size=hidden_size, depth=depth, mlp_ratio=mlp_ratio, in_channels=in_channels,
                         num_classes=0, learn_sigma=learn_sigma, class_dropout_prob=0.0,
                         channel_attention=channel_attention, kernel_size=kernel_size, activation=activation,
                         se_reduction=se_reduction, second_time=second_time)
        self.context_dim, self.context_length = context_dim, context_length

    def make_block(self, width: int, *block_options) -> nn.Module:
        o = self.text_options
        if o["conditioning"] == "dwc":
            text = DynamicDepthwiseConv(width, o["context_dim"], o["kernel_size"], o["kernel_norm"], o["output"],
                                        o["zero_init"])
        else:
            text = TextCrossAttention(width, o["context_dim"], o["head_dim"], o["zero_init"])
        return TextDiCoBlock(width, *block_options, text=text)

    def initialize_weights(self):
        super().initialize_weights()  # (the text layers get DiCo's xavier-uniform weights and zero biases)
        for block in self.blocks():
            block.text.reset_output()

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, r=None):
        if not torch.is_tensor(context) or context.ndim != 3 or not context.is_floating_point():
            shape = tuple(context.shape) if torch.is_tensor(context) else type(context).__name__
            raise ValueError(f"context must be a float tensor (N, {self.context_length}, {self.context_dim}) of prompt "
                             f"token embeddings, got {shape}")
        super().check_inputs(x, t, t, r)  # (no labels: the timesteps stand in for them)
        if len(context) != len(x):
            raise ValueError(f"context holds {len(context)} prompts for {len(x)} images")
        if tuple(context.shape[1:]) != (self.context_length, self.context_dim):
            raise ValueError(f"context must be (N, {self.context_length}, {self.context_dim}) token embeddings (as "
                             f"this model was built), got {tuple(context.shape)}")

    def conditioning(self, t: torch.Tensor, r: torch.Tensor | None = None):
        """Per-width timestep vectors c1 (C), c2 (2C), c3 (4C), with MeanFlow's second time as DiCo's."""
        c = [self.t_embedder_1(t), self.t_embedder_2(t), self.t_embedder_3(t)]
        if self.second_time:
            h = interval(t, r)
            c = [ci + emb(h) for ci, emb in zip(c, (self.r_embedder_1, self.r_embedder_2, self.r_embedder_3))]
        return c

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, cache=None, r=None):
        """`cache` (sampling only) reuses the deep features of an earlier call with the same prompts; see
        FeatureCache. `r` (models with second_time only): as DiCo's."""
        self.check_inputs(x, t, context, r)
        # (stored embeddings are often float16: they meet the weights in the images' dtype, or autocast's)
        return self.u_shape(x, self.conditioning(t, r), cache, context=context.to(x.dtype))
