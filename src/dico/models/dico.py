"""DiCo: Diffusion ConvNet (arXiv 2505.11196).

A three-level U-shaped ConvNet (widths C, 2C, 4C; decoder level 1 and the head run at 2C) of DiCo blocks.
Parameter names and initialisation follow the official release, so its checkpoints load with strict=True.
"""

import weakref
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .embeddings import LabelEmbedder, TimestepEmbedder


@dataclass
class DiCoConfig:
    hidden_size: int = 128
    depth: list = field(default_factory=lambda: [5, 4, 4, 4, 4])  # encoder1, encoder2, middle, decoder2, decoder1
    mlp_ratio: float = 2.0
    in_channels: int = 4
    num_classes: int = 1000
    learn_sigma: bool = True
    class_dropout_prob: float = 0.1
    # Ablations of the paper; the defaults are the paper's model.
    channel_attention: str = "cca"  # "cca" | "se" | "none"
    kernel_size: int = 3  # depthwise kernel: 3, 5 or 7
    activation: str = "gelu"  # "gelu" | "relu"
    se_reduction: int = 4  # only for channel_attention="se"


CHANNEL_ATTENTIONS = ("cca", "se", "none")
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation of an (N, C, H, W) map by per-sample (N, C) shift and scale."""
    return x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


# The network keeps its feature maps in channels-last memory (NCHW shape, NHWC storage): oneDNN runs 1x1 and
# depthwise convolutions several times faster in that layout, and a channel LayerNorm becomes a plain last-dim
# layer_norm on a free permuted view. The helpers below work on that NHWC view, so no op copies to change layout.
def nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def autocast_dtype(device_type: str):
    """The dtype autocast computes in on this device type, or None when autocast is off (or has no such device, e.g.
    "meta")."""
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
    except RuntimeError:
        return None
    return torch.get_autocast_dtype(device_type)


# Outside autograd we overwrite intermediates we own instead of allocating a new map for every element-wise op.
# Besides saving bandwidth this matters on glibc: blocks larger than its mmap threshold (at most 32 MiB, e.g. the
# fp32 FFN map of DiCo-S at batch 16) are fresh mmaps whose pages the kernel zero-fills on first touch, which made
# such ops 4-5x slower than the same op writing into an existing buffer (measured; see BENCHMARKS.md).
def reuse(t: torch.Tensor):
    """`out=` argument for an op whose result may overwrite `t`: t itself outside autograd, else None."""
    return None if torch.is_grad_enabled() else t


def modulated_norm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """modulate(LayerNorm2d(x), shift, scale) with the modulation as one fused multiply-add (addcmul).

    Under bf16 autocast the result feeds a bf16 convolution, so we normalise in bf16 straight away (the kernel
    accumulates in fp32) instead of letting autocast produce an fp32 map that the next conv casts again: the
    fp32 residual stream is read once and the rest of the work moves half the bytes. Outside autograd the
    modulation writes over the normalised map instead of into a fresh one (see `reuse`).
    """
    low = autocast_dtype(x.device.type)
    if low is not None:  # (autocast would also run layer_norm in fp32 on a map that is already bf16)
        with torch.autocast(x.device.type, enabled=False):
            return modulated_norm(x.to(low), shift.to(low), scale.to(low), eps)
    h = F.layer_norm(nhwc(x), (x.shape[1],), eps=eps)
    return nchw(torch.addcmul(shift[:, None, None, :], h, 1 + scale[:, None, None, :], out=reuse(h)))


def activation(kind: str, x: torch.Tensor) -> torch.Tensor:
    """The block's activation on an NCHW map in channels-last memory, applied on the plainly contiguous NHWC view
    (the bf16 GELU kernel is about 2x faster there than on channels-last strides); in place outside autograd."""
    v = nhwc(x)
    if kind == "gelu":
        return nchw(F.gelu(v) if torch.is_grad_enabled() else torch.ops.aten.gelu_(v))
    return nchw(F.relu(v, inplace=not torch.is_grad_enabled()))


# Inference under bf16 autocast: autocast casts every fp32 weight again on every call, which at small batches moves
# as many bytes as the activations do. Outside autograd we keep the low-precision copy between calls and refresh it
# whenever the parameter changes in place (its version counter moves: optimizer steps, load_state_dict, p.copy_).
# Writes through `param.data` bypass that counter: call `clear_inference_cache()` after such edits. Convolution
# weights are kept channels-last, the layout oneDNN wants for channels-last inputs (else it copies 3x3 weights
# on every call).
_INFERENCE_WEIGHTS = {}  # id(param) -> (weakref to param, (version, data_ptr, dtype), low-precision copy)


def clear_inference_cache():
    _INFERENCE_WEIGHTS.clear()


def inference_weight(param, dtype):
    if param is None:
        return None
    key = (param._version, param.data_ptr(), dtype)
    hit = _INFERENCE_WEIGHTS.get(id(param))
    if hit is None or hit[0]() is not param or hit[1] != key:
        pid = id(param)
        ref = weakref.ref(param, lambda _, pid=pid: _INFERENCE_WEIGHTS.pop(pid, None))
        copy = param.detach().to(dtype)
        if copy.ndim == 4:
            copy = copy.contiguous(memory_format=torch.channels_last)
        hit = _INFERENCE_WEIGHTS[pid] = (ref, key, copy)
    return hit[2]


ONEDNN_BUILT = torch.backends.mkldnn.is_available()


def conv(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """layer(x), with cached low-precision weights for inference under autocast (see above). fp32 inference on CPU
    calls oneDNN directly (unless the user turned it off with torch.backends.mkldnn): for 1x1 kernels at batch < 16
    on one thread ATen picks its im2col + sgemm path instead, about 1.7x slower here (BENCHMARKS.md)."""
    if torch.is_grad_enabled():
        return layer(x)
    low = autocast_dtype(x.device.type)
    if low is None:
        if x.device.type == "cpu" and x.dtype == torch.float32 and ONEDNN_BUILT and torch.backends.mkldnn.enabled:
            return torch.mkldnn_convolution(x, layer.weight, layer.bias, layer.padding, layer.stride, layer.dilation,
                                            layer.groups)
        return layer(x)
    with torch.autocast(x.device.type, enabled=False):
        return F.conv2d(x.to(low), inference_weight(layer.weight, low), inference_weight(layer.bias, low),
                        layer.stride, layer.padding, layer.dilation, layer.groups)


def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """layer(x), with cached low-precision weights for inference under autocast (see above)."""
    low = autocast_dtype(x.device.type)
    if low is None or torch.is_grad_enabled():
        return layer(x)
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.to(low), inference_weight(layer.weight, low), inference_weight(layer.bias, low))


def gated_residual(x: torch.Tensor, gate: torch.Tensor, h: torch.Tensor, out: torch.Tensor | None = None):
    """x + gate * h in one pass (addcmul) instead of a multiply then an add; outside autograd it overwrites h (the
    branch's fresh output; never x, the block's input), or writes into `out` when given."""
    v = nhwc(h)
    if out is not None:
        out = nhwc(out)
    elif torch.result_type(x, h) == h.dtype:  # (an fp32 x with a bf16 branch gives fp32)
        out = reuse(v)
    return nchw(torch.addcmul(nhwc(x), gate[:, None, None, :], v, out=out))


# glibc serves blocks of 32 MiB and more with fresh mmaps, whose pages the kernel zero-fills on every call (e.g. the
# fp32 FFN map of DiCo-S at batch 16: 32 MiB); inference keeps each slice's hidden map at or below this.
FFN_CHUNK_BYTES = 16 << 20


def ffn_chunks(h: torch.Tensor, hidden_channels: int) -> int:
    """How many batch slices inference runs the FFN in (1 under autograd, which keeps every map anyway)."""
    if torch.is_grad_enabled():
        return 1
    per_sample = hidden_channels * h.shape[2] * h.shape[3] * h.element_size()  # conv4 keeps h's dtype
    return max(1, min(len(h), -(-len(h) * per_sample // FFN_CHUNK_BYTES)))


def channel_attention_weights(ca: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
    """Per-sample channel weights (N, C) of CCA / SE on the vector of channel means. For a bf16 map the sums are a
    (1 x HW) @ (HW x C) matmul per sample, which reads the map once and accumulates in fp32: ATen's bf16 mean
    (and AdaptiveAvgPool2d under autocast) first copies the whole map to fp32."""
    v = nhwc(h)
    if v.dtype == torch.bfloat16:
        n, height, width, channels = v.shape
        sums = torch.bmm(v.new_ones(n, 1, height * width), v.reshape(n, height * width, channels))
        z = sums.view(n, channels).float() / (height * width)
    else:
        z = v.mean(dim=(1, 2))
    for layer in ca[1:]:  # ca[0], the pooling, is the mean above; the 1x1 convs act on a vector: F.linear
        z = F.linear(z, layer.weight.flatten(1), layer.bias) if isinstance(layer, nn.Conv2d) else layer(z)
    return z


def scale_channels(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """h * w[:, :, None, None] on the NHWC view, in place outside autograd."""
    v = nhwc(h)
    return nchw(torch.mul(v, w.to(h.dtype)[:, None, None, :], out=reuse(v)))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW map (no affine in DiCo; eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = False):
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


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
        self.norm1 = LayerNorm2d(hidden_size)
        self.norm2 = LayerNorm2d(hidden_size)
        self.act = ACTIVATIONS[activation]()
        self.activation = activation
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = linear(self.adaLN_modulation[1], F.silu(c)).chunk(6, dim=1)
        h = activation(self.activation, conv(self.conv2, conv(self.conv1, modulated_norm(x, shift1, scale1))))
        if self.ca is not None:
            h = scale_channels(h, channel_attention_weights(self.ca, h))
        x = gated_residual(x, gate1, conv(self.conv3, h))
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


class FinalLayer(nn.Module):
    """Modulated norm then a 3x3 conv to the output channels."""

    def __init__(self, hidden_size: int, out_channels: int):
        super().__init__()
        self.norm_final = LayerNorm2d(hidden_size)
        self.out_proj = nn.Conv2d(hidden_size, out_channels, 3, padding=1)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = linear(self.adaLN_modulation[1], F.silu(c)).chunk(2, dim=1)
        return conv(self.out_proj, modulated_norm(x, shift, scale, self.norm_final.eps))


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


class DiCo(nn.Module):
    """The DiCo network. `model(x, t, y)` -> (N, out_channels, H, W); H and W must be divisible by 4."""

    def __init__(self, hidden_size: int = 128, depth=(5, 4, 4, 4, 4), mlp_ratio: float = 2.0, in_channels: int = 4,
                 num_classes: int = 1000, learn_sigma: bool = True, class_dropout_prob: float = 0.1,
                 channel_attention: str = "cca", kernel_size: int = 3, activation: str = "gelu",
                 se_reduction: int = 4, input_size=None):
        super().__init__()
        depth = list(depth)
        if len(depth) != 5:
            raise ValueError(f"depth must list 5 stage depths [enc1, enc2, mid, dec2, dec1], got {depth}")
        if channel_attention not in CHANNEL_ATTENTIONS:
            raise ValueError(f"unknown channel_attention {channel_attention!r}; choose one of {CHANNEL_ATTENTIONS}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if hidden_size % 2:
            raise ValueError(f"hidden_size must be even (Downsample halves it), got {hidden_size}")
        self.config = DiCoConfig(hidden_size, depth, float(mlp_ratio), in_channels, num_classes, learn_sigma,
                                 class_dropout_prob, channel_attention, kernel_size, activation, se_reduction)
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.num_classes = num_classes
        self.learn_sigma = learn_sigma
        C = hidden_size

        def stage(width, n):
            return nn.ModuleList(
                DiCoBlock(width, mlp_ratio, kernel_size, activation, channel_attention, se_reduction) for _ in range(n)
            )

        self.x_embedder = OverlapPatchEmbed(in_channels, C)
        # One timestep embedder and one label table per width (C, 2C, 4C).
        self.t_embedder_1 = TimestepEmbedder(C)
        self.t_embedder_2 = TimestepEmbedder(2 * C)
        self.t_embedder_3 = TimestepEmbedder(4 * C)
        self.y_embedder = LabelEmbedder(num_classes, [C, 2 * C, 4 * C], class_dropout_prob)

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

    @classmethod
    def from_config(cls, config: DiCoConfig) -> "DiCo":
        return cls(**asdict(config))

    def initialize_weights(self):
        def basic(module):
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic)
        # Stem initialised like a linear layer, as in DiT's patch embedding.
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        for table in self.y_embedder.tables:
            nn.init.normal_(table.weight, std=0.02)
        for emb in (self.t_embedder_1, self.t_embedder_2, self.t_embedder_3):
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

    def blocks(self):
        return [*self.encoder_level_1, *self.encoder_level_2, *self.latent, *self.decoder_level_2, *self.decoder_level_1]

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % 4 or x.shape[3] % 4:
            raise ValueError(f"H and W must be divisible by 4 (two 2x downsamplings), got {tuple(x.shape[2:])}")
        n = x.shape[0]
        if t.ndim != 1 or t.shape[0] != n:
            raise ValueError(f"t must be a 1-D tensor of {n} timesteps, got shape {tuple(t.shape)}")
        if y.ndim != 1 or y.shape[0] != n:
            raise ValueError(f"y must be a 1-D tensor of {n} labels, got shape {tuple(y.shape)}")

    def conditioning(self, t: torch.Tensor, y: torch.Tensor):
        """Per-width conditioning vectors c1 (C), c2 (2C), c3 (4C)."""
        y1, y2, y3 = self.y_embedder(y, self.training)
        return self.t_embedder_1(t) + y1, self.t_embedder_2(t) + y2, self.t_embedder_3(t) + y3

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cache: "FeatureCache | None" = None):
        """`cache` (sampling only) reuses the deep features of an earlier call; see FeatureCache."""
        self.check_inputs(x, t, y)
        c1, c2, c3 = self.conditioning(t, y)
        skip1 = x = self.x_embedder(x.contiguous(memory_format=torch.channels_last))
        for block in self.encoder_level_1:
            skip1 = block(skip1, c1)
        if cache is not None and cache.hit(1):
            up1 = cache.features
        else:
            skip2 = self.down1_2(skip1)
            for block in self.encoder_level_2:
                skip2 = block(skip2, c2)
            if cache is not None and cache.hit(2):
                up2 = cache.features
            else:
                h = self.down2_3(skip2)
                for block in self.latent:
                    h = block(h, c3)
                up2 = self.up3_2(h)
                if cache is not None:
                    cache.store(2, up2)
            h = conv(self.reduce_chan_level2, torch.cat([up2, skip2], dim=1))
            for block in self.decoder_level_2:
                h = block(h, c2)
            up1 = self.up2_1(h)
            if cache is not None:
                cache.store(1, up1)
        h = conv(self.reduce_chan_level1, torch.cat([up1, skip1], dim=1))
        for block in self.decoder_level_1:
            h = block(h, c2)
        return self.final_layer(h, c2).contiguous()  # callers expect a plain NCHW tensor

    def forward_with_cfg(self, x, t, y, cfg_scale: float, guidance_channels=3, cache: "FeatureCache | None" = None):
        """Classifier-free guidance on a batch laid out [cond half; uncond half] (labels of the second half are the
        null class). Guidance acts on the first `guidance_channels` output channels: 3 by default, as the official
        release does for reproducibility; "all" (or None) guides all `in_channels` noise channels."""
        return guided_output(self, x, t, y, cfg_scale, guidance_channels, cache=cache)


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


def guided_output(model, x, t, y, cfg_scale: float, guidance_channels=3, **forward_kwargs):
    """Shared classifier-free guidance for DiCo and DiT (same layout and semantics as the official code)."""
    if guidance_channels in (None, "all"):
        guidance_channels = model.in_channels
    half = x[: len(x) // 2]
    out = model(torch.cat([half, half], dim=0), t, y, **forward_kwargs)
    eps, rest = out[:, :guidance_channels], out[:, guidance_channels:]
    cond, uncond = torch.split(eps, len(eps) // 2, dim=0)
    guided = uncond + cfg_scale * (cond - uncond)
    return torch.cat([torch.cat([guided, guided], dim=0), rest], dim=1)
