"""MMDiT (Esser et al., 2024; SD3's joint text-image Transformer) as REPA trains it for text-to-image: the paper's
text-to-image baseline.

Every joint block holds two streams with their own weights, one for the text tokens (`context_block`) and one for
the image patches (`x_block`); both streams are modulated by the timestep embedding, and one attention runs over the
text tokens followed by the image tokens. The text stream of the last block only feeds that attention (nothing reads
its output), so it has no output projection, no MLP and two modulations instead of six.

Compatibility with REPA's `models/mmdit.py` (sihyun-yu/REPA), which is how its text-to-image checkpoints load:
- Parameter names and shapes are REPA's, so its state dict without `projectors.*` loads with strict=True; dico keeps
  the REPA projector beside the model (dico.repa.RepaLoss), never inside it, and returns the prediction only.
- Sizes follow REPA's rule: width 32 * depth and `depth` heads of 32 channels; the text embedder maps `context_dim`
  (CLIP ViT-L/14's 768) to the width; learn_sigma is off (REPA trains t2i with velocity prediction).
- Initialisation is PyTorch's default for every layer, as REPA leaves it (no adaLN-zero), and the fixed 2-D sin-cos
  position table is a buffer named `pos_embed` (REPA checkpoints hold it).
- Inputs smaller than the table are accepted as REPA accepts them: the centred crop of the table is added. REPA hard
  codes a 16 x 16 table (so it runs only with input_size 32, patch 2); here the table is input_size / patch_size on a
  side, which is REPA's table at REPA's setting and lets 512 px (64 x 64 latents) be built too.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import records_config
from .dit import FinalLayer, Mlp, PatchEmbed, modulate, sincos_2d, unpatchify
from .embedders import TimestepEmbedder
from .fast_ops import attention, linear
from .guidance import combine_guidance, resolve_guidance_channels

HEAD_DIM = 32  # REPA's rule: width 32 * depth split into `depth` heads


class StreamAttention(nn.Module):
    """The query/key/value projection of one stream and, unless the stream ends at this attention, its output
    projection; the attention itself runs jointly over both streams in JointBlock."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, has_output: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if has_output:
            self.proj = nn.Linear(dim, dim)

    def heads(self, x: torch.Tensor) -> tuple:
        """q, k, v of the tokens x (N, L, D), each (N, heads, L, head_dim)."""
        n, length, dim = x.shape
        qkv = linear(self.qkv, x).reshape(n, length, 3, self.num_heads, dim // self.num_heads)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)


class StreamBlock(nn.Module):
    """One stream of a joint block: adaLN-modulated attention input, then (after the joint attention) the gated
    attention residual and the gated MLP residual. `forward` is the part after the attention, so the module's output
    is the stream's output (what a forward hook on the image stream sees: the tokens REPA aligns)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, attention_only: bool = False):
        super().__init__()
        self.attention_only = attention_only
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = StreamAttention(dim, num_heads, qkv_bias, has_output=not attention_only)
        if not attention_only:
            self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, (2 if attention_only else 6) * dim))

    def attention_inputs(self, x: torch.Tensor, c: torch.Tensor) -> tuple:
        """(q, k, v) of this stream and the modulations its second half needs (None for an attention-only stream)."""
        mods = linear(self.adaLN_modulation[1], F.silu(c)).chunk(2 if self.attention_only else 6, dim=1)
        qkv = self.attn.heads(modulate(self.norm1(x), mods[0], mods[1]))
        return qkv, (None if self.attention_only else mods[2:])

    def forward(self, x: torch.Tensor, attended: torch.Tensor, mods: tuple) -> torch.Tensor:
        """The stream's output from its input x, its rows of the joint attention (N, L, D) and its modulations."""
        gate_attn, shift_mlp, scale_mlp, gate_mlp = mods
        x = x + gate_attn[:, None] * linear(self.attn.proj, attended)
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class JointBlock(nn.Module):
    """A text stream and an image stream sharing one attention over [text tokens; image tokens]."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, last: bool):
        super().__init__()
        self.context_block = StreamBlock(dim, num_heads, mlp_ratio, qkv_bias, attention_only=last)
        self.x_block = StreamBlock(dim, num_heads, mlp_ratio, qkv_bias)

    def forward(self, context: torch.Tensor, x: torch.Tensor, c: torch.Tensor) -> tuple:
        """(context, x) after the block; context is None after the last block."""
        context_qkv, context_mods = self.context_block.attention_inputs(context, c)
        x_qkv, x_mods = self.x_block.attention_inputs(x, c)
        q, k, v = (torch.cat([a, b], dim=2) for a, b in zip(context_qkv, x_qkv))
        attended = attention(q, k, v)
        n, heads, length, head_dim = attended.shape
        attended = attended.transpose(1, 2).reshape(n, length, heads * head_dim)
        split = context.shape[1]
        context_out = None
        if context_mods is not None:
            context_out = self.context_block(context, attended[:, :split], context_mods)
        return context_out, self.x_block(x, attended[:, split:], x_mods)


class MMDiT(nn.Module):
    """The MMDiT network: `model(x, t, context)` -> (N, out_channels, H, W), with x latents (N, C, H, W), t (N,)
    timesteps and context (N, L, context_dim) text token embeddings. H and W are multiples of patch_size and at most
    input_size; any L (REPA's CLIP states have 77).

    The keyword arguments are the model's config: width and heads follow from `depth` as in REPA. context_length is
    the token count of the text encoder this model is paired with (dico's example inputs and null captions use it).
    register_length adds that many learned tokens in front of the text (REPA's option; 0 in its t2i runs).
    """

    arch = "mmdit"

    @records_config
    def __init__(self, input_size: int = 32, patch_size: int = 2, in_channels: int = 4, depth: int = 24,
                 mlp_ratio: float = 4.0, learn_sigma: bool = False, context_dim: int = 768, context_length: int = 77,
                 qkv_bias: bool = True, register_length: int = 0):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        hidden_size = HEAD_DIM * depth
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.learn_sigma = learn_sigma
        self.num_classes = 0  # text-conditioned: no label table
        self.patch_size = patch_size
        self.input_size = input_size
        self.num_heads = depth
        self.grid_size = input_size // patch_size
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.context_embedder = nn.Linear(context_dim, hidden_size)
        self.register_length = register_length
        if register_length > 0:
            self.register = nn.Parameter(torch.randn(1, register_length, hidden_size))
        # A persistent buffer (not a parameter), as REPA keeps it: its checkpoints hold it.
        self.register_buffer("pos_embed", sincos_2d(hidden_size, self.grid_size)[None])
        self.joint_blocks = nn.ModuleList(
            JointBlock(hidden_size, depth, mlp_ratio, qkv_bias, last=i == depth - 1) for i in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)

    def blocks(self) -> list:
        """The joint blocks, in order (what gradient checkpointing wraps)."""
        return list(self.joint_blocks)

    def alignment_blocks(self) -> list:
        """The image stream of each joint block: block k's output is the image tokens REPA aligns at encoder depth k."""
        return [block.x_block for block in self.joint_blocks]

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[2:]
        p, side = self.patch_size, self.input_size
        if h % p or w % p or h > side or w > side:
            raise ValueError(f"MMDiT built for input_size={side} takes H and W that are multiples of {p} and at most "
                             f"{side}, got {(h, w)}")
        n = x.shape[0]
        if t.ndim != 1 or t.shape[0] != n:
            raise ValueError(f"t must be a 1-D tensor of {n} timesteps, got shape {tuple(t.shape)}")
        dim = self.context_embedder.in_features
        if context is None or context.ndim != 3 or context.shape[0] != n or context.shape[2] != dim:
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"context must be text token embeddings of shape ({n}, L, {dim}), got {got}")

    def position_table(self, h: int, w: int) -> torch.Tensor:
        """The centred h x w crop of the position table (h, w in patches), (1, h * w, D)."""
        side = self.grid_size
        top, left = (side - h) // 2, (side - w) // 2
        table = self.pos_embed.reshape(1, side, side, -1)[:, top:top + h, left:left + w]
        return table.reshape(1, h * w, -1)

    def unpatchify(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return unpatchify(x, h, w, self.patch_size, self.out_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        self.check_inputs(x, t, context)
        h, w = x.shape[2] // self.patch_size, x.shape[3] // self.patch_size
        x = self.x_embedder(x) + self.position_table(h, w)
        c = self.t_embedder(t)
        context = linear(self.context_embedder, context)
        if self.register_length > 0:
            context = torch.cat([self.register.expand(len(x), -1, -1), context], dim=1)
        for block in self.joint_blocks:
            context, x = block(context, x, c)
        return self.unpatchify(self.final_layer(x, c), h, w)

    def forward_with_cfg(self, x, t, context, cfg_scale: float, guidance_channels="all"):
        """Classifier-free guidance as DiT.forward_with_cfg, with context [prompts; null captions]; every channel is
        guided (REPA's text-to-image sampler guides the whole velocity)."""
        half = x[: len(x) // 2]
        cond, uncond = self(torch.cat([half, half]), t, context).chunk(2)
        return combine_guidance(cond, uncond, cfg_scale, resolve_guidance_channels(guidance_channels, self.in_channels))
