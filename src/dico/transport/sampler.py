"""Sampling a Transport: probability-flow ODE (through torchdiffeq), SDE (Euler-Maruyama or Heun), ODE likelihood;
plus the two knobs dico's sampler adds around them, a timestep shift and a guidance interval.

As in SiT, each `Sampler.sample_*` returns a function `(z, model, **model_kwargs)`; the last element of what it
returns is the result (the sample; for the likelihood, the latent reached from the data).
"""

import torch
from torchdiffeq import odeint

from ..options import check_steps
from ..randomness import StepNoise, keyed_generator
from .paths import VPPath, expand_like
from .transport import TRANSPORT_PURPOSES, Transport

LAST_STEPS = (None, "Mean", "Tweedie", "Euler")
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams")
ODE_METHODS = FIXED_METHODS + ADAPTIVE_METHODS  # torchdiffeq's, less scipy_solver (scipy's own steps, on the CPU)
SDE_METHODS = ("Euler", "Heun")


def check_method(sampler: str, method: str) -> None:
    """A one-line ValueError listing what a flow model samples with, for a method its sampler does not have."""
    if method not in (ODE_METHODS if sampler == "ode" else SDE_METHODS):
        raise ValueError(f"method {method!r} cannot sample a flow model with --sampler {sampler}; --sampler ode takes "
                         f"{', '.join(ODE_METHODS)}; --sampler sde takes {', '.join(SDE_METHODS)}")


def shift_time(t, shift: float):
    """Timestep shift t' = shift * t / (1 + (shift - 1) * t), with t = 1 at the data end (LightningDiT's form).

    shift < 1 moves the grid towards the noise end (more steps at high noise, as higher resolutions want);
    SD3's shift s, written for time running from data to noise, is shift = 1 / s here. shift = 1 changes nothing.
    """
    if shift <= 0:
        raise ValueError(f"timestep shift must be positive, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def time_grid(t0: float, t1: float, num_steps: int, shift: float = 1.0, dtype=torch.float32) -> torch.Tensor:
    """`num_steps` times from t0 to t1, evenly spaced (SiT), then shifted within [min, max] of the interval."""
    if check_steps(num_steps, "num_steps") < 2:
        raise ValueError(f"a time grid needs at least 2 points, got num_steps={num_steps}")
    t = torch.linspace(t0, t1, num_steps, dtype=dtype)
    if shift != 1.0:
        lo, hi = min(t0, t1), max(t0, t1)
        t = lo + (hi - lo) * shift_time((t - lo) / (hi - lo), shift)
    return t


def keyed_rademacher(keys, shape, device=None, dtype=torch.float32) -> torch.Tensor:
    """One +-1 tensor of `shape` per (seed, index) key: the probe of Hutchinson's divergence estimate."""
    probes = [torch.randint(0, 2, shape, generator=keyed_generator(k[0], TRANSPORT_PURPOSES["likelihood_probe"],
                                                                   *k[1:])) for k in keys]
    return (torch.stack(probes) * 2 - 1).to(device=device, dtype=dtype)


def _grid_dtype(x: torch.Tensor):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class Sampler:
    """The samplers of a Transport (SiT's `Sampler`)."""

    def __init__(self, transport: Transport):
        self.transport = transport

    # --------------------------------------------------------------------------------------------------- ODE
    def sample_ode(self, *, sampling_method: str = "dopri5", num_steps: int = 50, atol: float = 1e-6,
                   rtol: float = 1e-3, reverse: bool = False, shift: float = 1.0):
        """Integrate the probability-flow ODE from noise (t0) to data (t1), or back with reverse=True.

        sampling_method: a torchdiffeq method but scipy_solver (ODE_METHODS: "euler", "midpoint", "rk4", "dopri5", ...).
        num_steps: grid points including both ends. Fixed-step methods take num_steps - 1 steps on the grid;
            adaptive ones choose their own steps and report the state at the grid points. The same holds for the
            shifted grid: a shift changes fixed-step methods' steps and only where adaptive ones report.
        atol, rtol: tolerances of adaptive methods.
        Returns fn(z, model, **model_kwargs) -> (num_steps, *z.shape) states; [-1] is the sample.
        """
        check_method("ode", sampling_method)
        transport = self.transport
        t0, t1 = transport.interval(sampling=True, reverse=reverse)

        @torch.no_grad()
        def sample(z, model, **model_kwargs):
            t = time_grid(t0, t1, num_steps, shift, _grid_dtype(z)).to(z.device)

            def velocity(time, x):
                return transport.velocity(x, torch.ones(x.shape[0], device=x.device, dtype=t.dtype) * time, model,
                                          **model_kwargs)

            options = None
            if transport.singular_at_data_end and sampling_method in ADAPTIVE_METHODS and not reverse:
                # Adaptive steps may overshoot the last time and interpolate back; past t = 1 a VP noise model
                # is undefined (SiT's samples turn NaN), so make the solver step onto t1 instead.
                options = {"step_t": t[-1:]}
            # Tolerances as one-element lists, as SiT passes them: torchdiffeq then holds them as float32 tensors,
            # which moves adaptive steps in the last bits (and would move our samples off SiT's).
            return odeint(velocity, z, t, method=sampling_method, atol=[atol], rtol=[rtol], options=options)

        return sample

    def sample_ode_likelihood(self, *, sampling_method: str = "dopri5", num_steps: int = 50, atol: float = 1e-6,
                              rtol: float = 1e-3, divergence: str = "hutchinson"):
        """log p(x) of data x under the model's probability flow: integrate x back to the noise end while
        accumulating the divergence of the velocity (instantaneous change of variables), then add log N(z; 0, I).

        divergence: "hutchinson" (unbiased estimate e^T (dv/dx) e with one +-1 probe e held fixed through the solve,
            so adaptive step control sees a deterministic ODE) or "exact" (one backward pass per dimension: small
            data only).
        Returns fn(x, model, *, probe=None, **model_kwargs) -> (logp (B,), z); probe is the +-1 tensor shaped like
        x (keyed_rademacher for per-sample seeds), drawn from torch's global generator when not given.
        """
        if divergence not in ("hutchinson", "exact"):
            raise ValueError(f"divergence must be 'hutchinson' or 'exact', got {divergence!r}")
        transport = self.transport
        t0, t1 = transport.interval(sampling=True)  # of s = 1 - t, SiT's variable (the model sees t = 1 - s)
        if transport.singular_at_data_end:
            t0, t1 = 1 - t1, 1 - t0

        def sample(x, model, *, probe=None, **model_kwargs):
            if divergence == "hutchinson" and probe is None:
                probe = (torch.randint(0, 2, x.shape) * 2 - 1).to(x)
            s = time_grid(t0, t1, num_steps, dtype=_grid_dtype(x)).to(x.device)

            def backward_flow(time, state):
                x_s, _ = state
                t = torch.ones(x_s.shape[0], device=x_s.device, dtype=s.dtype) * (1 - time)  # s runs data -> noise
                with torch.enable_grad():
                    x_s = x_s.detach().requires_grad_(True)
                    v = transport.velocity(x_s, t, model, **model_kwargs)
                    if divergence == "hutchinson":
                        grad = torch.autograd.grad((v * probe).sum(), x_s)[0]
                        div = (grad * probe).sum(dim=tuple(range(1, x_s.dim())))
                    else:
                        flat_v, div = v.flatten(1), torch.zeros(x_s.shape[0], device=x_s.device, dtype=v.dtype)
                        for i in range(flat_v.shape[1]):
                            grad = torch.autograd.grad(flat_v[:, i].sum(), x_s, retain_graph=True)[0]
                            div = div + grad.flatten(1)[:, i]
                return -v.detach(), div.detach()

            start = (x, torch.zeros(x.shape[0], device=x.device, dtype=x.dtype))
            z, delta_logp = odeint(backward_flow, start, s, method=sampling_method, atol=[atol] * 2, rtol=[rtol] * 2)
            z, delta_logp = z[-1], delta_logp[-1]
            return transport.prior_logp(z) - delta_logp, z

        return sample

    # --------------------------------------------------------------------------------------------------- SDE
    def sample_sde(self, *, sampling_method: str = "Euler", diffusion_form: str = "SBDM", diffusion_norm: float = 1.0,
                   last_step: str | None = "Mean", last_step_size: float = 0.04, num_steps: int = 250,
                   shift: float = 1.0):
        """Integrate the reverse-time SDE dx = [v + D(t) score] dt + sqrt(2 D(t)) dW from noise to data.

        sampling_method: "Euler" (Euler-Maruyama) or "Heun" (noise first, then a Heun step of the drift).
        diffusion_form, diffusion_norm: D(t) (see paths.DIFFUSION_FORMS); "SBDM" is the SDE whose marginals match
            the path. SiT's command line defaults to "sigma"; its library, like this one, to "SBDM".
        last_step: a final noise-free step from t1 = 1 - last_step_size to the data end: "Mean" (SDE drift),
            "Euler" (ODE drift), "Tweedie" (denoised estimate) or None (stop at 1 - sample_eps).
        num_steps: SiT's count: num_steps - 1 SDE steps plus the last step.
        Returns fn(z, model, *, step_noise=None, **model_kwargs) -> list of num_steps states; [-1] is the sample.
        step_noise(i, shape) gives the N(0, I) noise of step i (per-image keyed noise in dico's sampler); without
        it, torch's global generator draws it.
        """
        check_method("sde", sampling_method)
        if last_step not in LAST_STEPS:
            raise ValueError(f"unknown last step {last_step!r}; valid: None, 'Mean', 'Tweedie', 'Euler'")
        if last_step is None:
            last_step_size = 0.0
        transport, path = self.transport, self.transport.path
        t0, t1 = transport.interval(sampling=True, sde=True, diffusion_form=diffusion_form,
                                    last_step_size=last_step_size)
        if t0 >= t1:
            raise ValueError(f"the SDE runs forward in time; got the interval [{t0}, {t1}]")
        if diffusion_form == "SBDM" and t0 == 0 and not isinstance(path, VPPath):
            raise ValueError(f"the SBDM diffusion is infinite at t = 0 on the {transport.path_type} path: use "
                             f"create_transport(..., sample_eps=...) > 0 with a noise/score model, or another "
                             f"diffusion_form such as 'sigma' (SiT's command-line default)")

        def sde_drift(x, t, model, model_kwargs):
            velocity, score = transport.velocity_and_score(x, t, model, **model_kwargs)
            return velocity + path.diffusion(x, t, diffusion_form, diffusion_norm) * score

        def last(x, t, model, model_kwargs):
            if last_step is None:
                return x
            if last_step == "Mean":
                return x + sde_drift(x, t, model, model_kwargs) * last_step_size
            velocity, score = transport.velocity_and_score(x, t, model, **model_kwargs)
            if last_step == "Euler":
                return x + velocity * last_step_size
            alpha_t, _ = path.alpha(expand_like(t, x))  # Tweedie: E[x1 | x_t] from the score
            sigma_t, _ = path.sigma(expand_like(t, x))
            return x / alpha_t + sigma_t**2 / alpha_t * score

        @torch.no_grad()
        def sample(z, model, *, step_noise: StepNoise | None = None, **model_kwargs):
            grid = time_grid(t0, t1, num_steps, shift, _grid_dtype(z)).to(z.device)
            ones = torch.ones(z.shape[0], device=z.device, dtype=grid.dtype)
            x, states = z, []
            for i in range(num_steps - 1):
                noise = step_noise(i, tuple(z.shape)) if step_noise is not None else torch.randn(z.shape)
                noise = noise.to(z)
                t, dt = ones * grid[i], grid[i + 1] - grid[i]
                dw = noise * torch.sqrt(dt)
                diffusion = path.diffusion(x, t, diffusion_form, diffusion_norm)
                if sampling_method == "Euler":
                    x = x + sde_drift(x, t, model, model_kwargs) * dt + torch.sqrt(2 * diffusion) * dw
                else:  # Heun: the noise first, then a Heun step of the drift (SiT's order)
                    x_hat = x + torch.sqrt(2 * diffusion) * dw
                    k1 = sde_drift(x_hat, t, model, model_kwargs)
                    k2 = sde_drift(x_hat + dt * k1, ones * grid[i + 1], model, model_kwargs)
                    x = x_hat + 0.5 * dt * (k1 + k2)
                states.append(x)
            states.append(last(x, ones * t1, model, model_kwargs))
            return states

        return sample



def sample_loop(transport: Transport, model, z: torch.Tensor, *, sampler: str = "ode", method: str | None = None,
                num_steps: int | None = None, atol: float = 1e-6, rtol: float = 1e-3, shift: float = 1.0,
                diffusion_form: str = "sigma", diffusion_norm: float = 1.0, last_step: str | None = "Mean",
                last_step_size: float = 0.04, step_noise: StepNoise | None = None,
                model_kwargs: dict | None = None) -> torch.Tensor:
    """The final sample from noise z: one entry point for both samplers, with the defaults of SiT's sample.py
    (ODE: dopri5, 50 points; SDE: Euler, 250 steps, diffusion form "sigma", mean last step of 0.04).

    step_noise feeds the SDE's per-step noise (see Sampler.sample_sde) and is ignored by the ODE, which has none.
    """
    model_kwargs = model_kwargs or {}
    if sampler == "ode":
        fn = Sampler(transport).sample_ode(sampling_method=method or "dopri5", num_steps=num_steps or 50, atol=atol,
                                           rtol=rtol, shift=shift)
        return fn(z, model, **model_kwargs)[-1]
    if sampler == "sde":
        fn = Sampler(transport).sample_sde(sampling_method=method or "Euler", diffusion_form=diffusion_form,
                                           diffusion_norm=diffusion_norm, last_step=last_step,
                                           last_step_size=last_step_size, num_steps=num_steps or 250, shift=shift)
        return fn(z, model, step_noise=step_noise, **model_kwargs)[-1]
    raise ValueError(f"unknown sampler {sampler!r}; valid: 'ode', 'sde'")
