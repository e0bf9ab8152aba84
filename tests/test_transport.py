"""dico.transport: SiT's flow-matching objective and samplers.

Reference-free tests use Gaussian data N(mu, s^2), for which every path's velocity, noise and score fields are known
in closed form; the side-by-side tests compare against SiT's own `transport/` package when SIT_PATH points at a SiT
checkout (skipped otherwise).
"""

import importlib.util
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from dico.conditioning import ClassLabels
from dico.objectives import FlowObjective
from dico.randomness import PURPOSES, keyed_randn
from dico.sampling.guided import Denoiser, Guidance
from dico.transport import Sampler, create_transport, keyed_rademacher, sample_loop, shift_time, time_grid

PATH_TYPES = ("Linear", "GVP", "VP")
PREDICTIONS = ("velocity", "noise", "score")


def coefficients(path_type, t):
    """(alpha, d alpha, sigma, d sigma) of each path, written out independently of the library."""
    if path_type == "Linear":
        return t, torch.ones_like(t), 1 - t, -torch.ones_like(t)
    if path_type == "GVP":
        h = math.pi / 2
        return torch.sin(h * t), h * torch.cos(h * t), torch.cos(h * t), -h * torch.sin(h * t)
    beta_min, beta_max = 0.1, 20.0
    log_alpha = -0.25 * (1 - t) ** 2 * (beta_max - beta_min) - 0.5 * (1 - t) * beta_min
    alpha = torch.exp(log_alpha)
    d_alpha = alpha * (0.5 * (1 - t) * (beta_max - beta_min) + 0.5 * beta_min)
    sigma = torch.sqrt(1 - alpha**2)
    return alpha, d_alpha, sigma, -alpha * d_alpha / sigma


class GaussianFields:
    """Exact fields of data N(mu, s^2) (per element) carried along a path: x_t ~ N(alpha mu, alpha^2 s^2 + sigma^2)."""

    def __init__(self, path_type, mu, s):
        self.path_type, self.mu, self.s = path_type, mu, s

    def _terms(self, x, t):
        a, da, sg, dsg = (c.view(-1, *[1] * (x.dim() - 1)) for c in coefficients(self.path_type, t.to(x.dtype)))
        return a, da, sg, dsg, a**2 * self.s**2 + sg**2

    def velocity(self, x, t, **_):  # E[d alpha x1 + d sigma x0 | x_t = x]
        a, da, sg, dsg, var = self._terms(x, t)
        # sigma * d sigma, which for VP is -alpha * d alpha (finite at t = 1, where sigma = 0 and d sigma is not)
        sg_dsg = -a * da if self.path_type == "VP" else sg * dsg
        return da * self.mu + (da * a * self.s**2 + sg_dsg) / var * (x - a * self.mu)

    def noise(self, x, t, **_):  # E[x0 | x_t = x]
        a, _, sg, _, var = self._terms(x, t)
        return sg / var * (x - a * self.mu)

    def score(self, x, t, **_):
        a, _, _, _, var = self._terms(x, t)
        return -(x - a * self.mu) / var

    def model(self, prediction):
        return getattr(self, prediction)


def ode_error(method, num_steps, mu=1.0, s=0.5, shift=1.0, path_type="Linear"):
    """Max error of a fixed-step ODE sample of velocity models against the exact flow map z -> mu + s z."""
    z = torch.linspace(-2, 2, 9, dtype=torch.float64).view(9, 1)
    fields = GaussianFields(path_type, mu, s)
    x = Sampler(create_transport(path_type)).sample_ode(sampling_method=method, num_steps=num_steps, shift=shift)(
        z, fields.velocity)[-1]
    return (x - (mu + s * z)).abs().max().item()


# ------------------------------------------------------------------------------------------------ configuration
def test_eps_defaults_follow_sit_rules():
    for path in ("Linear", "GVP"):
        assert (create_transport(path).train_eps, create_transport(path).sample_eps) == (0.0, 0.0)
        # velocity on Linear/GVP is stable on [0, 1]: given margins are overridden, as in SiT
        assert create_transport(path, train_eps=0.1, sample_eps=0.1).interval() == (0.0, 1.0)
        for prediction in ("noise", "score"):
            transport = create_transport(path, prediction)
            assert (transport.train_eps, transport.sample_eps) == (1e-3, 1e-3)
            assert transport.interval() == (1e-3, 1 - 1e-3)
    for prediction in PREDICTIONS:
        transport = create_transport("VP", prediction)
        assert (transport.train_eps, transport.sample_eps) == (1e-5, 1e-3)
        assert transport.interval() == (0.0, 1 - 1e-5)
        assert transport.interval(sampling=True) == (0.0, 1 - 1e-3)
    given = create_transport("Linear", "noise", train_eps=0.01, sample_eps=0.02)
    assert given.interval() == (0.01, 0.99) and given.interval(sampling=True) == (0.02, 0.98)
    # an SDE on Linear/GVP: SBDM starts eps after the noise end, other forms at 0; last step shortens the end
    sde = create_transport("Linear", "noise")
    assert sde.interval(sampling=True, sde=True, last_step_size=0.04) == (1e-3, 0.96)
    assert create_transport().interval(sampling=True, sde=True, diffusion_form="sigma", last_step_size=0.04) == (
        0.0, 0.96)
    assert sde.interval(sampling=True, reverse=True) == pytest.approx((1 - 1e-3, 1e-3))


def test_invalid_configurations_are_refused():
    with pytest.raises(ValueError, match="path"):
        create_transport("Cosine")
    with pytest.raises(ValueError, match="prediction"):
        create_transport("Linear", "x0")
    with pytest.raises(ValueError, match="loss weight"):
        create_transport("Linear", "velocity", "likelihood")  # SiT silently ignores it
    with pytest.raises(ValueError, match="time sampling"):
        create_transport(time_sampling="beta")
    with pytest.raises(ValueError, match="SBDM"):  # SiT returns NaN samples here
        Sampler(create_transport()).sample_sde()
    with pytest.raises(ValueError, match="'RK4' cannot sample a flow model with --sampler sde; .* takes Euler, Heun$"):
        Sampler(create_transport()).sample_sde(sampling_method="RK4", diffusion_form="sigma")
    for method in ("ddim", "scipy_solver"):  # a DDPM method; torchdiffeq's scipy wrapper (its own steps, no grid)
        with pytest.raises(ValueError, match=f"'{method}' cannot sample a flow model with --sampler ode; --sampler "
                                             "ode takes euler, midpoint, .*, adaptive_heun; --sampler sde"):
            Sampler(create_transport()).sample_ode(sampling_method=method)


def test_flow_objective_round_trips_and_builds_its_transport():
    objective = FlowObjective(path="GVP", prediction="noise", loss_weight="likelihood", time_sampling="logit-normal",
                              logit_mean=0.5, logit_std=0.8)
    data = objective.to_dict()
    assert data["kind"] == "flow"
    assert FlowObjective.from_dict(data) == objective
    transport = objective.transport()
    assert (transport.path_type, transport.prediction, transport.loss_weight) == ("GVP", "noise", "likelihood")
    assert (transport.time_sampling, transport.logit_mean, transport.logit_std) == ("logit-normal", 0.5, 0.8)
    with pytest.raises(ValueError, match="kind"):
        FlowObjective.from_dict({"kind": "ddpm", "noise_schedule": "linear"})
    with pytest.raises(ValueError, match="unknown"):
        FlowObjective.from_dict({"kind": "flow", "sigma_min": 0.1})
    with pytest.raises(ValueError):
        FlowObjective(prediction="velocity", loss_weight="velocity")


# ----------------------------------------------------------------------------------------------------- paths
@pytest.mark.parametrize("path_type", PATH_TYPES)
def test_path_coefficients_and_target_velocity(path_type):
    transport = create_transport(path_type)
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    a, da, sg, dsg = coefficients(path_type, t)
    assert torch.allclose(transport.path.alpha(t)[0] * torch.ones_like(t), a)
    assert torch.allclose(transport.path.alpha(t)[1] * torch.ones_like(t), da)
    assert torch.allclose(transport.path.sigma(t)[0] * torch.ones_like(t), sg)
    assert torch.allclose(transport.path.sigma(t)[1] * torch.ones_like(t), dsg)
    x0, x1 = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 3, dtype=torch.float64)
    h = 1e-6  # the target velocity is the time derivative of the interpolation
    numeric = (transport.path.interpolate(t + h, x0, x1) - transport.path.interpolate(t - h, x0, x1)) / (2 * h)
    assert torch.allclose(transport.path.target_velocity(t, x0, x1), numeric, atol=1e-6)


@pytest.mark.parametrize("path_type", PATH_TYPES)
def test_velocity_noise_and_score_parameterisations_agree(path_type):
    """The exact noise, score and velocity models of Gaussian data give one probability-flow velocity, and the
    path's conversions map the exact fields into each other."""
    fields = GaussianFields(path_type, mu=0.7, s=1.3)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    t = torch.linspace(0.02, 0.97, 6, dtype=torch.float64)
    velocity = fields.velocity(x, t)
    for prediction in PREDICTIONS:
        transport = create_transport(path_type, prediction)
        assert torch.allclose(transport.velocity(x, t, fields.model(prediction)), velocity, rtol=1e-9, atol=1e-9)
        v, score = transport.velocity_and_score(x, t, fields.model(prediction))
        assert torch.allclose(v, velocity, rtol=1e-9, atol=1e-9)
        assert torch.allclose(score, fields.score(x, t), rtol=1e-9, atol=1e-9)
    path = create_transport(path_type).path
    assert torch.allclose(path.score_from_velocity(velocity, x, t), fields.score(x, t), rtol=1e-9, atol=1e-9)
    assert torch.allclose(path.noise_from_velocity(velocity, x, t), fields.noise(x, t), rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------------------ loss
def keys_for(n, seed=0, step=3):
    return [(seed, step, p) for p in range(n)]


@pytest.mark.parametrize("path_type", PATH_TYPES)
@pytest.mark.parametrize("prediction,loss_weight", [("velocity", None), ("noise", None), ("noise", "likelihood"),
                                                    ("score", "velocity")])
def test_loss_of_the_exact_model_is_its_conditional_variance(path_type, prediction, loss_weight):
    """At a fixed t the exact model's expected loss is the conditional variance of its target given x_t."""
    mu, s, t_value, n, dims = 0.5, 0.8, 0.6, 2000, 8
    fields = GaussianFields(path_type, mu, s)
    transport = create_transport(path_type, prediction, loss_weight)
    x1 = mu + s * keyed_randn([(1, PURPOSES["data"], i) for i in range(n)], (dims,), dtype=torch.float64)
    t = torch.full((n,), t_value, dtype=torch.float64)
    loss = transport.training_losses(fields.model(prediction), x1, t=t, keys=keys_for(n))["loss"].mean().item()
    a, da, sg, dsg = (c.item() for c in coefficients(path_type, t[:1]))
    var = a**2 * s**2 + sg**2
    if prediction == "velocity":  # Var(da x1 + dsg x0 | x_t)
        expected = da**2 * s**2 + dsg**2 - (da * a * s**2 + dsg * sg) ** 2 / var
    else:  # Var(x0 | x_t), times sigma^2 for the score target -x0 / sigma scaled back by sigma
        expected = 1 - sg**2 / var
        g = (da / a) * sg**2 - sg * dsg
        expected *= {None: 1.0, "likelihood": g / sg**2, "velocity": (g / sg) ** 2}[loss_weight]
    assert loss == pytest.approx(expected, rel=0.04)


def test_loss_of_a_known_model_in_closed_form():
    """A zero velocity model's loss is mean((x1 - x0)^2) per sample, exactly; a model with learned sigma (2C output
    channels) is read through its first C channels."""
    transport = create_transport()
    x1, x0 = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    t = torch.rand(4)
    zero = transport.training_losses(lambda x, t: torch.zeros_like(x), x1, t=t, x0=x0)
    assert torch.allclose(zero["loss"], ((x1 - x0) ** 2).mean(dim=(1, 2, 3)))
    def half(x, t):
        return 0.5 * x + t.view(-1, 1, 1, 1)

    def learned_sigma(x, t):
        return torch.cat([half(x, t), torch.full_like(x, 7.0)], dim=1)
    plain = transport.training_losses(half, x1, t=t, x0=x0)
    doubled = transport.training_losses(learned_sigma, x1, t=t, x0=x0)
    assert torch.equal(plain["loss"], doubled["loss"]) and doubled["pred"].shape == x1.shape
    with pytest.raises(ValueError, match="channels"):
        transport.training_losses(lambda x, t: torch.cat([x, x, x], dim=1), x1, t=t, x0=x0)


def test_keyed_draws_do_not_depend_on_the_batch():
    transport = create_transport("Linear", "noise")  # t in [1e-3, 1 - 1e-3]
    x1 = torch.randn(6, 2, 4, 4)
    keys = keys_for(6)
    t, x0 = transport.draw(x1, keys)
    t_part, x0_part = transport.draw(x1[2:5], keys[2:5])
    assert torch.equal(t[2:5], t_part) and torch.equal(x0[2:5], x0_part)
    assert t.min() >= 1e-3 and t.max() <= 1 - 1e-3
    assert not torch.equal(transport.draw(x1, keys_for(6, step=4))[0], t)
    # given t or x0 are used as given; the other is drawn from the keys
    fixed_t = torch.full((6,), 0.5)

    def model(x, t):
        return 0.5 * x

    losses = transport.training_losses(model, x1, t=fixed_t, keys=keys)
    expected = transport.training_losses(model, x1, t=fixed_t, x0=x0)
    assert torch.equal(losses["loss"], expected["loss"])
    with pytest.raises(ValueError, match="keys"):
        transport.draw(x1, keys[:3])


def test_time_sampling_uniform_and_logit_normal():
    n = 4000
    x1 = torch.zeros(n, 1)
    uniform = create_transport().draw(x1, keys_for(n))[0]
    assert uniform.mean().item() == pytest.approx(0.5, abs=0.02) and uniform.std().item() == pytest.approx(
        1 / math.sqrt(12), abs=0.01)
    transport = create_transport(time_sampling="logit-normal", logit_mean=0.4, logit_std=0.7)
    t = transport.draw(x1, keys_for(n))[0]
    logit = torch.log(t / (1 - t))
    assert logit.mean().item() == pytest.approx(0.4, abs=0.05)
    assert logit.std().item() == pytest.approx(0.7, abs=0.03)
    narrow = create_transport("VP", time_sampling="logit-normal", logit_std=3.0).draw(x1, keys_for(n))[0]
    assert narrow.max().item() <= 1 - 1e-5  # mapped into the training interval


# ------------------------------------------------------------------------------------------------ ODE sampling
@pytest.mark.parametrize("method", ["euler", "midpoint", "heun2", "rk4", "dopri5"])
def test_ode_transports_noise_to_the_gaussian_data(method):
    num_steps = {"euler": 200, "dopri5": 2}.get(method, 30)
    tolerance = {"euler": 1e-2, "heun2": 1e-3}.get(method, 1e-4)
    if method == "dopri5":
        z = torch.linspace(-2, 2, 9, dtype=torch.float64).view(9, 1)
        x = Sampler(create_transport()).sample_ode(atol=1e-9, rtol=1e-9, num_steps=num_steps)(
            z, GaussianFields("Linear", 1.0, 0.5).velocity)[-1]
        assert (x - (1.0 + 0.5 * z)).abs().max().item() < tolerance
    else:
        assert ode_error(method, num_steps) < tolerance


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("heun2", 2), ("heun3", 3), ("rk4", 4)])
def test_fixed_step_methods_converge_at_their_order(method, order):
    # On the GVP path: on the linear one the Gaussian flow's variance is quadratic in t, which cancels the midpoint
    # rule's leading error term (it converges at order 3 there).
    coarse, fine = (ode_error(method, n, mu=0.5, s=0.8, path_type="GVP") for n in (17, 33))  # 16 and 32 steps
    assert math.log2(coarse / fine) == pytest.approx(order, abs=0.2)


@pytest.mark.parametrize("path_type", ["GVP", "VP"])
@pytest.mark.parametrize("prediction", ["noise", "score"])
def test_ode_of_noise_and_score_models_reaches_the_data(path_type, prediction):
    """Other paths and predictions integrate over [0 or eps, 1 - eps]: the sample is the exact flow's at t1."""
    mu, s = 0.5, 0.8
    transport = create_transport(path_type, prediction)
    t0, t1 = transport.interval(sampling=True)
    z = torch.linspace(-2, 2, 7, dtype=torch.float64).view(7, 1)
    x = Sampler(transport).sample_ode(atol=1e-7, rtol=1e-7, num_steps=2)(
        z, GaussianFields(path_type, mu, s).model(prediction))
    # the flow keeps the standardised coordinate: x_t = alpha mu + sqrt(var_t) z' with z' fixed from t0 on
    a0, _, sg0, _ = coefficients(path_type, torch.tensor([t0], dtype=torch.float64))
    a1, _, sg1, _ = coefficients(path_type, torch.tensor([t1], dtype=torch.float64))
    z_std = (z - a0 * mu) / torch.sqrt(a0**2 * s**2 + sg0**2)
    assert torch.allclose(x[-1], a1 * mu + torch.sqrt(a1**2 * s**2 + sg1**2) * z_std, atol=1e-4)


def test_reverse_ode_maps_data_back_to_noise():
    z = torch.linspace(-2, 2, 9, dtype=torch.float64).view(9, 1)
    back = Sampler(create_transport()).sample_ode(reverse=True, atol=1e-9, rtol=1e-9)(
        1.0 + 0.5 * z, GaussianFields("Linear", 1.0, 0.5).velocity)[-1]
    assert torch.allclose(back, z, atol=1e-6)


def test_timestep_shift():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    for shift in (0.3, 1.0, 3.0):
        shifted = shift_time(t, shift)
        assert shifted[0] == 0 and shifted[-1].item() == pytest.approx(1) and (shifted.diff() > 0).all()
    assert torch.allclose(shift_time(t, 1.0), t)
    assert (shift_time(t[1:-1], 0.3) < t[1:-1]).all()  # shift < 1: more of the grid at the noise end
    sigma, s = 1 - t, 3.0  # SD3's shift s on its time (noise level) is shift 1/s here
    assert torch.allclose(1 - shift_time(1 - sigma, 1 / s), s * sigma / (1 + (s - 1) * sigma))
    grid = time_grid(1e-3, 1 - 1e-3, 6, shift=0.5, dtype=torch.float64)
    assert grid[0].item() == pytest.approx(1e-3) and grid[-1].item() == pytest.approx(1 - 1e-3)
    # a shifted grid is still a consistent integrator
    assert ode_error("heun2", 30, shift=0.5) < 2e-3


# ------------------------------------------------------------------------------------------------ SDE sampling
@pytest.mark.parametrize("method", ["Euler", "Heun"])
def test_sde_transports_noise_to_the_gaussian_data(method):
    mu, s, n = 1.0, 0.5, 3000
    fields = GaussianFields("Linear", mu, s)
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(n, 1, generator=generator, dtype=torch.float64)
    sample = Sampler(create_transport()).sample_sde(sampling_method=method, diffusion_form="sigma", num_steps=60)
    x = sample(z, fields.velocity, step_noise=lambda i, shape: torch.randn(shape, generator=generator))[-1]
    assert x.mean().item() == pytest.approx(mu, abs=0.03)
    assert x.std().item() == pytest.approx(s, rel=0.06)


def test_sde_noise_keyed_per_image_does_not_depend_on_the_batch():
    fields = GaussianFields("GVP", 0.3, 0.6)
    sample = Sampler(create_transport("GVP", "noise")).sample_sde(num_steps=20)

    def run(indices):
        z = keyed_randn([(5, PURPOSES["sample_init"], i) for i in indices], (2, 2), dtype=torch.float64)
        def step_noise(step, shape):
            return keyed_randn([(5, PURPOSES["sample_step"], i, step) for i in indices], shape[1:],
                               dtype=torch.float64)
        return sample(z, fields.noise, step_noise=step_noise)

    full, part = run(range(5)), run([1, 3])
    assert len(full) == 20
    assert torch.allclose(full[-1][[1, 3]], part[-1], rtol=0, atol=1e-12)


def test_sample_loop_is_the_samplers_last_state():
    fields = GaussianFields("Linear", 0.5, 0.7)
    transport = create_transport()
    z = torch.randn(3, 2, dtype=torch.float64)
    ode = Sampler(transport).sample_ode(sampling_method="rk4", num_steps=9, shift=0.7)(z, fields.velocity)[-1]
    assert torch.equal(sample_loop(transport, fields.velocity, z, method="rk4", num_steps=9, shift=0.7), ode)

    def step_noise(i, shape):
        return keyed_randn([(0, PURPOSES["sample_step"], k, i) for k in range(shape[0])], shape[1:],
                           dtype=torch.float64)

    sde = Sampler(transport).sample_sde(diffusion_form="sigma", num_steps=12)(z, fields.velocity, step_noise=step_noise)
    assert torch.equal(sample_loop(transport, fields.velocity, z, sampler="sde", num_steps=12, step_noise=step_noise),
                       sde[-1])
    with pytest.raises(ValueError, match="sampler"):
        sample_loop(transport, fields.velocity, z, sampler="ddim")


# ------------------------------------------------------------------------------------------------ likelihood
@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_ode_likelihood_of_gaussian_data(divergence):
    mu, s, dims = 0.5, 0.7, 3
    x = mu + s * torch.randn(4, dims, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fields = GaussianFields("Linear", mu, s)
    logp, z = Sampler(create_transport()).sample_ode_likelihood(atol=1e-8, rtol=1e-8, divergence=divergence)(
        x, fields.velocity, probe=keyed_rademacher([(0, i) for i in range(4)], (dims,), dtype=torch.float64))
    analytic = (-0.5 * math.log(2 * math.pi * s**2) - (x - mu) ** 2 / (2 * s**2)).sum(1)
    assert torch.allclose(logp, analytic, atol=1e-4)
    assert torch.allclose(z, (x - mu) / s, atol=1e-5)


@pytest.mark.parametrize("path_type,prediction,t_start,t_end", [
    ("GVP", "score", 1 - 1e-3, 1e-3), ("VP", "velocity", 1.0, 1e-3), ("VP", "noise", 1 - 1e-3, 0.0)])
def test_ode_likelihood_on_other_paths(path_type, prediction, t_start, t_end):
    """The likelihood integrates from the data end of the sampling interval to its noise end (for VP with noise
    prediction, from 1 - eps: SiT starts at t = 1 where that model is undefined). The result is the log-density of
    x under the path's marginal at the start, up to the prior N(0, I) standing in for the marginal at the end."""
    mu, s, dims = 0.5, 0.7, 3
    x = mu + s * torch.randn(4, dims, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fields = GaussianFields(path_type, mu, s)
    logp, z = Sampler(create_transport(path_type, prediction)).sample_ode_likelihood(
        atol=1e-8, rtol=1e-8, divergence="exact")(x, fields.model(prediction))

    def marginal(t):
        a, _, sg, _ = coefficients(path_type, torch.tensor([t], dtype=torch.float64))
        return a * mu, torch.sqrt(a**2 * s**2 + sg**2)

    mean, std = marginal(t_start)
    analytic = (-torch.log(math.sqrt(2 * math.pi) * std) - (x - mean) ** 2 / (2 * std**2)).sum(1)
    end_mean, end_std = marginal(t_end)  # where the flow takes x: standardised coordinates are kept
    z_exact = end_mean + end_std * (x - mean) / std
    assert torch.allclose(z, z_exact, atol=1e-5)
    # log N(z; 0, I) replaces the end marginal's log-density; the difference is what separates logp from analytic
    end_logp = (-torch.log(math.sqrt(2 * math.pi) * end_std) - (z - end_mean) ** 2 / (2 * end_std**2)).sum(1)
    prior_logp = (-0.5 * math.log(2 * math.pi) - z**2 / 2).sum(1)
    assert torch.allclose(logp, analytic + prior_logp - end_logp, atol=1e-4)


def test_reverse_ode_of_vp_noise_model_starts_short_of_the_data_end():
    transport = create_transport("VP", "noise")
    assert transport.interval(sampling=True, reverse=True) == (1 - 1e-3, 0.0)
    fields = GaussianFields("VP", 0.5, 0.7)
    x = torch.linspace(-1, 2, 5, dtype=torch.float64).view(5, 1)
    back = Sampler(transport).sample_ode(reverse=True, atol=1e-8, rtol=1e-8)(x, fields.noise)[-1]
    assert torch.isfinite(back).all()


# ------------------------------------------------------------------------------------------------ a DiCo model
def test_dico_model_trains_and_samples_through_the_transport():
    """A DiCo with learned sigma takes continuous t in [0, 1]: the loss backpropagates, and the ODE runs dico's
    guided denoiser (a callable from outside the transport), with guidance only inside its interval."""
    import dico

    torch.manual_seed(0)
    model = dico.create_model("DiCo-Tiny", hidden_size=16, depth=[1, 1, 1, 1, 1], num_classes=3, input_size=8)
    transport = create_transport(time_sampling="logit-normal")
    x1, y = torch.randn(4, 4, 8, 8), torch.tensor([0, 1, 2, 0])
    losses = transport.training_losses(model, x1, {"y": y}, keys=keys_for(4))
    assert losses["loss"].shape == (4,) and losses["pred"].shape == x1.shape
    losses["loss"].mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    model.eval()
    guided_times = []
    model.register_forward_pre_hook(lambda module, args: guided_times.append(args[1][0].item()) if len(args[0]) == 4
                                    else None)
    denoiser = Denoiser(model, ClassLabels(torch.tensor([0, 1]), 3), Guidance(4.0, interval=(0.2, 0.8)),
                        flow_time=lambda t: t)
    z = torch.randn(2, 4, 8, 8)
    sample = Sampler(transport).sample_ode(sampling_method="heun2", num_steps=5, shift=0.5)
    x = sample(denoiser.layout(z), denoiser)[-1][:2]
    assert x.shape == z.shape and torch.isfinite(x).all()
    assert guided_times and all(0.2 <= t <= 0.8 for t in guided_times)


# ------------------------------------------------------------------------------------------- side by side: SiT
def load_sit_transport():
    """SiT's `transport` package from the checkout at SIT_PATH, imported under its own name."""
    root = Path(os.environ["SIT_PATH"]) / "transport"
    if "sit_transport" not in sys.modules:
        spec = importlib.util.spec_from_file_location("sit_transport", root / "__init__.py",
                                                      submodule_search_locations=[str(root)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["sit_transport"] = module
        spec.loader.exec_module(module)
    return sys.modules["sit_transport"]


needs_sit = pytest.mark.skipif(not os.environ.get("SIT_PATH"), reason="set SIT_PATH to a willisma/SiT checkout")


# A trained model of each kind near the noise end (x_t ~ x0): a velocity of no particular size, the noise near x, the
# score near -x; towards the data end the x term fades. Noise and score models err little there: their error is
# multiplied by ~1/t in the velocity, and a large one makes the ODE so stiff that adaptive solvers' step choices
# (SiT's and ours alike) hinge on rounding.
BASE = {"velocity": 0.0, "noise": 1.0, "score": -1.0}


def error_scale(prediction, t):
    return 0.5 + 0.5 * t if prediction == "velocity" else t


class TinyModel(torch.nn.Module):
    """A small deterministic network with learned sigma (2C outputs); SiT's models return the first C."""

    def __init__(self, prediction="velocity", channels=2, num_classes=3):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.prediction = prediction
        self.weight = torch.nn.Parameter(torch.randn(2 * channels, channels, generator=generator))
        self.label_bias = torch.nn.Parameter(torch.randn(num_classes, 2 * channels, generator=generator) * 0.3)

    def forward(self, x, t, y):
        h = torch.einsum("oc,nchw->nohw", self.weight, x) + self.label_bias[y][:, :, None, None]
        t = t.view(-1, 1, 1, 1)
        return torch.tanh(h) * error_scale(self.prediction, t) + BASE[self.prediction] * (1 - t) * torch.cat([x, x], 1)

    def first_half(self, x, t, y):
        return self(x, t, y)[:, : x.shape[1]]


def elementwise_model(prediction):
    # Each output element depends on its own input element only: Hutchinson's estimate is then exact, so SiT's
    # per-evaluation random probe and ours give the same likelihood.
    def model(x, t, y):
        t = t.view(-1, 1, 1, 1)
        perturbation = 0.5 * torch.tanh(x) + 0.1 * y.view(-1, 1, 1, 1)
        return BASE[prediction] * (1 - t) * x + perturbation * error_scale(prediction, t)
    return model


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


SIT_CASES = [(p, q, w) for p in PATH_TYPES for q in PREDICTIONS for w in ([None] if q == "velocity" else
                                                                            [None, "velocity", "likelihood"])]


@needs_sit
@pytest.mark.parametrize("path_type,prediction,loss_weight", SIT_CASES)
def test_losses_match_sit(path_type, prediction, loss_weight):
    sit = load_sit_transport().create_transport(path_type, prediction, loss_weight)
    ours = create_transport(path_type, prediction, loss_weight)
    assert (ours.train_eps, ours.sample_eps) == (sit.train_eps, sit.sample_eps)
    assert ours.interval() == sit.check_interval(sit.train_eps, sit.sample_eps)
    model = TinyModel(prediction)
    x1, y = torch.randn(6, 2, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    t, x0 = ours.draw(x1, keys_for(6))
    t = torch.cat([t[:5], torch.tensor([ours.interval()[0]])])  # include the interval's noise end
    sit.sample = lambda data: (t, x0, data)  # SiT draws t and x0 inside; hand it ours
    expected = sit.training_losses(model.first_half, x1, {"y": y})
    got = ours.training_losses(model, x1, {"y": y}, t=t, x0=x0)
    assert rel_err(got["pred"], expected["pred"]) < 1e-6
    error = rel_err(got["loss"], expected["loss"])
    print(f"loss {path_type}/{prediction}/{loss_weight}: rel err {error:.2e}")
    assert error < 1e-4


# dopri5 with a VP noise model is left out: SiT's steps overshoot t = 1, where that model is undefined (NaN); ours
# step onto the interval's end (test_ode_of_noise_and_score_models_reaches_the_data).
SIT_ODE_CASES = [(p, q, m) for p in PATH_TYPES for q in PREDICTIONS for m in ("euler", "heun2", "dopri5")
                 if (p, q, m) != ("VP", "noise", "dopri5")]


@needs_sit
@pytest.mark.parametrize("path_type,prediction,method", SIT_ODE_CASES)
def test_ode_samples_match_sit(path_type, prediction, method):
    sit_module = load_sit_transport()
    sit = sit_module.Sampler(sit_module.create_transport(path_type, prediction))
    ours = Sampler(create_transport(path_type, prediction))
    model = TinyModel(prediction)
    z, y = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 1, 2])
    num_steps = 12
    with torch.no_grad():
        expected = sit.sample_ode(sampling_method=method, num_steps=num_steps)(z, model.first_half, y=y)
    got = ours.sample_ode(sampling_method=method, num_steps=num_steps)(z, model, y=y)
    assert got.shape == expected.shape
    error = rel_err(got[-1], expected[-1])
    print(f"ODE {path_type}/{prediction}/{method}: rel err {error:.2e}")
    assert error < 1e-4
    # reverse, data -> noise (SiT starts a VP noise model at t = 1, where it is undefined)
    if method == "heun2" and (path_type, prediction) != ("VP", "noise"):
        with torch.no_grad():
            expected = sit.sample_ode(sampling_method=method, num_steps=num_steps, reverse=True)(z, model.first_half,
                                                                                                 y=y)
        got = ours.sample_ode(sampling_method=method, num_steps=num_steps, reverse=True)(z, model, y=y)
        assert rel_err(got[-1], expected[-1]) < 1e-4


SIT_SDE_CASES = [("Linear", "velocity", "sigma", "Euler", "Mean"), ("Linear", "noise", "SBDM", "Heun", "Tweedie"),
                 ("GVP", "score", "SBDM", "Euler", "Euler"), ("GVP", "velocity", "linear", "Heun", None),
                 ("VP", "velocity", "SBDM", "Euler", "Mean"), ("VP", "noise", "decreasing", "Heun", "Euler")]


@needs_sit
@pytest.mark.parametrize("path_type,prediction,form,method,last_step", SIT_SDE_CASES)
def test_sde_samples_match_sit(path_type, prediction, form, method, last_step):
    """Same global-generator noise on both sides: SiT draws each step's noise first, as we do without step_noise."""
    sit_module = load_sit_transport()
    sit = sit_module.Sampler(sit_module.create_transport(path_type, prediction))
    ours = Sampler(create_transport(path_type, prediction))
    model = TinyModel(prediction)
    z, y = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1, 2])
    options = dict(sampling_method=method, diffusion_form=form, last_step=last_step, num_steps=20)
    torch.manual_seed(7)
    expected = sit.sample_sde(**options)(z, model.first_half, y=y)
    torch.manual_seed(7)
    got = ours.sample_sde(**options)(z, model, y=y)
    assert len(got) == len(expected) == 20
    error = rel_err(got[-1], expected[-1])
    print(f"SDE {path_type}/{prediction}/{form}/{method}/{last_step}: rel err {error:.2e}")
    assert error < 1e-4


# VP with noise prediction is left out: SiT starts its likelihood at t = 1, where that model divides by sigma = 0.
SIT_LIKELIHOOD_CASES = [(p, q, m) for p in PATH_TYPES for q in PREDICTIONS for m in ("heun2", "dopri5")
                        if (p, q) != ("VP", "noise")]


@needs_sit
@pytest.mark.parametrize("path_type,prediction,method", SIT_LIKELIHOOD_CASES)
def test_likelihood_matches_sit(path_type, prediction, method):
    sit_module = load_sit_transport()
    sit = sit_module.Sampler(sit_module.create_transport(path_type, prediction))
    ours = Sampler(create_transport(path_type, prediction))
    x, y = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(4)), torch.tensor([0, 1, 2])
    options = dict(sampling_method=method, num_steps=20)
    with torch.no_grad():  # as SiT's sample.py runs it (its drift turns gradients back on for the divergence)
        expected_logp, expected_z = sit.sample_ode_likelihood(**options)(x, elementwise_model(prediction), y=y)
    logp, z = ours.sample_ode_likelihood(**options)(x, elementwise_model(prediction), y=y)
    error = max(rel_err(logp, expected_logp), rel_err(z, expected_z))
    print(f"likelihood {path_type}/{prediction}/{method}: rel err {error:.2e}")
    assert error < 1e-4
