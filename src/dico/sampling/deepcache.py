"""Training-free sampling acceleration for the U-shape (DeepCache-style).

Adjacent denoising steps produce nearly the same deep features. Every `interval` model calls we run the full network
and keep the features that enter the outer level(s) from below; the calls in between recompute only the outer
`depth` level(s) (the encoder level that feeds the skip, and the decoder level that consumes it) on the cached deep
features.

DiCo's outer level is heavy (its decoder runs at twice the base width at full resolution: about half of the MACs),
so with guidance the cached calls also reuse the guidance direction: they run the conditional half only and add
(scale - 1) * (cond - uncond) from the last full call. A cached guided call then costs about a quarter of a full one.
"""

import torch

from ..models import FeatureCache, combine_guidance, resolve_guidance_channels


class DeepCache:
    """A sampler-facing model callable `(x, t, y)` with a refresh schedule; guidance is applied here when on.

    With `cfg_scale != 1` the batch is laid out [cond; uncond] as for `forward_with_cfg`, and refresh calls return
    exactly what `forward_with_cfg` returns. With `cache_guidance` (the default) cached calls run the conditional
    half only and estimate the unconditional output as cond - (cond - uncond of the last full call); without it they
    run both halves.
    """

    def __init__(self, model, interval: int, depth: int = 1, cfg_scale: float = 1.0, guidance_channels=3,
                 cache_guidance: bool = True):
        if not hasattr(model, "encoder_level_1"):
            raise ValueError("DeepCache needs the DiCo U-shape; this model has none")
        if interval < 1:
            raise ValueError(f"cache interval must be >= 1, got {interval}")
        self.model, self.interval = model, interval
        self.cache = FeatureCache(depth)
        self.cfg_scale, self.cache_guidance = cfg_scale, cache_guidance
        self.channels = resolve_guidance_channels(guidance_channels, model.in_channels)
        self.calls = 0
        self.direction = None  # cond - uncond on the guided channels, from the last full call

    def __call__(self, x, t, y):
        refresh = self.calls % self.interval == 0
        self.calls += 1
        self.cache.refresh = refresh
        if self.cfg_scale == 1.0:
            return self.model(x, t, y, cache=self.cache)
        n, c = len(x) // 2, self.channels
        if refresh or not self.cache_guidance:
            # forward_with_cfg, keeping the guidance direction for the cached calls that follow.
            half = x[:n]
            cond, uncond = self.model(torch.cat([half, half]), t, y, cache=self.cache).chunk(2)
            self.direction = cond[:, :c] - uncond[:, :c]
            return combine_guidance(cond, uncond, self.cfg_scale, c)
        half_cache = FeatureCache(self.cache.depth, refresh=False, features=self.cache.features[:n])
        cond = self.model(x[:n], t[:n], y[:n], cache=half_cache)
        uncond = torch.cat([cond[:, :c] - self.direction, cond[:, c:]], dim=1)
        return combine_guidance(cond, uncond, self.cfg_scale, c)
