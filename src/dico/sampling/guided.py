"""The guided sampler core, written once for `dico sample`, `DiCoPipeline` and the web demo.

- Keyed noise: image i's initial noise and the fresh noise of step s are drawn from generators keyed by (seed, i)
  and (seed, i, s), so an image does not depend on the batch it is in, the process count or an interruption.
- Guidance is one combinator, out = weak + w * (cond - weak) on the first `channels` output channels, whose weak
  term comes from a strategy: classifier-free guidance (the same model given the null condition) today.
- `Denoiser` is the callable every sampler runs, (x, t) -> model output: plain, guided, guided only inside a time
  interval (Kynkaanniemi et al. 2024), or with DeepCache's feature reuse.

A guided sampler state is laid out as [images; copies] (the layout of the official `forward_with_cfg`): the samplers
step both halves, the model reads the first, and the first half is the result.
"""

from dataclasses import dataclass, field

import torch

from ..models import FeatureCache, combine_guidance, resolve_guidance_channels
from ..options import check_guidance_channels, check_guidance_scale, check_seed
from ..randomness import PURPOSES, keyed_randn


def keyed_noise(seed: int, indices, shape, device=None) -> torch.Tensor:
    """The initial noise of the images with these indices: (len(indices), *shape)."""
    seed = check_seed(seed)
    return keyed_randn([(seed, PURPOSES["sample_init"], i) for i in indices], shape, device)


def keyed_step_noise(seed: int, indices, shape, device=None, copies: int = 1):
    """step_noise(step, full_shape): the fresh noise of a sampler step for these images, repeated `copies` times
    (a guided state holds every image twice)."""
    indices, seed = list(indices), check_seed(seed)

    def step_noise(step, full_shape=None):
        eps = keyed_randn([(seed, PURPOSES["sample_step"], i, step) for i in indices], shape, device)
        return torch.cat([eps] * copies) if copies > 1 else eps

    return step_noise


class ClassifierFree:
    """The weak term is the model itself given the null condition (Ho & Salimans 2022): both halves in one batch."""

    def check(self, model, cond) -> None:
        cond.check_guidable(model)

    def bind(self, model, cond):
        """outputs(x, t, **extra) -> (cond, weak) outputs for the first half of a guided state x."""
        pair = cond.cat(cond.null()).model_kwargs()

        def outputs(x, t, **extra):
            half = x[: len(x) // 2]
            return model(torch.cat([half, half]), t, **pair, **extra).chunk(2)

        return outputs


@dataclass
class Guidance:
    """How sampling is guided: the scale w (1: off), the leading output channels it acts on (3, the official rule, or
    "all"), the flow-time interval it acts in (0 = noise, 1 = data) and the strategy giving the weak term."""

    scale: float = 1.0
    channels: int | str = 3
    interval: tuple = (0.0, 1.0)
    strategy: ClassifierFree = field(default_factory=ClassifierFree)

    def __post_init__(self):
        # Every sampler, the pipeline and the demo guide through here: a NaN scale would make NaN images.
        self.scale = check_guidance_scale(self.scale)
        self.channels = check_guidance_channels(self.channels)

    @classmethod
    def from_options(cls, options) -> "Guidance":
        return cls(options.cfg_scale, options.guidance_channels, tuple(options.guidance_interval))

    @property
    def active(self) -> bool:
        return self.scale != 1.0

    @property
    def everywhere(self) -> bool:
        return tuple(self.interval) == (0.0, 1.0)


@dataclass
class CacheOptions:
    """DeepCache: a full forward every `interval` calls, `depth` outer levels recomputed in between; with guidance,
    `reuse_guidance` lets cached calls reuse cond - weak of the last full call (else both halves run)."""

    interval: int = 1
    depth: int = 1
    reuse_guidance: bool = True

    @classmethod
    def from_options(cls, options) -> "CacheOptions | None":
        if options.cache_interval <= 1:
            return None
        return cls(options.cache_interval, options.cache_depth, options.cache_guidance)


class Denoiser:
    """The sampler-facing model: (x, t) -> output, with the conditioning bound and guidance applied.

    `flow_time(t)` maps the model's time argument to flow time (the objective's rule), for the guidance interval.
    """

    def __init__(self, model, cond, guidance: Guidance | None = None, flow_time=None, cache: CacheOptions | None = None):
        self.model, self.cond = model, cond
        self.guidance = guidance or Guidance()
        self.kwargs = cond.model_kwargs()
        self.cache = None
        if self.guidance.active:
            self.guidance.strategy.check(model, cond)
            self.outputs = self.guidance.strategy.bind(model, cond)
            self.channels = resolve_guidance_channels(self.guidance.channels, model.in_channels)
            self.flow_time = flow_time
        if cache is not None:
            if not self.guidance.everywhere:
                raise ValueError("DeepCache (cache_interval > 1) and a guidance interval cannot be combined")
            if not hasattr(model, "encoder_level_1"):
                raise ValueError("DeepCache needs the DiCo U-shape; this model has none")
            self.cache, self.cache_options = FeatureCache(cache.depth), cache
            self.calls = 0
            self.direction = None  # cond - weak on the guided channels, from the last full call

    @property
    def copies(self) -> int:
        """How many times the sampler state holds each image."""
        return 2 if self.guidance.active else 1

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """The sampler state for images x: x, or [x; x] when guided."""
        return torch.cat([x] * self.copies) if self.copies > 1 else x

    def guided(self, x, t, **extra):
        cond, weak = self.outputs(x, t, **extra)
        return self.combine(cond, weak)

    def combine(self, cond, weak):
        return combine_guidance(cond, weak, self.guidance.scale, self.channels)

    def __call__(self, x, t, **extra):
        """`extra`: per-sample model inputs beside t (MeanFlow's second time r), laid out as t."""
        if self.cache is not None:
            return self.cached(x, t, **extra)
        if not self.guidance.active:
            return self.model(x, t, **self.kwargs, **extra)
        if self.guidance.everywhere:
            return self.guided(x, t, **extra)
        lo, hi = self.guidance.interval
        if lo <= self.flow_time(float(t.flatten()[0])) <= hi:
            return self.guided(x, t, **extra)
        # Outside the interval the conditional half alone runs and stands for both halves.
        n = len(x) // 2
        out = self.model(x[:n], t[:n], **self.kwargs, **{k: v[:n] for k, v in extra.items()})
        return torch.cat([out, out])

    def cached(self, x, t, **extra):
        """DeepCache: refresh calls run the full network and keep the deep features; the calls between recompute the
        outer level(s) only. With guidance, cached calls run the conditional half and take the weak output as
        cond - (cond - weak of the last full call), which costs about a quarter of a full guided call."""
        refresh = self.calls % self.cache_options.interval == 0
        self.calls += 1
        self.cache.refresh = refresh
        if not self.guidance.active:
            return self.model(x, t, **self.kwargs, **extra, cache=self.cache)
        n, c = len(x) // 2, self.channels
        if refresh or not self.cache_options.reuse_guidance:
            cond, weak = self.outputs(x, t, **extra, cache=self.cache)
            self.direction = cond[:, :c] - weak[:, :c]
            return self.combine(cond, weak)
        half_cache = FeatureCache(self.cache.depth, refresh=False, features=self.cache.features[:n])
        cond = self.model(x[:n], t[:n], **self.kwargs, **{k: v[:n] for k, v in extra.items()}, cache=half_cache)
        weak = torch.cat([cond[:, :c] - self.direction, cond[:, c:]], dim=1)
        return self.combine(cond, weak)


def sample_latents(model, objective, cond, options, indices, shape, device, progress: bool = False) -> torch.Tensor:
    """The model's samples (before any decoding) for the images with these indices and conditions: (N, *shape).

    `objective` (dico.objectives) runs its sampler by `options` (SamplingOptions) on the guided `Denoiser`."""
    options.check()  # again: options may have been changed since they were made
    denoiser = Denoiser(model, cond, Guidance.from_options(options), objective.flow_time,
                        CacheOptions.from_options(options))
    noise = denoiser.layout(keyed_noise(options.seed, indices, shape, device))
    step_noise = keyed_step_noise(options.seed, indices, shape, device, denoiser.copies)
    z = objective.sample(denoiser, noise, options, learn_sigma=model.learn_sigma, step_noise=step_noise,
                         device=device, progress=progress)
    return z[: len(indices)]
