"""The fast-path ops the DiCo and DiT blocks are written in.

They give the same answer as the plain PyTorch formulation (tests/test_fast_paths.py writes it out) and take
shortcuts only in eager inference on CPU, where they pay: in-place element-wise ops, oneDNN convolutions called
directly, cached low-precision weights under autocast. Under autograd, under forward-mode AD (torch.func.jvp and the
other torch.func transforms, torch.autograd.forward_ad's dual tensors: MeanFlow's training target), and while
torch.compile traces the model, every op is the plain one, so training, DDP, the compiler and FlopCounterMode see an
ordinary PyTorch model.
"""

import weakref

import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn as nn
import torch.nn.functional as F
from torch.utils import flop_counter


# The network keeps its feature maps in channels-last memory (NCHW shape, NHWC storage): oneDNN runs 1x1 and
# depthwise convolutions several times faster in that layout, and a channel LayerNorm becomes a plain last-dim
# layer_norm on a free permuted view. The helpers below work on that NHWC view, so no op copies to change layout.
def nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def eager_inference() -> bool:
    """Whether the inference shortcuts apply: outside autograd, outside torch.compile's tracing (the compiler
    plans buffers and fuses element-wise ops itself, and traces the plain ops without graph breaks) and outside
    forward-mode AD (a tangent cannot ride through oneDNN's convolution, which has no forward derivative, nor through
    ops that overwrite their input), which runs even under torch.no_grad()."""
    return not torch.is_grad_enabled() and not torch.compiler.is_compiling() and not forward_ad_active()


def forward_ad_active() -> bool:
    """Whether a torch.func transform (jvp, vmap, ...: its level) or a torch.autograd.forward_ad.dual_level is
    active: both are global states, set for the duration of the call or the `with` block."""
    return torch._C._functorch.maybe_current_level() is not None or forward_ad._current_level >= 0


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (N, heads, tokens, d): PyTorch's fused kernel, or, under forward-mode AD (the
    fused kernels have no forward derivative, pytorch issue 128971; MeanFlow's JVP target needs one), the same formula
    written out, at the memory cost of the full attention matrix. The compiler's tracer sees plain tensors and keeps
    the fused kernel."""
    if forward_ad_active() and not torch.compiler.is_compiling():
        return (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1) @ v
    return F.scaled_dot_product_attention(q, k, v)


def autocast_dtype(device_type: str):
    """The dtype autocast computes in on this device type, or None when autocast is off (or has no such device, e.g.
    "meta")."""
    if not torch.amp.is_autocast_available(device_type) or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


# In eager inference we overwrite intermediates we own instead of allocating a new map for every element-wise op.
# Besides saving bandwidth this matters on glibc: blocks larger than its mmap threshold (at most 32 MiB, e.g. the
# fp32 FFN map of DiCo-S at batch 16) are fresh mmaps whose pages the kernel zero-fills on first touch, which made
# such ops 4-5x slower than the same op writing into an existing buffer (measured; see BENCHMARKS.md).
def reuse(t: torch.Tensor):
    """`out=` argument for an op whose result may overwrite `t`: t itself in eager inference, else None."""
    return t if eager_inference() else None


def modulated_norm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """adaLN: a channel LayerNorm (no affine) of x, modulated by per-sample shift and scale as one fused
    multiply-add (addcmul).

    Under bf16 autocast the result feeds a bf16 convolution, so we normalise in bf16 straight away (the kernel
    accumulates in fp32) instead of letting autocast produce an fp32 map that the next conv casts again: the
    fp32 residual stream is read once and the rest of the work moves half the bytes. In eager inference the
    modulation writes over the normalised map instead of into a fresh one (see `reuse`).
    """
    low = autocast_dtype(x.device.type)
    if low is not None:  # (autocast would also run layer_norm in fp32 on a map that is already bf16)
        with torch.autocast(x.device.type, enabled=False):
            return modulated_norm(x.to(low), shift.to(low), scale.to(low), eps)
    h = F.layer_norm(nhwc(x), (x.shape[1],), eps=eps)
    return nchw(torch.addcmul(shift[:, None, None, :], h, 1 + scale[:, None, None, :], out=reuse(h)))


def activation(kind: str, x: torch.Tensor) -> torch.Tensor:
    """The block's activation ("gelu" | "relu") on an NCHW map in channels-last memory, applied on the plainly
    contiguous NHWC view (the bf16 GELU kernel is about 2x faster there than on channels-last strides); in place in
    eager inference."""
    v = nhwc(x)
    in_place = eager_inference()
    if kind == "gelu":
        return nchw(torch.ops.aten.gelu_(v) if in_place else F.gelu(v))
    return nchw(F.relu(v, inplace=in_place))


# Inference under bf16 autocast: autocast casts every fp32 weight again on every call, which at small batches moves
# as many bytes as the activations do. In eager inference we keep the low-precision copy between calls and refresh
# it whenever the parameter changes in place (its version counter moves: optimizer steps, load_state_dict, p.copy_).
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


def mkldnn_convolution_flops(x_shape, w_shape, bias_shape, padding, stride, dilation, groups, *args, out_shape=None,
                             **kwargs) -> int:
    """FLOPs of the oneDNN convolution `conv` calls in fp32 inference, so FlopCounterMode counts it as it counts
    aten.convolution (its weight is (out, in / groups, kH, kW) as for a plain convolution)."""
    return flop_counter.conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


if torch.ops.aten.mkldnn_convolution not in flop_counter.flop_registry:  # (a torch that counts it keeps its formula)
    flop_counter.register_flop_formula(torch.ops.aten.mkldnn_convolution)(mkldnn_convolution_flops)


def conv(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """layer(x), with cached low-precision weights for eager inference under autocast (see above). fp32 eager
    inference on CPU calls oneDNN directly (unless the user turned it off with torch.backends.mkldnn): for 1x1
    kernels at batch < 16 on one thread ATen picks its im2col + sgemm path instead, about 1.7x slower here
    (BENCHMARKS.md). FlopCounterMode counts that call through the formula registered above."""
    if not eager_inference():
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
    """layer(x), with cached low-precision weights for eager inference under autocast (see above)."""
    low = autocast_dtype(x.device.type)
    if low is None or not eager_inference():
        return layer(x)
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.to(low), inference_weight(layer.weight, low), inference_weight(layer.bias, low))


def gated_residual(x: torch.Tensor, gate: torch.Tensor, h: torch.Tensor, out: torch.Tensor | None = None):
    """x + gate * h in one pass (addcmul) instead of a multiply then an add; in eager inference it overwrites h (the
    branch's fresh output; never x, the block's input), or writes into `out` when given."""
    v = nhwc(h)
    if out is not None:
        out = nhwc(out)
    elif eager_inference() and torch.result_type(x, h) == h.dtype:  # (an fp32 x with a bf16 branch gives fp32)
        out = v
    return nchw(torch.addcmul(nhwc(x), gate[:, None, None, :], v, out=out))


# glibc serves blocks of 32 MiB and more with fresh mmaps, whose pages the kernel zero-fills on every call (e.g. the
# fp32 FFN map of DiCo-S at batch 16: 32 MiB); inference keeps each slice's hidden map at or below this.
FFN_CHUNK_BYTES = 16 << 20


def ffn_chunks(h: torch.Tensor, hidden_channels: int) -> int:
    """How many batch slices inference runs the FFN in (1 outside eager inference: autograd keeps every map anyway)."""
    if not eager_inference():
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
        if isinstance(layer, nn.Conv2d):  # (the fp32 means meet the weights' own dtype: bf16 models have bf16 ones)
            z = F.linear(z.to(layer.weight.dtype), layer.weight.flatten(1), layer.bias)
        else:
            z = layer(z)
    return z


def scale_channels(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """h * w[:, :, None, None] on the NHWC view, in place in eager inference."""
    v = nhwc(h)
    return nchw(torch.mul(v, w.to(h.dtype)[:, None, None, :], out=reuse(v)))
