"""MeanFlow (Geng et al., arXiv 2505.13447): a network for the average velocity over a time interval, trained
from scratch with the MeanFlow identity and sampled in one step (or a few).

Time convention, written once. The paper's time runs from data (0) to noise (1): z = (1 - tau) x + tau eps, and its
network averages v_paper = eps - x. dico's flow matching is SiT's: t = 1 - tau runs from noise (0) to data (1),
z_t = t x + (1 - t) eps, and models predict v = x - eps = -v_paper. Here the model u(z_t, t, r), called
`model(z, t, y, r=r)`, is the average of dico's v over [t, r], r >= t (toward the data):

    u(z_t, t, r) = 1 / (r - t) * integral_t^r v(z_s, s) ds,   so   z_r = z_t + (r - t) u      (paper: z_r = z_t - (t - r) u)

i.e. the paper's u with its sign flipped and its times mirrored (tau_t = 1 - t, tau_r = 1 - r). Differentiating
(r - t) u = integral_t^r v ds in t gives the MeanFlow identity in this direction:

    u = v + (r - t) (v . du/dz + du/dt)                                           (paper: u = v - (t - r)(v du/dz + du/dt))

and one step from noise is x = eps + u(eps, 0, 1) (paper: x = eps - u(eps, 1, 0)). At r = t the model is a flow
matching model: u(z, t, t) = v. The second time enters the network as r - t >= 0 through its own embedder, summed
with t's (the paper's (t, t - r) input, its best in the ablation; see dico.models.embedders.interval).

    t, r = draw_times(keys, logit_mean=-0.4, logit_std=1.0, interval_fraction=0.25)
    losses = meanflow_losses(model, x, t, r, noise, {"y": y})      # per sample, adaptive weight 1 / (|d|^2 + c)^p
    x = meanflow_sample(model_or_denoiser, noise, steps=1, y=y)
"""

import warnings

import torch

from ..randomness import PURPOSES, keyed_generator, keyed_randn
from ..transport import model_prediction


def draw_times(keys, logit_mean: float = -0.4, logit_std: float = 1.0, interval_fraction: float = 0.25,
               device=None):
    """Training times (t, r), each (B,), in dico's direction (0 noise, 1 data), t <= r.

    As the paper: two times drawn logit-normal in its direction (sigmoid(N(logit_mean, logit_std)) is the noise level
    tau), the larger noise level gives t and the smaller r; then a fraction 1 - interval_fraction of the samples get
    r = t (flow matching's samples). A sample's three numbers (two normals, one uniform) come from one generator keyed
    by (seed, PURPOSES["timestep"], step, position), so they depend on neither the batch nor the process count."""
    ts, rs = [], []
    for k in keys:
        generator = keyed_generator(k[0], PURPOSES["timestep"], *k[1:])
        normals = torch.randn(2, generator=generator, dtype=torch.float64)
        keep_interval = float(torch.rand(1, generator=generator, dtype=torch.float64)) < interval_fraction
        tau = torch.sigmoid(normals * logit_std + logit_mean)
        tau_t, tau_r = float(tau.max()), float(tau.min())
        ts.append(1.0 - tau_t)
        rs.append(1.0 - (tau_r if keep_interval else tau_t))
    return (torch.tensor(ts, dtype=torch.float32, device=device),
            torch.tensor(rs, dtype=torch.float32, device=device))


def expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def average_velocity_derivative(model, z, t, r, velocity, model_kwargs) -> torch.Tensor:
    """d/dt u(z_t, t, r) along the path dz/dt = velocity: the Jacobian-vector product of the network with tangents
    (velocity, 1, 0) for (z, t, r), by torch.func.jvp (forward-mode AD) through the real model. Under no_grad: the
    target is stop-gradient, so nothing of this call is kept for the backward pass. The plain module is
    differentiated (not a DDP wrapper, whose forward belongs to the gradient pass)."""
    network = getattr(model, "module", model)

    def u(z_, t_):
        return model_prediction(network, z_, t_, **model_kwargs, r=r)

    with torch.no_grad(), warnings.catch_warnings():
        # torch's own forward-AD decompositions are registered through torch.jit.script on first use, which torch
        # itself deprecates: a warning about torch, not about anything a user can change.
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=FutureWarning)
        _, derivative = torch.func.jvp(u, (z, t), (velocity, torch.ones_like(t)))
    return derivative


def meanflow_target(model, z, t, r, velocity, model_kwargs) -> torch.Tensor:
    """The stop-gradient target v + (r - t) du/dt (the MeanFlow identity in dico's direction, see above). The
    derivative is multiplied by r - t, so only the samples with r != t (a quarter by default) go through the JVP:
    the same target for a fraction of the forward-mode work."""
    target = velocity.detach().clone()
    apart = (r != t).nonzero().flatten()
    if len(apart):
        part = {k: v[apart] if torch.is_tensor(v) and v.shape[:1] == t.shape else v for k, v in model_kwargs.items()}
        derivative = average_velocity_derivative(model, z[apart], t[apart], r[apart], velocity[apart], part)
        target[apart] += expand(r[apart] - t[apart], derivative) * derivative.to(target.dtype)
    return target


def guided_velocity(model, z, t, velocity, model_kwargs, omega: float, kappa: float) -> torch.Tensor:
    """The paper's classifier-free guidance folded into the training target (its eq. 19 and the kappa variant of its
    appendix): v~ = omega v + kappa u(z, t, t | c) + (1 - omega - kappa) u(z, t, t | null), the conditional and
    unconditional instantaneous velocities from the model itself (no gradient), for samples with a class label;
    samples whose label was dropped keep v. The effective guidance scale at sampling is omega / (1 - kappa)."""
    if omega == 1.0 and kappa == 0.0:
        return velocity
    labels = model_kwargs.get("y")
    network = getattr(model, "module", model)
    if labels is None or set(model_kwargs) != {"y"} or network.num_classes == 0:
        raise ValueError("MeanFlow's guided target (meanflow_cfg_omega != 1 or meanflow_cfg_kappa != 0) needs a "
                         "class-conditional model")
    null = torch.full_like(labels, network.num_classes)
    with torch.no_grad():
        both = model_prediction(network, torch.cat([z, z]), torch.cat([t, t]), y=torch.cat([labels, null]),
                                r=torch.cat([t, t]))
        cond, uncond = both.chunk(2)
    guided = omega * velocity + kappa * cond + (1 - omega - kappa) * uncond
    conditional = expand(labels != network.num_classes, z).bool()
    return torch.where(conditional, guided, velocity).detach()


def meanflow_losses(model, x, t, r, noise, model_kwargs, weight_power: float = 1.0, weight_eps: float = 1e-3,
                    omega: float = 1.0, kappa: float = 0.0) -> torch.Tensor:
    """Per-sample MeanFlow loss (B,) on data x at times (t, r) with noise `noise`:
    sg(w) * |u - sg(u_tgt)|^2, |.|^2 the mean over a sample's elements (as flow matching's loss) and the paper's
    adaptive weight w = 1 / (|u - u_tgt|^2 + c)^p (p = 0: the plain squared error; with r = t that is exactly flow
    matching's loss, since then u_tgt = v)."""
    z = expand(t, x) * x + (1 - expand(t, x)) * noise
    velocity = guided_velocity(model, z, t, x - noise, model_kwargs, omega, kappa)
    target = meanflow_target(model, z, t, r, velocity, model_kwargs)
    u = model_prediction(model, z, t, **model_kwargs, r=r)
    squared = ((u.float() - target.float()) ** 2).mean(dim=tuple(range(1, x.ndim)))
    if weight_power == 0:
        return squared
    weight = 1.0 / (squared.detach() + weight_eps) ** weight_power
    return weight * squared


def keyed_losses(model, x, model_kwargs, keys, *, logit_mean=-0.4, logit_std=1.0, interval_fraction=0.25,
                 weight_power=1.0, weight_eps=1e-3, omega=1.0, kappa=0.0) -> torch.Tensor:
    """meanflow_losses with (t, r) and the noise drawn from keys (seed, step, position): the noise by
    (seed, PURPOSES["noise"], step, position), as DDPM's and flow matching's training."""
    t, r = draw_times(keys, logit_mean, logit_std, interval_fraction, x.device)
    noise = keyed_randn([(k[0], PURPOSES["noise"], *k[1:]) for k in keys], x.shape[1:], x.device, x.dtype)
    return meanflow_losses(model, x, t, r, noise, model_kwargs, weight_power, weight_eps, omega, kappa)


def time_points(steps: int) -> list:
    """The uniform grid 0 = t_0 < ... < t_steps = 1 (flow time) a `steps`-step sampler jumps along."""
    return torch.linspace(0, 1, steps + 1, dtype=torch.float64).tolist()


def meanflow_step(model, z, t: float, r: float, **model_kwargs) -> torch.Tensor:
    """One jump z_r = z_t + (r - t) u(z_t, t, r). `model` is a network or dico's Denoiser (guided)."""
    n = len(z)
    tt = torch.full((n,), t, dtype=torch.float32, device=z.device)
    rr = torch.full((n,), r, dtype=torch.float32, device=z.device)
    u = model(z, tt, **model_kwargs, r=rr)
    return z + (r - t) * u[:, : z.shape[1]].to(z.dtype)


@torch.no_grad()
def meanflow_sample(model, noise, steps: int = 1, **model_kwargs) -> torch.Tensor:
    """Samples from noise in `steps` jumps along the uniform grid: steps model evaluations (one: x = eps + u(eps, 0, 1))."""
    points = time_points(steps)
    z = noise
    for t, r in zip(points[:-1], points[1:]):
        z = meanflow_step(model, z, t, r, **model_kwargs)
    return z
