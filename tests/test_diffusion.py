"""dico.diffusion: the iDDPM process of DiT/DiCo (checked against the official release's outputs), respacing,
sampling loops, and the DPM-Solver++ sampler (checked against the exact flow of Gaussian data)."""

import copy

import numpy as np
import pytest
import torch

from dico.diffusion import create_diffusion, dpm_solver_timesteps, sample_loop, space_timesteps


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


# --------------------------------------------------------------------------- official release (fixtures)


def test_training_losses_match_official(official, official_model):
    ref = official["training_losses"]
    diffusion = create_diffusion("")
    with torch.no_grad():
        out = diffusion.training_losses(official_model, ref["x_start"], ref["t"], dict(y=ref["y"]), noise=ref["noise"])
    assert set(out) == {"loss", "mse", "vb"}
    for key in ("loss", "mse", "vb"):
        assert out[key].shape == (len(ref["t"]),)
        assert relative_error(out[key], ref[key]) < 1e-4, key


def test_p_mean_variance_matches_official_on_respaced_process(official, official_model):
    ref = official["p_mean_variance"]
    diffusion = create_diffusion(str(ref["respacing"]))
    with torch.no_grad():
        out = diffusion.p_mean_variance(official_model, ref["x_t"], ref["t"], clip_denoised=False,
                                        model_kwargs=dict(y=ref["y"]))
    for key in ("mean", "variance", "log_variance", "pred_xstart"):
        assert relative_error(out[key], ref[key]) < 1e-4, key


def test_ddim_loop_matches_official(official, official_model):
    ref = official["ddim"]
    diffusion = create_diffusion(str(ref["respacing"]))
    sample = diffusion.ddim_sample_loop(official_model, tuple(ref["noise"].shape), noise=ref["noise"],
                                        clip_denoised=False, model_kwargs=dict(y=ref["y"]), eta=float(ref["eta"]))
    assert relative_error(sample, ref["sample"]) < 1e-4


def test_training_loss_gradient_reaches_variance_but_not_mean_through_vb(official, official_model):
    """The hybrid loss: the vb term trains only the variance channels (the mean is detached there)."""
    ref = official["training_losses"]
    diffusion = create_diffusion("")
    x_t = diffusion.q_sample(ref["x_start"], ref["t"], ref["noise"])
    output = official_model(x_t, ref["t"], ref["y"]).detach().requires_grad_(True)
    frozen_model = lambda x, t, **kw: output  # noqa: E731 - the same output, now a leaf we can differentiate
    diffusion.training_losses(frozen_model, ref["x_start"], ref["t"], noise=ref["noise"])["vb"].sum().backward()
    assert output.grad[:, :4].abs().max() == 0
    assert output.grad[:, 4:].abs().max() > 0


# ------------------------------------------------------------------------------------ schedules, respacing


def test_linear_and_cosine_schedules_match_diffusers():
    from diffusers import DDPMScheduler

    for name in ("linear", "squaredcos_cap_v2"):
        ours = create_diffusion("", noise_schedule=name)
        theirs = DDPMScheduler(num_train_timesteps=1000, beta_schedule=name, beta_start=1e-4, beta_end=0.02)
        assert ours.betas.dtype == np.float64
        np.testing.assert_allclose(ours.betas, theirs.betas.double().numpy(), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(ours.alphas_cumprod, theirs.alphas_cumprod.double().numpy(), rtol=1e-4)


def test_linear_schedule_scales_with_number_of_steps():
    betas = create_diffusion("", diffusion_steps=500).betas
    assert betas[0] == pytest.approx(2e-4) and betas[-1] == pytest.approx(0.04)


def test_ddim_respacing_takes_evenly_strided_steps():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    diffusion = create_diffusion("ddim50")
    assert diffusion.num_timesteps == 50
    assert list(diffusion.timestep_map) == list(range(0, 1000, 20))


def test_section_respacing_spreads_each_section_evenly():
    kept = space_timesteps(300, "10,15,20")
    assert space_timesteps(300, [10, 15, 20]) == kept
    assert len(kept) == 45
    for start, count in ((0, 10), (100, 15), (200, 20)):
        section = [t for t in kept if start <= t < start + 100]
        assert len(section) == count
        assert section[0] == start and section[-1] == start + 99  # both ends of the section
        gaps = np.diff(section)
        assert gaps.max() - gaps.min() <= 1  # as even as integer steps allow
    assert kept[:10] == list(range(0, 100, 11))


def test_even_respacing_keeps_both_ends():
    kept = create_diffusion("250").timestep_map
    assert len(kept) == 250 and kept[0] == 0 and kept[-1] == 999
    assert set(np.diff(kept)) <= {4, 5}


def test_respaced_betas_reproduce_the_kept_alpha_bars():
    full, spaced = create_diffusion(""), create_diffusion("ddim25")
    np.testing.assert_allclose(spaced.alphas_cumprod, full.alphas_cumprod[spaced.timestep_map], rtol=1e-12)


@pytest.mark.parametrize("respacing", ["ddim999", "abc", "10,x", "2000", "0", "ddimx"])
def test_invalid_respacing_is_a_clear_error(respacing):
    with pytest.raises(ValueError):
        create_diffusion(respacing)


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="squaredcos_cap_v2"):
        create_diffusion("", noise_schedule="cosine")


# ------------------------------------------------------------------------------------------ model calls


class TimestepRecorder:
    """A model that predicts zero noise and records the timesteps it is called with."""

    def __init__(self, out_channels_factor=2):
        self.calls = []
        self.factor = out_channels_factor

    def __call__(self, x, t, **kwargs):
        self.calls.append(t.clone())
        return torch.zeros(x.shape[0], x.shape[1] * self.factor, *x.shape[2:], dtype=x.dtype)


def test_model_receives_original_timesteps():
    diffusion = create_diffusion("ddim50")
    model = TimestepRecorder()
    diffusion.ddim_sample_loop(model, (2, 1, 4, 4))
    assert [int(t[0]) for t in model.calls] == list(range(980, -1, -20))
    assert all(t.dtype == torch.long and len(set(t.tolist())) == 1 for t in model.calls)

    model.calls.clear()
    diffusion = create_diffusion("25")
    indices = torch.tensor([0, 24, 12, 5])
    diffusion.p_mean_variance(model, torch.randn(4, 1, 4, 4), indices)
    diffusion.training_losses(model, torch.randn(4, 1, 4, 4), indices)
    expected = [int(diffusion.timestep_map[i]) for i in indices]
    assert expected[1] == 999
    assert [c.tolist() for c in model.calls] == [expected, expected]


def test_dpm_solver_queries_trained_timesteps_only():
    diffusion = create_diffusion("")
    model = TimestepRecorder()
    diffusion.dpm_solver_sample_loop(model, (1, 1, 4, 4), steps=20)
    called = [int(t[0]) for t in model.calls]
    assert len(called) == 20 and called[0] == 999 and called == sorted(set(called), reverse=True)
    # and on a respaced process, only its kept timesteps
    spaced = create_diffusion("100")
    model.calls.clear()
    spaced.dpm_solver_sample_loop(model, (1, 1, 4, 4), steps=15)
    assert {int(t[0]) for t in model.calls} <= set(spaced.timestep_map.tolist())


def test_wrong_model_output_channels_is_a_clear_error():
    with pytest.raises(ValueError, match="learn_sigma"):
        create_diffusion("10").p_mean_variance(TimestepRecorder(1), torch.randn(2, 3, 4, 4), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="learn_sigma"):
        create_diffusion("10", learn_sigma=False).training_losses(TimestepRecorder(2), torch.randn(2, 3, 4, 4),
                                                                   torch.tensor([1, 2]))


# ----------------------------------------------------------------------------------------- sampling loops


def test_ddpm_loop_is_deterministic_given_the_seed_and_draws_like_the_reference(official_model):
    diffusion = create_diffusion("8")
    shape, kwargs = (2, 4, 16, 16), dict(y=torch.tensor([3, 7]))
    torch.manual_seed(0)
    first = diffusion.p_sample_loop(official_model, shape, model_kwargs=kwargs)
    torch.manual_seed(0)
    second = diffusion.p_sample_loop(official_model, shape, model_kwargs=kwargs)
    torch.manual_seed(1)
    other = diffusion.p_sample_loop(official_model, shape, model_kwargs=kwargs)
    assert torch.equal(first, second) and not torch.allclose(first, other)

    # Written out from the DDPM definition: x_T ~ randn(shape), then x <- mean + [t > 0] * std * randn_like(x).
    torch.manual_seed(0)
    x = torch.randn(*shape)
    with torch.no_grad():
        for index in reversed(range(diffusion.num_timesteps)):
            t = torch.full((2,), index)
            p = diffusion.p_mean_variance(official_model, x, t, model_kwargs=kwargs)
            x = p["mean"] + (index > 0) * torch.exp(0.5 * p["log_variance"]) * torch.randn_like(x)
    assert torch.allclose(first, x, atol=1e-6)


def per_image_step_noise(seeds, shape_tail):
    """Fresh noise for loop step i from one generator per image, keyed by (seed, step)."""
    def step_noise(i, shape):
        assert tuple(shape[1:]) == shape_tail and shape[0] == len(seeds)
        return torch.stack([torch.randn(shape_tail, generator=torch.Generator().manual_seed(s * 1000 + i)) for s in seeds])
    return step_noise


def test_step_noise_makes_samples_independent_of_batch_composition(official_model):
    # float64 so that batch-size-dependent convolution kernels do not blur the comparison
    model = copy.deepcopy(official_model).double()
    diffusion = create_diffusion("6")
    tail = (4, 16, 16)
    seeds, labels = [11, 12, 13, 14], torch.tensor([1, 2, 3, 4])
    initial = torch.stack([torch.randn(tail, generator=torch.Generator().manual_seed(s)) for s in seeds]).double()
    for method, eta in (("ddpm", 0.0), ("ddim", 1.0)):
        full = sample_loop(diffusion, model, (4, *tail), method=method, steps=6, eta=eta, noise=initial,
                           step_noise=per_image_step_noise(seeds, tail), model_kwargs=dict(y=labels))
        halves = [
            sample_loop(diffusion, model, (2, *tail), method=method, steps=6, eta=eta, noise=initial[part],
                        step_noise=per_image_step_noise(seeds[part], tail), model_kwargs=dict(y=labels[part]))
            for part in (slice(0, 2), slice(2, 4))
        ]
        torch.testing.assert_close(full, torch.cat(halves), rtol=1e-9, atol=1e-9)


def test_step_noise_is_requested_once_per_step_from_the_highest_t():
    requested = []

    def step_noise(i, shape):
        requested.append(i)
        return torch.zeros(shape)

    create_diffusion("7").p_sample_loop(TimestepRecorder(), (1, 1, 4, 4), step_noise=step_noise)
    assert requested == list(range(7))
    requested.clear()
    create_diffusion("7").ddim_sample_loop(TimestepRecorder(), (1, 1, 4, 4), step_noise=step_noise, eta=0.0)
    assert requested == []  # deterministic DDIM needs no fresh noise


def test_sample_loop_dispatches_to_the_respaced_loops(official_model):
    diffusion = create_diffusion("")
    noise, kwargs = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)), dict(y=torch.tensor([0, 5]))
    via_sampler = sample_loop(diffusion, official_model, (2, 4, 16, 16), method="ddim", steps=5, noise=noise,
                              model_kwargs=kwargs)
    direct = create_diffusion("5").ddim_sample_loop(official_model, (2, 4, 16, 16), noise=noise, model_kwargs=kwargs)
    assert torch.equal(via_sampler, direct)
    with pytest.raises(ValueError, match="method"):
        sample_loop(diffusion, official_model, (2, 4, 16, 16), method="euler")
    with pytest.raises(ValueError, match="eta"):
        sample_loop(diffusion, official_model, (2, 4, 16, 16), method="ddpm", eta=1.0)
    with pytest.raises(ValueError, match="steps"):
        sample_loop(diffusion, official_model, (2, 4, 16, 16), method="dpm++2m", steps=1000)


def test_results_keep_the_input_dtype(official_model):
    diffusion = create_diffusion("10")
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([0, 9])
    model64 = lambda x, t, **kw: official_model(x.float(), t, **kw).double()  # noqa: E731
    for dtype, model in ((torch.bfloat16, lambda x, t, **kw: official_model(x.float(), t, **kw).bfloat16()),
                         (torch.float64, model64)):
        kwargs = dict(y=torch.tensor([1, 2]))
        out = diffusion.p_mean_variance(model, x.to(dtype), t, model_kwargs=kwargs)
        assert all(v.dtype == dtype for v in out.values())
        losses = diffusion.training_losses(model, x.to(dtype), t, kwargs)
        assert all(v.dtype == dtype for v in losses.values())
        sample = diffusion.dpm_solver_sample_loop(model, (2, 4, 16, 16), steps=3, noise=x.to(dtype), model_kwargs=kwargs)
        assert sample.dtype == dtype


# ------------------------------------------------- samplers against the exact flow of Gaussian data

MU, S = 0.6, 0.5  # data x0 ~ N(MU, S^2 I)


def gaussian_eps_oracle(diffusion, learned_variance=True):
    """The optimal noise predictor for x0 ~ N(MU, S^2 I), indexed by ORIGINAL timesteps:
    eps*(x_t, t) = sqrt(1 - abar_t) (x_t - sqrt(abar_t) MU) / (abar_t S^2 + 1 - abar_t)."""
    abar = torch.tensor(np.cumprod(1.0 - diffusion.base_betas))

    def model(x, t, **kwargs):
        a = abar.index_select(0, t).view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        eps = (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * S**2 + 1 - a)
        # A learned-variance model emits a second block of channels; samplers must ignore it for the ODE.
        return torch.cat([eps, torch.full_like(eps, 0.3)], dim=1) if learned_variance else eps
    return model


def exact_flow(diffusion, x_T):
    """The probability-flow ODE of Gaussian data from t = T-1 to t = 0 is affine: it matches standard scores."""
    abar = np.cumprod(1.0 - diffusion.base_betas)
    var = lambda a: a * S**2 + 1 - a  # noqa: E731
    scale = np.sqrt(var(abar[0]) / var(abar[-1]))
    return np.sqrt(abar[0]) * MU + scale * (x_T - np.sqrt(abar[-1]) * MU)


@pytest.fixture(scope="module")
def gaussian_noise():
    return torch.randn(8192, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_dpm_solver_transports_noise_to_the_data_distribution(gaussian_noise):
    diffusion = create_diffusion("")
    oracle = gaussian_eps_oracle(diffusion)
    shape = tuple(gaussian_noise.shape)
    exact = exact_flow(diffusion, gaussian_noise)
    errors = {}
    for method in ("ddim", "dpm++2m", "dpm++3m"):
        sample = sample_loop(diffusion, oracle, shape, method=method, steps=20, noise=gaussian_noise)
        errors[method] = (sample - exact).pow(2).mean().sqrt().item() / S
        if method != "ddim":
            assert abs(sample.mean().item() - MU) < 0.01
            assert abs(sample.std().item() / S - 1) < 0.03
    # DDIM at the same 20 evaluations is much further from the exact flow (it shrinks the spread by ~14 %).
    assert errors["dpm++2m"] < 0.02 and errors["dpm++3m"] < 0.02
    assert errors["ddim"] > 4 * max(errors["dpm++2m"], errors["dpm++3m"])


@pytest.mark.parametrize("order", [2, 3])
def test_dpm_solver_converges_to_the_exact_flow(order, gaussian_noise):
    diffusion = create_diffusion("")
    oracle = gaussian_eps_oracle(diffusion)
    exact = exact_flow(diffusion, gaussian_noise[:64])
    error = {
        steps: (diffusion.dpm_solver_sample_loop(oracle, (64, 1, 2, 2), steps=steps, order=order,
                                                 noise=gaussian_noise[:64]) - exact).abs().max().item()
        for steps in (10, 20, 50, 200)
    }
    assert error[10] > error[20] > error[50] > error[200]
    assert error[50] < error[20] / 3  # about second order in the step size
    assert error[200] < 1e-3


def test_dpm_solver_uses_only_the_eps_channels_of_learned_variance_models(gaussian_noise):
    diffusion = create_diffusion("")
    noise = gaussian_noise[:16]
    learned = diffusion.dpm_solver_sample_loop(gaussian_eps_oracle(diffusion, True), tuple(noise.shape), noise=noise)
    fixed = diffusion.dpm_solver_sample_loop(gaussian_eps_oracle(diffusion, False), tuple(noise.shape), noise=noise)
    assert torch.equal(learned, fixed)


@pytest.mark.parametrize("steps", [5, 10, 25])
def test_dpm_solver_time_grids_are_strictly_decreasing(steps):
    abar = create_diffusion("").alphas_cumprod
    for skip_type in ("logSNR", "time_uniform", "time_quadratic"):
        grid = dpm_solver_timesteps(abar, steps, skip_type)
        assert len(grid) == steps + 1 and grid[0] == 999 and grid[-1] == 0 and (np.diff(grid) < 0).all()
    assert (np.diff(dpm_solver_timesteps(abar, 999)) == -1).all()
    with pytest.raises(ValueError, match="skip_type"):
        dpm_solver_timesteps(abar, steps, "karras")


def test_ddim_with_the_optimal_predictor_follows_the_exact_flow(gaussian_noise):
    """Deterministic DDIM is a first-order solver of the same ODE: with many steps it transports each noise sample
    to where the exact flow does, hence to N(MU, S^2)."""
    diffusion = create_diffusion("")
    noise = gaussian_noise[:256]
    exact = exact_flow(diffusion, noise)
    sample = sample_loop(diffusion, gaussian_eps_oracle(diffusion), tuple(noise.shape), method="ddim", steps=250,
                         noise=noise)
    assert (sample - exact).pow(2).mean().sqrt().item() / S < 0.02
    fewer = sample_loop(diffusion, gaussian_eps_oracle(diffusion), tuple(noise.shape), method="ddim", steps=50,
                        noise=noise)
    assert (fewer - exact).pow(2).mean().sqrt().item() > 3 * (sample - exact).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("sigma_small", [False, True])
def test_ddpm_with_the_optimal_predictor_gives_the_data_distribution(sigma_small, gaussian_noise):
    diffusion = create_diffusion("", learn_sigma=False, sigma_small=sigma_small)
    noise = gaussian_noise[:4096]
    torch.manual_seed(0)
    sample = diffusion.p_sample_loop(gaussian_eps_oracle(diffusion, learned_variance=False), tuple(noise.shape),
                                     noise=noise)
    # 16384 values: the standard errors of the mean and of std / S are ~0.004 and ~0.0055.
    assert abs(sample.mean().item() - MU) < 0.015
    assert abs(sample.std().item() / S - 1) < 0.025


def test_dpm_solver_with_classifier_free_guidance(official_model):
    """forward_with_cfg as the model: both halves of the batch receive the guided eps, so equal starting noise in
    the two halves gives equal samples on the guided channels."""
    diffusion = create_diffusion("")
    half = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([1, 2, 10, 10])
    sample = sample_loop(diffusion, official_model.forward_with_cfg, (4, 4, 16, 16), method="dpm++2m", steps=8,
                         noise=torch.cat([half, half]), model_kwargs=dict(y=y, cfg_scale=4.0))
    assert torch.isfinite(sample).all()
    # forward_with_cfg guides 3 of the 4 channels (as the official release): those agree, the 4th keeps cond/uncond
    torch.testing.assert_close(sample[:2, :3], sample[2:, :3])
    assert not torch.allclose(sample[:2, 3], sample[2:, 3], atol=1e-3)
    unguided = sample_loop(diffusion, official_model, (2, 4, 16, 16), method="dpm++2m", steps=8, noise=half,
                           model_kwargs=dict(y=y[:2]))
    assert not torch.allclose(sample[:2], unguided, atol=1e-3)
