"""Training-free sampling acceleration for the U-shape (DeepCache-style).

Adjacent denoising steps produce nearly the same deep features. Every `interval` model calls we run the full network
and keep the features that enter the outer level(s) from below; the calls in between recompute only the outer
`depth` level(s) (the encoder level that feeds the skip, and the decoder level that consumes it) on the cached deep
features. Works with any sampler and with classifier-free guidance, since it only wraps the model call.
"""

from ..models.dico import FeatureCache


class DeepCache:
    """Wraps `fn(x, t, y, cache=...)` (a DiCo forward, or its guided form) with a refresh schedule."""

    def __init__(self, fn, model, interval: int, depth: int = 1):
        if not hasattr(model, "encoder_level_1"):
            raise ValueError("DeepCache needs the DiCo U-shape; this model has none")
        if interval < 1:
            raise ValueError(f"cache interval must be >= 1, got {interval}")
        self.fn, self.interval = fn, interval
        self.cache = FeatureCache(depth)
        self.calls = 0

    def __call__(self, x, t, **model_kwargs):
        self.cache.refresh = self.calls % self.interval == 0
        self.calls += 1
        return self.fn(x, t, cache=self.cache, **model_kwargs)
