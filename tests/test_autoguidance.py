"""Autoguidance (a guide model as the weak term of guidance) and class-balanced labels, as `dico sample` offers them."""

import numpy as np
import pytest
import torch

from dico.checkpoints import atomic_save
from dico.cli import main as cli
from dico.conditioning import ClassLabels
from dico.models import build_model, model_spec
from dico.objectives import DDPMObjective, FlowObjective
from dico.sampling import OutputSpace, SamplingOptions, generate, image_labels, sample_to_npz
from dico.sampling.guided import CacheOptions, Denoiser, GuideModel, Guidance, sample_latents

SPACE = OutputSpace(resolution=8, channels=1)
PIXELS = {"resolution": 8, "channels": 1, "vae": None, "latent_scale": 0.18215}


def small_dico(seed: int, hidden_size: int = 16, **overrides):
    """A small pixel-space DiCo with non-trivial weights (so outputs depend on the weights, labels and noise)."""
    torch.manual_seed(seed)
    spec = model_spec("DiCo-Tiny", **{"in_channels": 1, "num_classes": 10, "hidden_size": hidden_size,
                                      "depth": [1, 1, 1, 1, 1], **overrides})
    m = build_model(spec)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return m.eval(), spec


def save_checkpoint(path, model, spec, **fields):
    atomic_save({"format": "dico-train/1", "model": model.state_dict(), "ema": model.state_dict(), "spec": spec,
                 "space": PIXELS, "step": 10, **fields}, path)
    return path


@pytest.fixture(scope="module")
def main_model():
    return small_dico(0)[0]


@pytest.fixture(scope="module")
def guide_model():
    """Another size (hidden 8, not 16) and another dtype (bfloat16) than the main model."""
    return small_dico(1, hidden_size=8)[0].to(torch.bfloat16)


@pytest.mark.parametrize("method", ["ddpm", "ddim", "dpm++2m"])
def test_a_guide_that_is_the_main_model_gives_the_unguided_images_exactly(main_model, method):
    """good - bad is exactly 0, and the main model runs on the images alone as unguided sampling does, so the guided
    sampler's first half is the unguided sampler bit for bit (tested: images and not just to rounding)."""
    labels = torch.tensor([0, 3, 7, 9])
    unguided = generate(main_model, SPACE, range(4), labels, SamplingOptions(method=method, steps=6, seed=2))
    for scale in (0.5, 2.0, 7.0):
        options = SamplingOptions(method=method, steps=6, seed=2, cfg_scale=scale, guidance_channels="all")
        assert np.array_equal(generate(main_model, SPACE, range(4), labels, options, guide=main_model), unguided)
    # Before quantisation too: the samples themselves are equal, not just their 8-bit images.
    cond = ClassLabels(labels, 10)
    with torch.no_grad():
        plain = sample_latents(main_model, DDPMObjective(), cond, SamplingOptions(method=method, steps=6, seed=2),
                               range(4), (1, 8, 8), "cpu")
        guided = sample_latents(main_model, DDPMObjective(), cond, options, range(4), (1, 8, 8), "cpu",
                                guide=main_model)
    assert torch.equal(guided, plain)


def test_scale_one_gives_the_unguided_images_and_never_runs_the_guide(main_model, guide_model):
    calls = []
    hook = guide_model.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    labels = torch.tensor([1, 2, 3])
    try:
        with_guide = generate(main_model, SPACE, range(3), labels, SamplingOptions(steps=5, seed=4), guide=guide_model)
    finally:
        hook.remove()
    assert calls == []
    assert np.array_equal(with_guide, generate(main_model, SPACE, range(3), labels, SamplingOptions(steps=5, seed=4)))


def test_the_guided_output_is_bad_plus_w_times_good_minus_bad(main_model, guide_model):
    """D = D_bad + w (D_good - D_bad) on the guided channels, the guide given the SAME labels, in its own dtype; the
    learned variance is the main model's; both halves of the [images; copies] state get the same output."""
    x, t, y = torch.randn(3, 1, 8, 8), torch.full((6,), 300), torch.tensor([4, 5, 6])
    fn = Denoiser(main_model, ClassLabels(y, 10), Guidance(2.5, channels="all", strategy=GuideModel(guide_model)))
    with torch.no_grad():
        out = fn(torch.cat([x, x]), t)
        good = main_model(x, t[:3], y)
        bad = guide_model(x.to(torch.bfloat16), t[:3], y).float()
    assert out.dtype == torch.float32 and out.shape == (6, 2, 8, 8)
    assert torch.allclose(out[:3, :1], bad[:, :1] + 2.5 * (good[:, :1] - bad[:, :1]), atol=1e-6)
    assert torch.equal(out[:3, 1:], good[:, 1:])
    assert torch.equal(out[:3], out[3:])
    assert not torch.allclose(out[:3, :1], good[:, :1], atol=1e-3)  # the guide changes the prediction


def test_another_guide_changes_the_images_and_differs_from_cfg(main_model, guide_model):
    labels = torch.tensor([0, 1, 2, 3])
    options = SamplingOptions(steps=6, seed=0, cfg_scale=3.0, guidance_channels="all")
    plain = generate(main_model, SPACE, range(4), labels, SamplingOptions(steps=6, seed=0))
    auto = generate(main_model, SPACE, range(4), labels, options, guide=guide_model)
    cfg = generate(main_model, SPACE, range(4), labels, options)
    assert not np.array_equal(auto, plain) and not np.array_equal(auto, cfg)
    # Per image keyed as unguided sampling: a batch of one gives the same image (to one grey level of rounding).
    alone = generate(main_model, SPACE, [2], labels[2:3], options, guide=guide_model)
    assert np.abs(alone.astype(int) - auto[2:3].astype(int)).max() <= 1


def test_the_guide_runs_only_inside_the_guidance_interval(main_model, guide_model):
    calls = []
    hook = guide_model.register_forward_pre_hook(lambda module, args: calls.append(args[1][0].item()))
    options = SamplingOptions(method="ddim", steps=10, cfg_scale=2.0, guidance_interval=(0.0, 0.5))
    try:
        generate(main_model, SPACE, range(2), torch.tensor([1, 2]), options, guide=guide_model)
    finally:
        hook.remove()
    # Flow time 0 is noise: a DDPM timestep t is in [0, 0.5] when it lies in the noisier half of the 1000 steps.
    assert 0 < len(calls) < 10 and all(t >= 499 for t in calls)


def test_deep_cache_with_the_main_model_as_guide_gives_deep_cache_unguided(main_model):
    """The main model's deep features are cached as without a guide (the guide, another network, always runs in
    full); a guide that is the main model therefore gives the unguided DeepCache images exactly."""
    labels = torch.tensor([5, 6, 7])
    cached = dict(steps=9, seed=1, cache_interval=3)
    unguided = generate(main_model, SPACE, range(3), labels, SamplingOptions(**cached))
    guided = generate(main_model, SPACE, range(3), labels, SamplingOptions(cfg_scale=3.0, **cached), guide=main_model)
    assert np.array_equal(guided, unguided)
    x, t, y = torch.randn(3, 1, 8, 8), torch.full((6,), 300), labels
    fn = Denoiser(main_model, ClassLabels(y, 10), Guidance(2.0, strategy=GuideModel(small_dico(3, 8)[0])),
                  cache=CacheOptions(interval=3))
    sizes = []
    hook = main_model.x_embedder.register_forward_hook(lambda m, i, o: sizes.append(len(i[0])))
    with torch.no_grad():
        fn(torch.cat([x, x]), t), fn(torch.cat([x, x]), t)
    hook.remove()
    assert sizes == [3, 3] and fn.cache.features.shape[0] == 3  # the main model sees the images alone


def test_a_guide_must_match_the_main_models_input_and_noise_channels(main_model):
    y = ClassLabels(torch.tensor([1]), 10)
    for other, what in [(small_dico(1, 8, num_classes=5)[0], "classes 5 .guide. vs 10 .main."),
                        (small_dico(1, 8, in_channels=3)[0], "input channels 3 .guide. vs 1 .main.")]:
        with pytest.raises(ValueError, match=what):
            Denoiser(main_model, y, Guidance(2.0, strategy=GuideModel(other)))


@pytest.fixture(scope="module")
def checkpoints(main_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpts")
    spec = small_dico(0)[1]
    guide, guide_spec = small_dico(1, hidden_size=8)
    return {
        "main": save_checkpoint(folder / "main.pt", main_model, spec),
        "guide": save_checkpoint(folder / "guide.pt", guide, guide_spec),
        "flow": save_checkpoint(folder / "flow.pt", guide, guide_spec, objective=FlowObjective().to_dict()),
        "classes": save_checkpoint(folder / "classes.pt", *small_dico(1, 8, num_classes=5)),
        "resolution": save_checkpoint(folder / "resolution.pt", guide, guide_spec, space={**PIXELS, "resolution": 16}),
        "names": save_checkpoint(folder / "names.pt", guide, guide_spec, class_names=list("abcdefghij")),
    }


def test_cli_autoguides_with_a_guide_checkpoint(checkpoints, main_model, tmp_path, capsys):
    out = tmp_path / "s.npz"
    args = ["sample", "--ckpt", str(checkpoints["main"]), "--steps", "4", "--num-samples", "4", "--classes", "1,2",
            "--cfg-scale", "2", "--guidance-channels", "all", "--out", str(out)]
    assert cli(args + ["--guide-ckpt", str(checkpoints["guide"])]) == 0
    guide = small_dico(1, hidden_size=8)[0]
    expected = generate(main_model, SPACE, range(4), torch.tensor([1, 2, 1, 2]),
                        SamplingOptions(steps=4, cfg_scale=2.0, guidance_channels="all"), guide=guide)
    with np.load(out) as f:
        assert np.array_equal(f["arr_0"], expected)
    # The guide is part of what a finished file was sampled with: CFG (no guide) is another run.
    assert cli(args) == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.parametrize("which, message", [
    ("flow", "the objective differs .*kind=ddpm"),
    ("classes", "classes 5 .guide. vs 10 .main."),
    ("resolution", "the output space's resolution differs .16 vs 8."),
])
def test_cli_refuses_a_guide_that_does_not_match_in_one_line(checkpoints, tmp_path, capsys, which, message):
    out = tmp_path / "x.png"
    assert cli(["sample", "--ckpt", str(checkpoints["main"]), "--guide-ckpt", str(checkpoints[which]),
                "--cfg-scale", "2", "--steps", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cannot guide" in err
    import re

    assert re.search(message, err), err
    assert not out.exists()


def test_class_names_are_compared_when_both_record_them(checkpoints, tmp_path, capsys):
    """A file without class names (official, or this main file) is taken at its class count."""
    out = tmp_path / "x.png"
    args = ["sample", "--guide-ckpt", str(checkpoints["names"]), "--steps", "2", "--out", str(out)]
    assert cli(args + ["--ckpt", str(checkpoints["main"])]) == 0
    assert cli(args + ["--ckpt", str(checkpoints["names"]), "--overwrite"]) == 0


def test_balanced_labels_give_every_class_exactly_n_over_classes_images():
    labels = image_labels(range(50), 10, seed=0, labels="balanced")
    assert np.bincount(labels.numpy(), minlength=10).tolist() == [5] * 10
    # A function of the image index alone: any subset of indices, in any order, gets the same labels.
    assert image_labels([7, 3, 42], 10, seed=5, labels="balanced").tolist() == [7, 3, 2]
    assert image_labels(range(6), 10, 0, classes=[4, 2], labels="balanced").tolist() == [4, 2, 4, 2, 4, 2]
    with pytest.raises(ValueError, match="--labels must be one of random, balanced"):
        image_labels([0], 10, 0, labels="even")


def test_balanced_npz_does_not_depend_on_the_process_count(main_model, tmp_path):
    options = SamplingOptions(steps=2, seed=0, batch_size=3)
    one = sample_to_npz(main_model, SPACE, tmp_path / "one.npz", 20, options, progress=False, labels="balanced")
    out = tmp_path / "three.npz"
    for rank in (2, 1):  # processes 2 and 1 of 3 finish their shards; process 0 does its own and merges
        sample_to_npz(main_model, SPACE, out, 20, options, rank=rank, world=3, progress=False, labels="balanced")
    sample_to_npz(main_model, SPACE, out, 20, options, rank=0, world=3, progress=False, labels="balanced")
    with np.load(one) as a, np.load(out) as b:
        assert np.array_equal(a["arr_1"], b["arr_1"]) and np.array_equal(a["arr_0"], b["arr_0"])
        assert np.bincount(a["arr_1"], minlength=10).tolist() == [2] * 10


def test_cli_balanced_labels(checkpoints, tmp_path, capsys):
    out = tmp_path / "b.npz"
    base = ["sample", "--ckpt", str(checkpoints["main"]), "--steps", "2", "--labels", "balanced"]
    assert cli(base + ["--num-samples", "20", "--out", str(out)]) == 0
    with np.load(out) as f:
        assert np.bincount(f["arr_1"], minlength=10).tolist() == [2] * 10
    capsys.readouterr()
    assert cli(base + ["--num-samples", "25", "--out", str(tmp_path / "c.npz")]) == 2
    err = capsys.readouterr().err
    assert "--num-samples 25 is not divisible by the 10 classes; use a multiple of 10, e.g. 20" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "c.npz").exists()
    assert not (tmp_path / "c.npz.parts").exists()


# ------------------------------------------------------------------------------------- the pipeline and the demo


def test_the_pipeline_autoguides_with_a_guide_transformer_as_dico_sample_does(checkpoints, main_model):
    from dico.pipelines import load_guide_pipeline, load_pipeline

    pipe = load_pipeline(checkpoints["main"])
    guide = load_guide_pipeline(pipe, checkpoints["guide"])
    pipe.set_progress_bar_config(disable=True)
    labels = [3, 7, 1, 0]
    got = pipe(labels, guidance_scale=2.0, num_inference_steps=8, seed=5, guidance_channels="all",
               guide_transformer=guide.transformer).images
    expected = generate(main_model, SPACE, range(4), torch.tensor(labels),
                        SamplingOptions(steps=8, cfg_scale=2.0, seed=5, guidance_channels="all"),
                        guide=small_dico(1, hidden_size=8)[0])
    np.testing.assert_array_equal(np.stack([np.asarray(im.convert("RGB")) for im in got]), expected)
    # The main model as its own guide: the unguided images at any scale.
    same = pipe(labels, guidance_scale=4.0, num_inference_steps=8, seed=5, guide_transformer=pipe.transformer)
    plain = pipe(labels, guidance_scale=1.0, num_inference_steps=8, seed=5)
    for a, b in zip(same.images, plain.images):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_guide_pipeline_that_does_not_fit_is_refused_in_one_line(checkpoints):
    from dico.pipelines import load_guide_pipeline, load_pipeline

    pipe = load_pipeline(checkpoints["main"])
    with pytest.raises(ValueError, match=r"^the guide cannot guide this model: the objective differs"):
        load_guide_pipeline(pipe, checkpoints["flow"])
    with pytest.raises(ValueError, match=r"classes 5 \(guide\) vs 10 \(main\)$"):
        load_guide_pipeline(pipe, checkpoints["classes"])
    with pytest.raises(ValueError, match="the sample size differs .16 vs 8."):
        load_guide_pipeline(pipe, checkpoints["resolution"])


def test_the_demo_serves_autoguided_images(checkpoints):
    pytest.importorskip("gradio")
    from PIL import Image

    from dico.demo import build_demo
    from dico.objectives import DDPMObjective
    from dico.pipelines import load_pipeline

    guide = load_pipeline(checkpoints["guide"])
    calls = []
    guide.transformer.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    demo = build_demo(checkpoints["names"], device="cpu", guide=guide)
    ddpm = next(iter(DDPMObjective().pipeline_samplers()))
    gallery, status = demo(["c", "h"], 1, 2.0, 4, ddpm, 5, False, api_name="generate")
    assert "autoguidance 2" in status and calls == [2] * 4  # the guide ran at every step, on the two images
    pipe = load_pipeline(checkpoints["names"])
    pipe.set_progress_bar_config(disable=True)
    expected = pipe([2, 7], guidance_scale=2.0, num_inference_steps=4, seed=5, guide_transformer=guide.transformer)
    for item, want in zip(gallery, expected.images):
        shown = np.asarray(Image.open(item["image"]).convert("RGB"))
        step = shown.shape[0] // 8
        np.testing.assert_array_equal(shown[::step, ::step], np.asarray(want.convert("RGB")))
    with pytest.raises(ValueError, match="cannot guide"):  # a path is loaded and checked
        build_demo(checkpoints["main"], device="cpu", guide=checkpoints["classes"])


def test_a_model_without_a_null_class_can_be_autoguided(guide_model):
    """Autoguidance gives the guide the same labels: no null class is needed (CFG refuses such a model)."""
    no_null = small_dico(0, class_dropout_prob=0.0)[0]
    options = SamplingOptions(steps=3, cfg_scale=2.0)
    with pytest.raises(ValueError, match="null class"):
        generate(no_null, SPACE, [0], torch.tensor([1]), options)
    assert generate(no_null, SPACE, [0], torch.tensor([1]), options, guide=guide_model).shape == (1, 8, 8, 3)


@pytest.mark.parametrize("method, sampler", [("euler", "ode"), ("dopri5", "ode"), ("Euler", "sde")])
def test_a_flow_model_guided_by_itself_gives_its_unguided_samples_exactly(main_model, method, sampler):
    cond = ClassLabels(torch.tensor([1, 2, 3]), 10)
    base = dict(method=method, sampler=sampler, steps=8, seed=0)
    with torch.no_grad():
        plain = sample_latents(main_model, FlowObjective(), cond, SamplingOptions(**base), range(3), (1, 8, 8), "cpu")
        guided = sample_latents(main_model, FlowObjective(), cond, SamplingOptions(cfg_scale=3.0, **base), range(3),
                                (1, 8, 8), "cpu", guide=main_model)
    assert torch.equal(guided, plain)


def test_a_meanflow_model_passes_its_second_time_to_the_guide_too():
    """MeanFlow's second time r is a per-sample input like t: both models get it (a guide without it would fail)."""
    from dico.objectives import MeanFlowObjective

    main, cond = small_dico(0, second_time=True)[0], ClassLabels(torch.tensor([1, 2, 3]), 10)
    with torch.no_grad():
        run = lambda scale, guide: sample_latents(main, MeanFlowObjective(), cond,  # noqa: E731
                                                  SamplingOptions(steps=2, seed=0, cfg_scale=scale), range(3),
                                                  (1, 8, 8), "cpu", guide=guide)
        plain = run(1.0, None)
        assert torch.equal(run(3.0, main), plain)
        assert not torch.allclose(run(3.0, small_dico(1, 8, second_time=True)[0]), plain, atol=1e-3)
