"""MeanFlow: the average-velocity target equals closed forms, the JVP through DiCo equals finite differences (with
the CPU fast paths out of the way), r = t is flow matching, every draw is keyed, and a trained checkpoint samples
in 1 or 2 steps through `dico sample`, the pipeline and the demo's samplers."""

import math

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as forward_ad

import dico
from dico.checkpoints import load_pretrained
from dico.cli import main as cli
from dico.meanflow import (average_velocity_derivative, draw_times, keyed_losses, meanflow_losses, meanflow_sample,
                           meanflow_target)
from dico.models import fast_ops
from dico.objectives import MeanFlowObjective, ObjectiveOptions, objective_from_dict
from dico.sampling import SamplingOptions, generate
from dico.training import train
from dico.transport import create_transport
from helpers import TINY, rel_err, tiny_run_config


def random_model(arch="DiCo-Tiny", std=0.05, dtype=torch.float32, **overrides):
    """A second-time model whose every weight is drawn N(0, std^2), so that x, t, r and the label all matter."""
    torch.manual_seed(0)
    config = dict(in_channels=1, num_classes=10, second_time=True, **overrides)
    if arch == "DiCo-Tiny":
        config.update(TINY)
    model = dico.create_model(arch, **config).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * std)
    return model


# ------------------------------------------------------------------------------------------------ the model input

def test_second_time_is_an_option_that_leaves_official_names_alone():
    for name in ("DiCo-S", "DiT-S/2", "DiCo-Iso-S/2"):
        plain = dico.create_model(name, num_classes=10)
        both = dico.create_model(name, num_classes=10, second_time=True)
        assert plain.config["second_time"] is False
        added = set(both.state_dict()) - set(plain.state_dict())
        assert set(plain.state_dict()) <= set(both.state_dict())
        assert added and all(k.startswith("r_embedder") for k in added)


SMALL = {"DiCo-Tiny": {}, "DiT-S/4": dict(input_size=8, hidden_size=32, depth=1, num_heads=2),
         "DiCo-Iso-S/2": dict(hidden_size=32, depth=2)}


@pytest.mark.parametrize("arch", list(SMALL))
def test_r_is_an_optional_keyword_and_r_none_is_r_equal_t(arch):
    overrides = SMALL[arch]
    model = random_model(arch, **overrides)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([0.2, 0.7]), torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.equal(model(x, t, y), model(x, t, y, r=t))
        assert not torch.allclose(model(x, t, y, r=t + 0.2), model(x, t, y))
    plain = dico.create_model(arch, in_channels=1, num_classes=10, **({} if arch != "DiCo-Tiny" else TINY),
                              **overrides)
    with pytest.raises(ValueError, match="second_time=True"):
        plain(x, t, y, r=t)


# ------------------------------------------------------------------------------------------------ the target

class ExponentialFlow(torch.nn.Module):
    """The exact average velocity of the flow dz/ds = a s z (z_s = z_t exp(a (s^2 - t^2) / 2)):
    u(z_t, t, r) = z_t (exp(a (r^2 - t^2) / 2) - 1) / (r - t), a model of that field (`model(z, t, r=r)`)."""

    num_classes, second_time = 0, True

    def __init__(self, a: float):
        super().__init__()
        self.a = a

    def forward(self, z, t, r=None):
        t_, r_ = t.reshape(-1, 1, 1, 1), r.reshape(-1, 1, 1, 1)
        return z * torch.expm1(self.a * (r_**2 - t_**2) / 2) / (r_ - t_)


def test_the_target_equals_a_known_average_velocity():
    """For a field whose average over [t, r] is known, the MeanFlow identity's target computed by the JVP (with
    the field's instantaneous velocity a t z along the path) is that average itself, for short and long intervals."""
    field = ExponentialFlow(a=1.3)
    z = torch.randn(4, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([0.0, 0.1, 0.5, 0.3], dtype=torch.float64)
    r = torch.tensor([1.0, 0.2, 0.9, 0.30001], dtype=torch.float64)
    velocity = field.a * t.reshape(-1, 1, 1, 1) * z
    target = meanflow_target(field, z, t, r, velocity, {})
    assert rel_err(target, field(z, t, r)) < 1e-10
    # and the identity would be violated by a wrong velocity: the target moves with it
    assert rel_err(meanflow_target(field, z, t, r, 2 * velocity, {}), field(z, t, r)) > 1e-2


def test_the_target_of_a_single_data_point_is_the_straight_jump_to_it():
    """With one data point x, every path is straight: the average velocity from z_t to the data is (x - z_t)/(1 - t),
    whatever r; a model of it has the target it predicts, for the conditional velocity x - eps."""
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)

    class ToTheData(torch.nn.Module):
        num_classes, second_time = 0, True

        def forward(self, z, t, r=None):
            return (x - z) / (1 - t.reshape(-1, 1, 1, 1))

    eps = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor([0.0, 0.25, 0.6], dtype=torch.float64)
    r = torch.tensor([1.0, 0.5, 0.7], dtype=torch.float64)
    z = t.reshape(-1, 1, 1, 1) * x + (1 - t.reshape(-1, 1, 1, 1)) * eps
    target = meanflow_target(ToTheData(), z, t, r, x - eps, {})
    assert rel_err(target, x - eps) < 1e-12
    assert torch.allclose(meanflow_sample(lambda z_, t_, r: ToTheData()(z_, t_, r), eps[:1], steps=1), x)


# ----------------------------------------------------------------------------------- the JVP through the network

@pytest.mark.parametrize("arch", list(SMALL))
def test_the_jvp_through_the_network_equals_finite_differences(arch):
    overrides = SMALL[arch]
    model = random_model(arch, dtype=torch.float64, **overrides)
    z, v = torch.randn(3, 1, 8, 8, dtype=torch.float64), torch.randn(3, 1, 8, 8, dtype=torch.float64)
    t, r = torch.tensor([0.1, 0.4, 0.8], dtype=torch.float64), torch.tensor([0.6, 0.9, 0.8], dtype=torch.float64)
    kwargs = {"y": torch.tensor([3, 10, 7])}  # (10: the null label)
    derivative = average_velocity_derivative(model, z, t, r, v, kwargs)
    h = 1e-3  # (the time features are computed in fp32: a smaller step would measure their rounding)
    with torch.no_grad():
        ahead = model(z + h * v, t + h, r=r, **kwargs)[:, :1]
        behind = model(z - h * v, t - h, r=r, **kwargs)[:, :1]
    assert rel_err(derivative, (ahead - behind) / (2 * h)) < 1e-5


@pytest.mark.parametrize("variant", ["DWC", "CrossAttn"])
def test_text_models_take_the_second_time_and_their_jvp_equals_finite_differences(variant):
    torch.manual_seed(0)
    model = dico.create_model(f"DiCo-Tiny-{variant}", in_channels=1, context_dim=16, context_length=4,
                              second_time=True).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    z, v = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.randn(2, 1, 8, 8, dtype=torch.float64)
    t, r = torch.tensor([0.1, 0.5], dtype=torch.float64), torch.tensor([0.6, 0.9], dtype=torch.float64)
    kwargs = {"context": torch.randn(2, 4, 16, dtype=torch.float64)}
    with torch.no_grad():
        assert torch.equal(model(z, t, **kwargs), model(z, t, **kwargs, r=t))
        assert not torch.allclose(model(z, t, **kwargs, r=r), model(z, t, **kwargs))
    derivative = average_velocity_derivative(model, z, t, r, v, kwargs)
    h = 1e-3
    with torch.no_grad():
        ahead = model(z + h * v, t + h, r=r, **kwargs)[:, :1]
        behind = model(z - h * v, t - h, r=r, **kwargs)[:, :1]
    assert rel_err(derivative, (ahead - behind) / (2 * h)) < 1e-5


def test_fast_paths_step_aside_under_forward_mode_ad():
    """Under torch.no_grad the CPU fast paths run (oneDNN convolutions, in-place ops); inside torch.func.jvp and a
    forward_ad dual level they do not, so the tangent of the fp32 network agrees with the one computed with
    autograd on (plain ops everywhere) and with dual tensors."""
    model = random_model()
    z, v = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    t, r, y = torch.tensor([0.3, 0.5]), torch.tensor([0.9, 0.6]), torch.tensor([1, 2])
    seen = []

    def u(z_, t_):
        seen.append(fast_ops.eager_inference())
        return model(z_, t_, y, r=r)

    with torch.no_grad():
        assert fast_ops.eager_inference()
        primal, tangent = torch.func.jvp(u, (z, t), (v, torch.ones_like(t)))
        plain = model(z, t, y, r=r)
    assert seen == [False]
    _, reference = torch.func.jvp(u, (z, t), (v, torch.ones_like(t)))  # autograd on: plain ops by the old rule
    assert torch.allclose(primal, plain, atol=1e-6)
    assert torch.allclose(tangent, reference, atol=1e-6)
    with torch.no_grad(), forward_ad.dual_level():
        assert not fast_ops.eager_inference()
        out = model(forward_ad.make_dual(z, v), forward_ad.make_dual(t, torch.ones_like(t)), y, r=r)
        dual_tangent = forward_ad.unpack_dual(out).tangent
    assert torch.allclose(dual_tangent, reference, atol=1e-5)


# ------------------------------------------------------------------------------------------------------ the loss

def test_r_equal_t_is_flow_matching():
    """At r = t the target is v and, unweighted (p = 0), the loss is flow matching's on the same draws; with the
    adaptive weight it is |d|^2 / (|d|^2 + c)."""
    model = random_model()
    x, noise = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    t, y = torch.tensor([0.05, 0.3, 0.6, 0.95]), torch.tensor([0, 4, 9, 10])
    flow = create_transport("Linear", "velocity", train_eps=0.0).training_losses(model, x, {"y": y}, t=t, x0=noise)
    plain = meanflow_losses(model, x, t, t, noise, {"y": y}, weight_power=0)
    assert torch.allclose(plain, flow["loss"], rtol=1e-5, atol=0)
    weighted = meanflow_losses(model, x, t, t, noise, {"y": y}, weight_power=1, weight_eps=1e-3)
    assert torch.allclose(weighted, plain / (plain + 1e-3), rtol=1e-5)
    longer = meanflow_losses(model, x, t, torch.ones(4), noise, {"y": y}, weight_power=0)
    assert not torch.allclose(longer, plain)


def test_the_guided_target_folds_guidance_in():
    """omega v + kappa u(c) + (1 - omega - kappa) u(null) where the label is kept; v where it was dropped; at
    omega = 1, kappa = 0 the plain v."""
    from dico.meanflow import guided_velocity

    model = random_model()
    z, v = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    t, y = torch.tensor([0.2, 0.5, 0.7]), torch.tensor([1, 10, 4])
    guided = guided_velocity(model, z, t, v, {"y": y}, omega=0.5, kappa=0.3)
    with torch.no_grad():
        cond = model(z, t, y, r=t)[:, :1]  # (the velocity half of a learned-sigma output)
        uncond = model(z, t, torch.full_like(y, 10), r=t)[:, :1]
    expected = 0.5 * v + 0.3 * cond + 0.2 * uncond
    assert torch.allclose(guided[[0, 2]], expected[[0, 2]], atol=1e-6)
    assert torch.equal(guided[1], v[1])
    assert guided_velocity(model, z, t, v, {"y": y}, omega=1.0, kappa=0.0) is v


def test_every_draw_is_keyed():
    keys = [(7, 3, p) for p in range(400)]
    t, r = draw_times(keys)
    assert (t <= r).all() and (t >= 0).all() and (r <= 1).all()
    assert abs((r != t).float().mean().item() - 0.25) < 0.06  # the fraction with an interval
    t2, r2 = draw_times(keys[100:200])
    assert torch.equal(t2, t[100:200]) and torch.equal(r2, r[100:200])  # a sample's draw is its own
    assert not torch.equal(draw_times([(8, 3, p) for p in range(400)])[0], t)  # another seed, other times
    # a sample with r != t keeps both draws (noise levels 1 - t > 1 - r): the paper's logit-normal(-0.4, 1) on the
    # noise level, whose median is sigmoid(-0.4); the larger one is t's
    apart = r != t
    assert abs(torch.median(1 - torch.cat([t[apart], r[apart]])).item() - 1 / (1 + math.exp(0.4))) < 0.05
    assert torch.median(1 - t).item() > 1 / (1 + math.exp(0.4))
    model = random_model()
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5])
    keys = [(0, 5, p) for p in range(6)]
    whole = keyed_losses(model, x, {"y": y}, keys, interval_fraction=0.5)
    split = torch.cat([keyed_losses(model, x[:2], {"y": y[:2]}, keys[:2], interval_fraction=0.5),
                       keyed_losses(model, x[2:], {"y": y[2:]}, keys[2:], interval_fraction=0.5)])
    assert torch.allclose(whole, split, rtol=1e-5)


def test_settings_are_flags_checked_and_recorded():
    options = ObjectiveOptions(objective="meanflow", meanflow_cfg_omega=0.2, meanflow_cfg_kappa=0.9)
    objective = MeanFlowObjective.from_options(options)
    assert objective_from_dict(objective.to_dict()) == objective
    assert objective.model_config() == {"second_time": True}
    with pytest.raises(ValueError, match="--meanflow-cfg-kappa"):
        MeanFlowObjective(meanflow_cfg_kappa=1.0)
    with pytest.raises(ValueError, match="--meanflow-interval-fraction"):
        ObjectiveOptions(meanflow_interval_fraction=1.5).check()


# -------------------------------------------------------------------------------------- a run and its samples

@pytest.fixture(scope="module")
def meanflow_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("meanflow")
    return train(tiny_run_config(results, objective="meanflow", meanflow_cfg_omega=0.8, meanflow_cfg_kappa=0.1),
                 progress=False, write_grid=True)


def test_the_checkpoint_round_trips_the_objective_and_the_second_time(meanflow_run):
    loaded = load_pretrained(meanflow_run)
    assert isinstance(loaded.objective, MeanFlowObjective)
    assert (loaded.objective.meanflow_cfg_omega, loaded.objective.meanflow_cfg_kappa) == (0.8, 0.1)
    assert loaded.model.second_time and loaded.model.config["second_time"]
    saved = dico.load_checkpoint(meanflow_run, "ema")
    assert all(torch.equal(saved[k], v) for k, v in loaded.model.state_dict().items())
    assert (meanflow_run.parent.parent / "samples.png").is_file()  # the final grid of `dico train`


def test_resume_is_exact(meanflow_run, tmp_path):
    config = dict(objective="meanflow", meanflow_cfg_omega=0.8, meanflow_cfg_kappa=0.1)
    train(tiny_run_config(tmp_path, max_steps=2, **config), progress=False, write_grid=False)
    resumed = train(tiny_run_config(tmp_path, **config), resume="auto", progress=False, write_grid=False)
    a, b = dico.load_checkpoint(resumed, "model"), dico.load_checkpoint(meanflow_run, "model")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dico_sample_takes_one_or_two_steps(meanflow_run, tmp_path):
    loaded = load_pretrained(meanflow_run)
    labels = torch.tensor([1, 2, 3, 4])
    outputs = {}
    for steps in (1, 2):
        out = tmp_path / f"s{steps}.npz"
        assert cli(["sample", "--ckpt", str(meanflow_run), "--steps", str(steps), "--num-samples", "4",
                    "--classes", "1,2,3,4", "--batch-size", "3", "--out", str(out)]) == 0
        with np.load(out) as f:
            outputs[steps] = f["arr_0"]
        again = generate(loaded.model, loaded.space, range(4), labels, SamplingOptions(steps=steps),
                         objective=loaded.objective)
        assert np.array_equal(outputs[steps], again)  # keyed seeds: the batch size changes nothing
    # one step is x = eps + u(eps, 0, 1) on the image's keyed noise; two jump to t = 1/2 first
    from dico.images import to_uint8
    from dico.sampling.guided import keyed_noise

    eps = keyed_noise(0, range(4), (1, 8, 8))
    with torch.no_grad():
        by_hand = eps + loaded.model(eps, torch.zeros(4), labels, r=torch.ones(4))[:, :1]
        half = eps + 0.5 * loaded.model(eps, torch.zeros(4), labels, r=torch.full((4,), 0.5))[:, :1]
        two = half + 0.5 * loaded.model(half, torch.full((4,), 0.5), labels, r=torch.ones(4))[:, :1]
    assert np.array_equal(to_uint8(by_hand), outputs[1])
    assert np.array_equal(to_uint8(two), outputs[2])
    assert not torch.equal(by_hand, two)
    with pytest.raises(ValueError, match="MeanFlow"):
        generate(loaded.model, loaded.space, range(1), labels[:1], SamplingOptions(method="euler", steps=2),
                 objective=loaded.objective)


def test_the_pipeline_and_the_demo_samplers_make_dico_samples(meanflow_run, tmp_path):
    from dico.pipelines import DiCoPipeline, save_pipeline

    folder = save_pipeline(meanflow_run, tmp_path / "pipe")
    pipe = DiCoPipeline.from_pretrained(folder)
    loaded = load_pretrained(meanflow_run)
    for steps in (1, 2):
        images = pipe([1, 2, 3], seed=0, num_inference_steps=steps, guidance_scale=1.0, output_type="np").images
        expected = generate(loaded.model, loaded.space, range(3), torch.tensor([1, 2, 3]),
                            SamplingOptions(steps=steps), objective=loaded.objective)
        assert np.abs(np.round(images * 255) - expected.astype(np.float64)).max() <= 1
    for name, make in loaded.objective.pipeline_samplers().items():
        pipe.scheduler = make(pipe.scheduler.config)
        assert pipe([5], seed=1, num_inference_steps=1, output_type="np").images.shape[:3] == (1, 8, 8)
    from dico.demo.app import generate_images, sampler_pipelines

    pipes = sampler_pipelines(pipe)
    for name in pipes:  # the demo's samplers are the objective's: one MeanFlow jump per step
        gallery, status = generate_images(pipes, ["3", "7"], 1, 1.0, 1, name, 0, False)
        assert len(gallery) == 2 and "1 steps" in status
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe.scheduler = FlowMatchEulerDiscreteScheduler()
    with pytest.raises(ValueError, match="MeanFlowScheduler"):
        pipe([5], seed=1)


def test_dico_bench_times_the_jvp_training_step():
    from dico.benchmarking import benchmark
    from dico.config.benchmarking import BenchConfig

    results = benchmark(BenchConfig(models=["DiCo-Tiny"], tasks=["train-flow", "train-meanflow"], image_size=32,
                                    batch_sizes=[4], repeats=1, warmup=1, num_classes=10))
    assert [r.task for r in results] == ["train-flow", "train-meanflow"]
    assert all(r.median_seconds > 0 for r in results)
