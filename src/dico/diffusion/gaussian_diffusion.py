"""The Gaussian diffusion process of iDDPM as DiT and DiCo use it: training loss, DDPM and DDIM sampling.

One class covers both the full process and respaced ones: a respaced process keeps a subset of the original
timesteps (`timestep_map`) and rebuilds its betas from the kept alpha_bar values, so every formula below is the same
for both. The model is always called with ORIGINAL timesteps, the ones it was trained on.

Numerics follow the reference: schedule arrays are float64 and each coefficient is cast to the computation dtype
(float32, or float64 for float64 inputs) when gathered. Lower-precision inputs are computed in float32 and returned
in their own dtype.
"""

from typing import Iterator, Optional

import numpy as np
import torch

from ..randomness import StepNoise
from ..tensors import mean_flat
from .common import compute_dtype, initial_noise
from .dpm_solver import dpm_solver_plus_plus
from .likelihoods import discretized_gaussian_log_likelihood, normal_kl
from .schedules import Respacing, named_beta_schedule, space_timesteps

_LOG2 = float(np.log(2.0))


class GaussianDiffusion:
    """A (possibly respaced) discrete diffusion process with epsilon prediction.

    base_betas: float64 betas of the full process (e.g. `named_beta_schedule("linear", 1000)`).
    use_timesteps: the original timesteps to keep (see `space_timesteps`); None keeps them all.
    learn_sigma: the model outputs 2C channels, eps and a per-element interpolation v in [-1, 1] between the
        log posterior variance and log beta (iDDPM's learned range). Otherwise it outputs C channels (eps) and the
        variance is fixed: beta_t ("large", the default) or the posterior variance (sigma_small=True).
    rescale_learned_sigmas: scale the variational-bound term by num_timesteps / 1000 (iDDPM's RESCALED_MSE). Off by
        default, as in DiT and DiCo training (the vb term enters the loss unscaled).
    """

    def __init__(self, base_betas, use_timesteps=None, *, learn_sigma: bool = True, sigma_small: bool = False,
                 rescale_learned_sigmas: bool = False):
        base_betas = np.asarray(base_betas, dtype=np.float64)
        if base_betas.ndim != 1 or len(base_betas) == 0:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {base_betas.shape}")
        if not ((base_betas > 0) & (base_betas <= 1)).all():
            raise ValueError("betas must lie in (0, 1]")
        self.base_betas = base_betas
        self.original_num_steps = len(base_betas)
        self.learn_sigma = learn_sigma
        self.sigma_small = sigma_small
        self.rescale_learned_sigmas = rescale_learned_sigmas

        kept = list(range(self.original_num_steps)) if use_timesteps is None else sorted(set(int(t) for t in use_timesteps))
        if not kept or kept[0] < 0 or kept[-1] >= self.original_num_steps:
            raise ValueError(f"use_timesteps must be a non-empty subset of 0..{self.original_num_steps - 1}")
        self.timestep_map = np.array(kept, dtype=np.int64)
        # A kept step jumps straight from the previous kept alpha_bar to its own, so its beta is their ratio.
        base_alphas_cumprod = np.cumprod(1.0 - base_betas)
        kept_alphas_cumprod = base_alphas_cumprod[self.timestep_map]
        # Applied even when every step is kept: the reference always rebuilds betas this way, and the ratio rounds
        # differently from the original betas in the last bits.
        betas = 1.0 - kept_alphas_cumprod / np.append(1.0, kept_alphas_cumprod[:-1])
        self._set_schedule(betas)
        self._tensor_cache = {}

    def _set_schedule(self, betas: np.ndarray):
        self.betas = betas
        self.num_timesteps = len(betas)
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        # Posterior q(x_{t-1} | x_t, x_0).
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at t = 0; its log borrows the value of t = 1 there.
        if self.num_timesteps > 1:
            self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        else:
            self.posterior_log_variance_clipped = np.log(betas)
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        self.log_betas = np.log(betas)
        # "Large" fixed variance is beta_t, except at t = 0 where the posterior variance of t = 1 gives a better
        # decoder likelihood.
        fixed_large = np.append(self.posterior_variance[1], betas[1:]) if self.num_timesteps > 1 else betas
        self.fixed_large_variance = fixed_large
        self.fixed_large_log_variance = np.log(fixed_large)

    def respaced(self, respacing: Respacing) -> "GaussianDiffusion":
        """The same base process respaced anew (from the full schedule, whatever this one's spacing)."""
        return GaussianDiffusion(
            self.base_betas,
            space_timesteps(self.original_num_steps, respacing),
            learn_sigma=self.learn_sigma,
            sigma_small=self.sigma_small,
            rescale_learned_sigmas=self.rescale_learned_sigmas,
        )

    def __repr__(self):
        return (f"GaussianDiffusion(num_timesteps={self.num_timesteps}, original_num_steps={self.original_num_steps}, "
                f"learn_sigma={self.learn_sigma}, sigma_small={self.sigma_small})")

    # ----------------------------------------------------------------------------------------------- helpers

    def _table(self, name: str, device: torch.device) -> torch.Tensor:
        """A float64 schedule array on `device`, uploaded once per device."""
        key = (name, str(device))
        if key not in self._tensor_cache:
            self._tensor_cache[key] = torch.as_tensor(getattr(self, name), dtype=torch.float64, device=device)
        return self._tensor_cache[key]

    def _coef(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """schedule[name][t] as a (N, 1, ..., 1) tensor in the computation dtype of `like`."""
        # index_select rather than table[t]: advanced indexing is orders of magnitude slower on CPU for large batches.
        values = self._table(name, t.device).index_select(0, t).to(compute_dtype(like))
        return values.view(-1, *([1] * (like.ndim - 1)))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Original timesteps for indices of this (possibly respaced) process: what the model is called with."""
        return self._table_int(t.device).index_select(0, t.long()).to(t.dtype)

    def _table_int(self, device) -> torch.Tensor:
        key = ("timestep_map", str(device))
        if key not in self._tensor_cache:
            self._tensor_cache[key] = torch.as_tensor(self.timestep_map, device=device)
        return self._tensor_cache[key]

    def _run_model(self, model, x: torch.Tensor, t: torch.Tensor, model_kwargs) -> torch.Tensor:
        return model(x, self.model_timesteps(t), **(model_kwargs or {}))

    def _split_output(self, output: torch.Tensor, x: torch.Tensor):
        """(eps, v or None) from a model output, checking its channel count against the variance type."""
        channels = x.shape[1]
        wanted = 2 * channels if self.learn_sigma else channels
        if output.shape != (x.shape[0], wanted, *x.shape[2:]):
            kind = "learned-range variance (eps and v)" if self.learn_sigma else "fixed variance (eps only)"
            raise ValueError(
                f"model output has shape {tuple(output.shape)}, expected {(x.shape[0], wanted, *x.shape[2:])} for a "
                f"process with {kind}; create the diffusion with learn_sigma={not self.learn_sigma} if the model is so"
            )
        if self.learn_sigma:
            eps, v = torch.split(output, channels, dim=1)
            return eps, v
        return output, None

    # ----------------------------------------------------------------------------------------- forward process

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise."""
        if noise is None:
            noise = torch.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x_start shape {tuple(x_start.shape)}")
        return (self._coef("sqrt_alphas_cumprod", t, x_start) * x_start
                + self._coef("sqrt_one_minus_alphas_cumprod", t, x_start) * noise)

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = self._coef("posterior_mean_coef1", t, x_t) * x_start + self._coef("posterior_mean_coef2", t, x_t) * x_t
        return mean, self._coef("posterior_variance", t, x_t), self._coef("posterior_log_variance_clipped", t, x_t)

    def predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t - self._coef("sqrt_recipm1_alphas_cumprod", t, x_t) * eps

    def predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        return ((self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t - pred_xstart)
                / self._coef("sqrt_recipm1_alphas_cumprod", t, x_t))

    # ------------------------------------------------------------------------------------------ reverse process

    def _p_from_output(self, output: torch.Tensor, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool,
                       denoised_fn=None) -> dict:
        dtype = compute_dtype(x)
        eps, v = self._split_output(output, x)
        eps = eps.to(dtype)
        if v is not None:
            min_log = self._coef("posterior_log_variance_clipped", t, x)
            max_log = self._coef("log_betas", t, x)
            frac = (v.to(dtype) + 1) / 2  # v = -1 -> posterior variance, v = +1 -> beta_t
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            if self.sigma_small:
                variance_name, log_name = "posterior_variance", "posterior_log_variance_clipped"
            else:
                variance_name, log_name = "fixed_large_variance", "fixed_large_log_variance"
            # Kept as (N, 1, ..., 1) so later exp()/sqrt() run on N values, not on every element.
            variance = self._coef(variance_name, t, x)
            log_variance = self._coef(log_name, t, x)
        pred_xstart = self.predict_xstart_from_eps(x.to(dtype), t, eps)
        if denoised_fn is not None:
            pred_xstart = denoised_fn(pred_xstart)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x.to(dtype), t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_xstart": pred_xstart}

    def p_mean_variance(self, model, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = False,
                        denoised_fn=None, model_kwargs: Optional[dict] = None) -> dict:
        """The model's p(x_{t-1} | x_t): dict of "mean", "variance", "log_variance", "pred_xstart" (all shaped like x,
        in x's dtype). t holds indices of this process; the model sees the original timesteps.

        clip_denoised clamps pred_xstart to [-1, 1] (pixel-space models; leave off for latents).
        denoised_fn, if given, maps pred_xstart before clipping.
        """
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        out = self._p_from_output(self._run_model(model, x, t, model_kwargs), x, t, clip_denoised, denoised_fn)
        return {k: out[k].to(x.dtype).expand(x.shape) for k in ("mean", "variance", "log_variance", "pred_xstart")}

    # ----------------------------------------------------------------------------------------------- training

    def training_losses(self, model, x_start: torch.Tensor, t: torch.Tensor, model_kwargs: Optional[dict] = None,
                        noise: Optional[torch.Tensor] = None) -> dict:
        """Per-sample losses (N,): "mse" of the predicted noise, plus "vb" (the variational bound in bits, through the
        variance only: the mean is detached, as iDDPM's hybrid loss) when sigma is learned; "loss" is their sum."""
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        output = self._run_model(model, x_t, t, model_kwargs)
        eps, v = self._split_output(output, x_t)
        terms = {}
        if v is not None:
            frozen = torch.cat([eps.detach(), v], dim=1)
            terms["vb"] = self._vb_terms_bpd(frozen, x_start, x_t, t)
            if self.rescale_learned_sigmas:
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
        dtype = compute_dtype(x_start)
        terms["mse"] = mean_flat((noise.to(dtype) - eps.to(dtype)) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return {k: value.to(x_start.dtype) for k, value in terms.items()}

    def _vb_terms_bpd(self, output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """One term of the variational bound in bits per dimension: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)), or the
        decoder's negative log-likelihood of x_0 at t = 0."""
        dtype = compute_dtype(x_start)
        x_start = x_start.to(dtype)
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t.to(dtype), t)
        p = self._p_from_output(output, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, p["mean"], p["log_variance"])) / _LOG2
        log_scales = (0.5 * p["log_variance"]).expand(x_start.shape)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x_start, p["mean"], log_scales)) / _LOG2
        return torch.where(t == 0, nll, kl)

    # ------------------------------------------------------------------------------------------------ sampling

    def p_sample(self, model, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = False, denoised_fn=None,
                 model_kwargs: Optional[dict] = None, noise: Optional[torch.Tensor] = None) -> dict:
        """One ancestral (DDPM) step x_t -> x_{t-1}: {"sample", "pred_xstart"}. No noise is added at t = 0.
        noise: the fresh N(0, I) noise; default torch.randn_like(x), drawn after the model call as the reference does."""
        out = self._p_from_output(self._run_model(model, x, t, model_kwargs), x, t, clip_denoised, denoised_fn)
        if noise is None:
            noise = torch.randn_like(x)
        keep_noise = _not_last(t, x)
        sample = out["mean"] + keep_noise * torch.exp(0.5 * out["log_variance"]) * noise.to(out["mean"].dtype)
        return {"sample": sample.to(x.dtype), "pred_xstart": out["pred_xstart"].to(x.dtype)}

    def ddim_sample(self, model, x: torch.Tensor, t: torch.Tensor, clip_denoised: bool = False, denoised_fn=None,
                    model_kwargs: Optional[dict] = None, eta: float = 0.0, noise: Optional[torch.Tensor] = None) -> dict:
        """One DDIM step x_t -> x_{t-1} (Song et al., eq. 12); eta = 0 is deterministic, eta = 1 matches DDPM's
        posterior variance. noise (used only when eta > 0): default torch.randn_like(x)."""
        out = self._p_from_output(self._run_model(model, x, t, model_kwargs), x, t, clip_denoised, denoised_fn)
        xc = x.to(out["mean"].dtype)
        # eps is re-derived from the (possibly clipped) x_0 prediction so both stay consistent.
        eps = self.predict_eps_from_xstart(xc, t, out["pred_xstart"])
        alpha_bar = self._coef("alphas_cumprod", t, x)
        alpha_bar_prev = self._coef("alphas_cumprod_prev", t, x)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        sample = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        if eta != 0:
            if noise is None:
                noise = torch.randn_like(x)
            sample = sample + _not_last(t, x) * sigma * noise.to(sample.dtype)
        return {"sample": sample.to(x.dtype), "pred_xstart": out["pred_xstart"].to(x.dtype)}

    def p_sample_loop(self, model, shape, noise: Optional[torch.Tensor] = None, clip_denoised: bool = False,
                      denoised_fn=None, model_kwargs: Optional[dict] = None, device=None, progress: bool = False,
                      step_noise: Optional[StepNoise] = None) -> torch.Tensor:
        """Ancestral (DDPM) sampling over all steps of this process; returns the final x_0 samples.

        model: any callable model(x, t, **model_kwargs) (e.g. a DiCo, or its forward_with_cfg with cfg_scale in
            model_kwargs). noise: the initial x_T (default torch.randn(shape) on `device`, else the device of the
            model's parameters, else CPU).
        step_noise: optional step_noise(i, shape) -> Tensor, the fresh Gaussian noise of loop step i (i = 0 is the
            first step taken, at the highest t). Default: torch.randn_like, drawn at every step as the reference
            does, so a global seed reproduces its random stream. Give per-image generators here to make each sample
            independent of batch size and order.
        """
        final = None
        for final in self.p_sample_loop_progressive(model, shape, noise, clip_denoised, denoised_fn, model_kwargs,
                                                    device, progress, step_noise):
            pass
        return final["sample"]

    def p_sample_loop_progressive(self, model, shape, noise=None, clip_denoised: bool = False, denoised_fn=None,
                                  model_kwargs=None, device=None, progress: bool = False,
                                  step_noise: Optional[StepNoise] = None) -> Iterator[dict]:
        """p_sample_loop yielding {"sample", "pred_xstart", "t"} after every step."""
        def step(x, t, i):
            fresh = None if step_noise is None else _draw(step_noise, i, x)  # None: p_sample draws after the model
            return self.p_sample(model, x, t, clip_denoised, denoised_fn, model_kwargs, noise=fresh)
        yield from self._loop(step, model, shape, noise, device, progress)

    def ddim_sample_loop(self, model, shape, noise: Optional[torch.Tensor] = None, clip_denoised: bool = False,
                         denoised_fn=None, model_kwargs: Optional[dict] = None, device=None, progress: bool = False,
                         eta: float = 0.0, step_noise: Optional[StepNoise] = None) -> torch.Tensor:
        """DDIM sampling over all steps of this process (respace it, e.g. "ddim50", to take fewer steps).

        Same arguments as p_sample_loop. With eta = 0 no noise is used, so step_noise is never called (the default
        still draws torch.randn_like at every step, as the reference does, to keep the global random stream equal).
        """
        final = None
        for final in self.ddim_sample_loop_progressive(model, shape, noise, clip_denoised, denoised_fn, model_kwargs,
                                                       device, progress, eta, step_noise):
            pass
        return final["sample"]

    def ddim_sample_loop_progressive(self, model, shape, noise=None, clip_denoised: bool = False, denoised_fn=None,
                                     model_kwargs=None, device=None, progress: bool = False, eta: float = 0.0,
                                     step_noise: Optional[StepNoise] = None) -> Iterator[dict]:
        """ddim_sample_loop yielding {"sample", "pred_xstart", "t"} after every step."""
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")

        def step(x, t, i):
            fresh = None if step_noise is None or eta == 0 else _draw(step_noise, i, x)
            out = self.ddim_sample(model, x, t, clip_denoised, denoised_fn, model_kwargs, eta=eta, noise=fresh)
            if step_noise is None and eta == 0:
                torch.randn_like(x)  # unused, but the reference draws it: keeps the global random stream identical
            return out
        yield from self._loop(step, model, shape, noise, device, progress)

    def dpm_solver_sample_loop(self, model, shape, steps: int = 20, order: int = 2, noise: Optional[torch.Tensor] = None,
                               clip_denoised: bool = False, model_kwargs: Optional[dict] = None, device=None,
                               progress: bool = False, skip_type: str = "logSNR") -> torch.Tensor:
        """DPM-Solver++ (multistep, data prediction, deterministic) with `steps` model evaluations on this process's
        schedule; see dpm_solver.py. order 2 = DPM-Solver++(2M), 3 = (3M)."""
        return dpm_solver_plus_plus(self, model, shape, steps=steps, order=order, noise=noise,
                                    clip_denoised=clip_denoised, model_kwargs=model_kwargs, device=device,
                                    progress=progress, skip_type=skip_type)

    def _loop(self, step, model, shape, noise, device, progress) -> Iterator[dict]:
        x = initial_noise(model, shape, noise, device)
        indices = range(self.num_timesteps - 1, -1, -1)
        if progress:
            from tqdm.auto import tqdm  # only when asked: the library itself does not need tqdm

            indices = tqdm(indices)
        for i, index in enumerate(indices):
            t = torch.full((x.shape[0],), index, device=x.device, dtype=torch.long)
            with torch.no_grad():
                out = step(x, t, i)
            out["t"] = t
            yield out
            x = out["sample"]


def create_diffusion(respacing: Respacing = None, noise_schedule: str = "linear", learn_sigma: bool = True,
                     diffusion_steps: int = 1000, sigma_small: bool = False,
                     rescale_learned_sigmas: bool = False) -> GaussianDiffusion:
    """The DiT/DiCo diffusion: `diffusion_steps` steps of `noise_schedule`, respaced by `respacing` ("" or None: not
    respaced; "250"; "ddim50"; "10,15,20"; or a list of section counts)."""
    betas = named_beta_schedule(noise_schedule, diffusion_steps)
    kept = space_timesteps(diffusion_steps, respacing)
    return GaussianDiffusion(betas, kept, learn_sigma=learn_sigma, sigma_small=sigma_small,
                             rescale_learned_sigmas=rescale_learned_sigmas)


def _not_last(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1 where noise is added (t > 0), 0 at the final step, shaped to broadcast over x."""
    return (t != 0).to(compute_dtype(x)).view(-1, *([1] * (x.ndim - 1)))


def _draw(step_noise: Optional[StepNoise], i: int, x: torch.Tensor) -> torch.Tensor:
    if step_noise is None:
        return torch.randn_like(x)
    fresh = step_noise(i, tuple(x.shape))
    if tuple(fresh.shape) != tuple(x.shape):
        raise ValueError(f"step_noise({i}, shape) returned shape {tuple(fresh.shape)}, expected {tuple(x.shape)}")
    return fresh.to(device=x.device, dtype=x.dtype)
