"""Parameter and multiply-accumulate (MAC) counts: the efficiency columns of the paper's tables.

The paper's "GFLOPs" are MACs measured by torchprofile's `profile_macs` on one image. We count with our own
dispatch-level counter on the model's real forward pass and follow torchprofile's convention, so the numbers agree:

- convolution: output elements x input channels per group x kernel area (bias adds are free);
- matrix products (linear, mm, bmm, attention's QK^T and AV): the usual m x n x k;
- elementwise multiply (incl. the multiply inside addcmul) and layer norm: one MAC per output element;
- mean / average pooling: one MAC per output element;
- everything else (add, activations, softmax, copies, embedding look-ups) is free.

Counting runs on the "meta" device by default: shapes only, no memory and no arithmetic, so even DiCo-H at 512 px
counts in about a second.
"""

import math
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..models import build_model, create_model
from ..models.inputs import example_condition

aten = torch.ops.aten


def _conv(args, out):
    weight, groups = args[1], args[8] if len(args) > 8 else 1
    transposed = len(args) > 6 and args[6]
    in_per_group = weight.shape[0] // groups if transposed else weight.shape[1]
    return out.numel() * in_per_group * math.prod(weight.shape[2:])


def _sdpa(args, out):
    q, k = args[0], args[1]
    # QK^T and softmax(.)V: each batch*heads*Lq*Lk*E.
    return 2 * math.prod(q.shape[:-1]) * k.shape[-2] * q.shape[-1]


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


MAC_RULES = {
    aten.convolution: _conv,
    # (input, weight, bias, padding, stride, dilation, groups): weight.shape[1] is already per group
    aten.mkldnn_convolution: lambda a, o: o.numel() * a[1].shape[1] * math.prod(a[1].shape[2:]),
    aten.addmm: lambda a, o: a[1].shape[0] * a[1].shape[1] * a[2].shape[1],
    aten.mm: lambda a, o: a[0].shape[0] * a[0].shape[1] * a[1].shape[1],
    aten.bmm: lambda a, o: math.prod(a[0].shape) * a[1].shape[-1],
    aten.baddbmm: lambda a, o: math.prod(a[1].shape) * a[2].shape[-1],
    aten.mul: lambda a, o: o.numel(),
    aten.addcmul: lambda a, o: o.numel(),
    aten.native_layer_norm: lambda a, o: o[0].numel(),
    aten.mean: lambda a, o: o.numel(),
    aten._adaptive_avg_pool2d: lambda a, o: o.numel(),
    aten.avg_pool2d: lambda a, o: o.numel(),
    aten._scaled_dot_product_flash_attention_for_cpu: lambda a, o: _sdpa(a, _first(o)),
    aten._scaled_dot_product_flash_attention: lambda a, o: _sdpa(a, _first(o)),
    aten._scaled_dot_product_efficient_attention: lambda a, o: _sdpa(a, _first(o)),
    aten._scaled_dot_product_cudnn_attention: lambda a, o: _sdpa(a, _first(o)),
}


class MacCounter(TorchDispatchMode):
    """Counts MACs of every op run inside it (see the module docstring for the convention); `by_op` breaks it down."""

    def __init__(self):
        super().__init__()
        self.by_op = {}

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        rule = MAC_RULES.get(func.overloadpacket)
        if rule is not None:
            name = func.overloadpacket.__name__
            self.by_op[name] = self.by_op.get(name, 0) + int(rule(args, out))
        return out


def count(model: torch.nn.Module, input_shape, device="meta") -> tuple:
    """(parameters, MACs) of one forward pass of `model(x, t, y)` (or `context` for a text model) on an input of `input_shape` (N, C, H, W).

    MACs are for the whole batch (use N=1 for the paper's per-image figure). The model is moved to `device`
    ("meta" by default: a shape-only copy, so nothing is computed and no memory is used); the caller's model is
    left untouched when it already lives on another device.
    """
    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be (N, C, H, W), got {tuple(input_shape)}")
    params = sum(p.numel() for p in model.parameters())
    if device == "meta" and any(p.device.type != "meta" for p in model.parameters()):
        model = _meta_copy(model)
    n = input_shape[0]
    x = torch.zeros(input_shape, device=device)
    t = torch.zeros(n, device=device)
    cond = example_condition(model, n, device=device)  # class labels, or a text model's context tokens
    was_training = model.training
    model.eval()
    counter = MacCounter()
    try:
        with torch.no_grad(), counter:
            model(x, t, **cond.model_kwargs())
    finally:
        model.train(was_training)
    return params, counter.total


def _meta_copy(model):
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("count(device='meta') needs a dico model (with .spec); pass device='cpu' for other modules")
    with torch.device("meta"):
        return build_model(spec)


@dataclass
class ModelCost:
    name: str
    image_size: int
    params: int
    macs: int


def model_cost(name: str, image_size: int = 256, in_channels: int = 4) -> ModelCost:
    """Params and per-image MACs of a registered model at `image_size` pixels (latent = image / 8)."""
    if image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32 (latent = image/8, divisible by 4), got {image_size}")
    latent = image_size // 8
    with torch.device("meta"):
        model = create_model(name, input_size=latent, in_channels=in_channels)
    params, macs = count(model, (1, in_channels, latent, latent))
    return ModelCost(name, image_size, params, macs)


# The paper's efficiency columns: (params in millions or None when not given, GMACs), by (model, image size).
PAPER_COSTS = {
    ("DiCo-S", 256): (33.1, 4.25),
    ("DiCo-B", 256): (130.0, 16.88),
    ("DiCo-L", 256): (463.9, 60.24),
    ("DiCo-XL", 256): (701.2, 87.30),
    ("DiCo-H", 256): (1037.4, 194.15),
    ("DiCo-XL", 512): (701.2, 349.8),
    ("DiT-XL/2", 256): (675.0, 118.6),
}
