"""The guided sampler core, written once for `dico sample`, `DiCoPipeline` and the web demo.

- Keyed noise: image i's initial noise and the fresh noise of step s are drawn from generators keyed by (seed, i)
  and (seed, i, s), so an image does not depend on the batch it is in, the process count or an interruption.
- Guidance is one combinator, out = weak + w * (cond - weak) on the first `channels` output channels, whose weak
  term comes from a strategy: classifier-free guidance (the same model given the null condition) or autoguidance
  (a weaker guide model given the same condition).
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


class GuideModel:
    """Autoguidance (Karras et al., NeurIPS 2024, "Guiding a diffusion model with a bad version of itself"): the weak
    term is a guide model (smaller, or less trained, than the main one) given the SAME condition, so guidance pushes
    away from the guide's errors rather than towards the class. The guide may differ in size and dtype; it must
    share the main model's input (noise channels, classes or text context) and, for its output, the noise channels
    (its learned variance, if any, is never used: the guided state keeps the main model's)."""

    def __init__(self, guide):
        self.guide = guide

    def check(self, model, cond) -> None:
        check_guide_model(model, self.guide)

    def bind(self, model, cond):
        kwargs, guide = cond.model_kwargs(), self.guide
        dtype = next(guide.parameters()).dtype
        noise = model.in_channels

        def outputs(x, t, cache=None, **extra):
            # Each model runs on the n images alone (not a 2n batch as CFG does): the main model's call is the
            # unguided call, so a guide that is the main model gives the unguided output bit for bit. `cache` (the
            # DeepCache of the main model) is the main model's: the guide always runs in full. `extra` (per-sample
            # inputs laid out as t: MeanFlow's r) goes to both.
            n = len(x) // 2
            half, t_half, per_sample = x[:n], t[:n], {k: v[:n] for k, v in extra.items()}
            good = model(half, t_half, **kwargs, **per_sample, **({} if cache is None else {"cache": cache}))
            bad = guide(half.to(dtype), t_half, **cast_floats(kwargs, dtype), **per_sample)[:, :noise]
            return good, torch.cat([bad.to(good.dtype), good[:, noise:]], dim=1)

        return outputs


def cast_floats(kwargs: dict, dtype) -> dict:
    """Floating tensors (text context) in the guide's dtype; labels stay integers."""
    return {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kwargs.items()}


def check_guide_model(model, guide) -> None:
    """Refuse a guide whose input or noise output is not the main model's, naming what differs."""
    facts = {
        "input channels": lambda m: m.in_channels,
        "classes": lambda m: m.num_classes,
        "text context size": lambda m: (m.config.get("context_dim") if isinstance(getattr(m, "config", None), dict)
                                        else None),
    }
    for what, get in facts.items():
        if get(model) != get(guide):
            raise ValueError(f"the guide model does not match the main model: {what} {get(guide)} (guide) vs "
                             f"{get(model)} (main)")
    if guide.out_channels < model.in_channels:
        raise ValueError(f"the guide model predicts {guide.out_channels} channels, fewer than the main model's "
                         f"{model.in_channels} noise channels")


@dataclass
class Guidance:
    """How sampling is guided: the scale w (1: off), the leading output channels it acts on (3, the official rule, or
    "all"), the flow-time interval it acts in (0 = noise, 1 = data) and the strategy giving the weak term."""

    scale: float = 1.0
    channels: int | str = 3
    interval: tuple = (0.0, 1.0)
    strategy: ClassifierFree | GuideModel = field(default_factory=ClassifierFree)

    def __post_init__(self):
        # Every sampler, the pipeline and the demo guide through here: a NaN scale would make NaN images.
        self.scale = check_guidance_scale(self.scale)
        self.channels = check_guidance_channels(self.channels)

    @classmethod
    def from_options(cls, options, guide=None) -> "Guidance":
        """The options' guidance: classifier-free, or autoguidance by `guide` (a model) when one is given."""
        strategy = ClassifierFree() if guide is None else GuideModel(guide)
        return cls(options.cfg_scale, options.guidance_channels, tuple(options.guidance_interval), strategy)

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


def sample_latents(model, objective, cond, options, indices, shape, device, progress: bool = False,
                   guide=None) -> torch.Tensor:
    """The model's samples (before any decoding) for the images with these indices and conditions: (N, *shape).

    `objective` (dico.objectives) runs its sampler by `options` (SamplingOptions) on the guided `Denoiser`; `guide`
    (a model) makes the guidance autoguidance instead of classifier-free."""
    options.check()  # again: options may have been changed since they were made
    denoiser = Denoiser(model, cond, Guidance.from_options(options, guide), objective.flow_time,
                        CacheOptions.from_options(options))
    noise = denoiser.layout(keyed_noise(options.seed, indices, shape, device))
    step_noise = keyed_step_noise(options.seed, indices, shape, device, denoiser.copies)
    z = objective.sample(denoiser, noise, options, learn_sigma=model.learn_sigma, step_noise=step_noise,
                         device=device, progress=progress)
    return z[: len(indices)]
