"""Representation alignment (REPA, Yu et al., arXiv 2410.06940) for DiCo and DiT.

A 3-layer MLP (SiLU between, as REPA builds it) maps a hidden feature map of the diffusion model, position by
position, to the feature size of a frozen vision encoder; the loss is the mean over positions of the negative cosine
similarity with the encoder's patch tokens of the clean image. The feature is captured by a forward hook, so the
models need no change, and the projector lives beside the model (never inside its state dict), so EMA, inference and
exported weights never hold it.

Where to align in a ConvNet: DiCo's encoder level 2 sees a 32x32 latent at 16x16, the patch grid of DINOv2-B/14 at
224 px, so no resampling is needed at the default setting; `layer` picks any stage ("encoder_level_1" ...
"decoder_level_1", the output of its last block) or block ("encoder_level_2.1"). DiT: "8" is the output of the 8th
block, REPA's `encoder_depth`.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import RepaConfig
from ..models.inputs import example_inputs

DICO_STAGES = ("encoder_level_1", "encoder_level_2", "latent", "decoder_level_2", "decoder_level_1")


def depth_blocks(model) -> list | None:
    """The blocks REPA's encoder depth counts, or None: a model's `alignment_blocks()` (MMDiT: the image stream of
    each joint block) or its `blocks` list (DiT)."""
    if callable(getattr(model, "alignment_blocks", None)):
        return model.alignment_blocks()
    if isinstance(getattr(model, "blocks", None), nn.ModuleList):
        return list(model.blocks)
    return None


def default_layer(model) -> str:
    if hasattr(model, "encoder_level_2"):
        return "encoder_level_2"
    blocks = depth_blocks(model)
    if blocks is not None:
        # REPA's choice: 4 for SiT-S/B (12 blocks), 8 for SiT-L/XL (24/28 blocks) and its MMDiT (24)
        return "8" if len(blocks) >= 24 else "4"
    raise ValueError(f"no default REPA layer for {type(model).__name__}; pass a module name")


def feature_module(model, layer: str = "auto") -> nn.Module:
    """The module whose output is aligned. A stage (a list of blocks the model calls one by one, so the list
    itself never runs) stands for its last block; an integer k for a model with `blocks` is its k-th block."""
    layer = default_layer(model) if layer in (None, "", "auto") else str(layer)
    blocks = depth_blocks(model)
    if layer.isdigit() and blocks is not None:
        depth = int(layer)
        if not 1 <= depth <= len(blocks):
            raise ValueError(f"REPA layer {layer}: the model has blocks 1..{len(blocks)}")
        return blocks[depth - 1]
    try:
        module = model.get_submodule(layer)
    except AttributeError as err:
        stages = [n for n in DICO_STAGES if hasattr(model, n)]
        hint = (f"a stage ({', '.join(stages)}) or a block such as {stages[1]}.0" if stages
                else "a block number (REPA's encoder depth) or a module name")
        raise ValueError(f"REPA layer {layer!r} is not in {type(model).__name__}; use {hint}") from err
    if isinstance(module, (nn.ModuleList, nn.Sequential)):
        if len(module) == 0:
            raise ValueError(f"REPA layer {layer!r} is an empty stage")
        return module[-1]
    return module


def feature_tokens(feature: torch.Tensor) -> tuple:
    """(N, T, C) tokens and the (h, w) grid of a captured feature: a (N, C, h, w) map or (N, T, C) square tokens."""
    if feature.ndim == 4:
        n, c, h, w = feature.shape
        return feature.flatten(2).transpose(1, 2), (h, w)
    if feature.ndim == 3:
        side = round(feature.shape[1] ** 0.5)
        if side * side != feature.shape[1]:
            raise ValueError(f"cannot place {feature.shape[1]} tokens on a square grid")
        return feature, (side, side)
    raise ValueError(f"REPA needs a (N, C, h, w) map or (N, T, C) tokens, the layer gave shape {tuple(feature.shape)}")


def resize_tokens(tokens: torch.Tensor, grid: tuple, size: tuple) -> torch.Tensor:
    """(N, h*w, D) tokens on `grid` resampled to `size`: area averaging when shrinking by whole factors (each new
    position averages the patches it covers, the feature of the larger patch to first order), bilinear otherwise."""
    if tuple(grid) == tuple(size):
        return tokens
    n, _, d = tokens.shape
    grid_map = tokens.transpose(1, 2).reshape(n, d, *grid)
    shrink = all(g >= s and g % s == 0 for g, s in zip(grid, size))
    if shrink:
        resized = F.adaptive_avg_pool2d(grid_map, size)
    else:
        resized = F.interpolate(grid_map, size=size, mode="bilinear", align_corners=False)
    return resized.flatten(2).transpose(1, 2)


def target_grid(target: torch.Tensor) -> tuple:
    side = round(target.shape[1] ** 0.5)
    if side * side != target.shape[1]:
        raise ValueError(f"encoder tokens must lie on a square grid, got {target.shape[1]}")
    return side, side


def build_projector(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """REPA's projector: Linear, SiLU, Linear, SiLU, Linear, applied to every position; Xavier-uniform weights and
    zero biases, as REPA's SiT initialises every linear layer."""
    projector = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim), nn.SiLU(),
                              nn.Linear(hidden_dim, out_dim))
    for layer in projector:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return projector


def alignment_loss(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample REPA loss (N,): mean over positions of -cos(projected, target), in float32."""
    projected = F.normalize(projected.float(), dim=-1)
    target = F.normalize(target.float(), dim=-1)
    return -(projected * target).sum(dim=-1).mean(dim=-1)


@torch.no_grad()
def probe_feature(model, module: nn.Module) -> torch.Tensor:
    """The module's output on one small zero input, in eval mode and without touching the global RNG."""
    captured = []
    handle = module.register_forward_hook(lambda mod, args, out: captured.append(out))
    param = next(model.parameters())
    # DiT and MMDiT at the size they are built for; DiCo takes any multiple of 4
    x, t, cond = example_inputs(model, 1, device=param.device, dtype=param.dtype)
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=[]):
            model.eval()(x, t, **cond.model_kwargs())
    finally:
        handle.remove()
        model.train(was_training)
    return captured[0]


class RepaLoss(nn.Module):
    """The projector of one model layer and the alignment loss; its parameters are the projector's only.

    Usage: `repa = RepaLoss(model, config, target_dim)`; `repa.attach(model)` once (a forward hook keeps the
    layer's latest output); after each training forward, `repa(target)` (or `repa.loss(target)`) is the mean loss
    over the batch for encoder tokens `target` (N, T, D) of the same images. Save `repa.projector.state_dict()`.
    """

    def __init__(self, model, config: RepaConfig, target_dim: int):
        super().__init__()
        self.config = config
        channels = feature_tokens(probe_feature(model, feature_module(model, config.layer)))[0].shape[-1]
        self.projector = build_projector(channels, config.projector_dim, target_dim)
        self._handle = None
        self._captured = []

    def attach(self, model) -> "RepaLoss":
        self.detach()
        module = feature_module(model, self.config.layer)
        self._handle = module.register_forward_hook(self._capture)
        return self

    @property
    def attached(self) -> bool:
        return self._handle is not None

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._captured.clear()

    def _capture(self, module, args, output) -> None:
        self._captured.append(output)

    def take_feature(self) -> torch.Tensor:
        """The layer's output of the one forward since the last call (an error for none or several)."""
        if self._handle is None:
            raise RuntimeError("REPA: call attach(model) before the training forward")
        if len(self._captured) != 1:
            count = len(self._captured)
            self._captured.clear()
            raise RuntimeError(f"REPA: the model ran {count} times since the last alignment loss; expected once")
        return self._captured.pop()

    def project(self, feature: torch.Tensor, size: tuple | None = None) -> tuple:
        """(projected tokens (N, T, D), their grid) of a captured feature, resampled to `size` if given."""
        tokens, grid = feature_tokens(feature)
        projected = self.projector(tokens)
        if size is not None and tuple(size) != tuple(grid):
            projected, grid = resize_tokens(projected, grid, size), tuple(size)
        return projected, grid

    def per_sample(self, target: torch.Tensor) -> torch.Tensor:
        """(N,) losses of the captured feature against the encoder tokens (N, T, D).

        Grids that differ (e.g. DiCo level 2 of a 8x8 digit is 4x4, the digits encoder's 8x8): by default the encoder
        grid is resampled to the model's ("target"): every position the model computes is trained once, the model's
        backward graph gains nothing, and shrinking averages encoder patches, which cosine similarity then compares
        with the model's coarser position. "features" upsamples the projected tokens to the encoder grid instead
        (U-REPA's choice for U-Nets, arXiv 2503.18414)."""
        feature = self.take_feature()
        if self.config.resize == "features":
            projected, _ = self.project(feature, target_grid(target))
        else:
            projected, grid = self.project(feature)
            target = resize_tokens(target.float(), target_grid(target), grid)
        return alignment_loss(projected, target)

    def forward(self, target: torch.Tensor) -> torch.Tensor:
        return self.per_sample(target).mean()

    def loss(self, target: torch.Tensor) -> torch.Tensor:
        return self(target)
