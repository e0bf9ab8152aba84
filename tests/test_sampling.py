"""Sampling: per-image seeds, ADM .npz output, resumable multi-process sharding and the `dico sample` command."""

import numpy as np
import pytest
import torch

from dico.checkpoints import atomic_save
from dico.cli import main as cli
from dico.models import build_model, model_spec
from dico.conditioning import ClassLabels
from dico.objectives import FlowObjective
from dico.sampling import OutputSpace, SampleConfig, SamplingOptions, generate, image_labels, sample, sample_to_npz
from dico.sampling.guided import CacheOptions, Denoiser, Guidance
from dico.transport import Sampler, create_transport

SPACE = OutputSpace(resolution=8, channels=1)


@pytest.fixture(scope="module")
def model():
    """A small pixel-space DiCo with non-trivial weights (so samples depend on labels and noise)."""
    torch.manual_seed(0)
    m = build_model(model_spec("DiCo-Tiny", in_channels=1, num_classes=10, hidden_size=16, depth=[1, 1, 1, 1, 1]))
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return m.eval()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "0000010.pt"
    spec = model_spec("DiCo-Tiny", in_channels=1, num_classes=10, hidden_size=16, depth=[1, 1, 1, 1, 1])
    atomic_save({"format": "dico-train/1", "model": model.state_dict(), "ema": model.state_dict(), "spec": spec,
                 "space": {"resolution": 8, "channels": 1, "vae": None, "latent_scale": 0.18215}, "step": 10}, path)
    return path


def test_images_do_not_depend_on_batch_size(model):
    options = SamplingOptions(method="ddpm", steps=5, cfg_scale=2.0, seed=3)
    labels = torch.tensor([1, 2, 3, 4, 5, 6])
    together = generate(model, SPACE, list(range(6)), labels, options)
    apart = np.concatenate([generate(model, SPACE, [i], labels[i:i + 1], options) for i in range(6)])
    assert together.shape == (6, 8, 8, 3) and together.dtype == np.uint8
    # Batched convolutions may round differently from single-image ones: allow one grey level.
    assert np.abs(together.astype(int) - apart.astype(int)).max() <= 1
    assert not np.array_equal(together[0], together[1])


def test_seed_and_label_change_the_image(model):
    options = SamplingOptions(method="ddim", steps=5, seed=0)
    base = generate(model, SPACE, [0], torch.tensor([1]), options)
    other_seed = generate(model, SPACE, [0], torch.tensor([1]), SamplingOptions(method="ddim", steps=5, seed=1))
    other_label = generate(model, SPACE, [0], torch.tensor([7]), options)
    assert not np.array_equal(base, other_seed) and not np.array_equal(base, other_label)


def test_labels_are_keyed_per_image():
    first = image_labels(range(10), 1000, seed=0)
    assert torch.equal(image_labels(range(5, 10), 1000, seed=0), first[5:])
    assert image_labels([0, 1, 2], 10, 0, classes=[4, 2]).tolist() == [4, 2, 4]


def test_npz_is_adm_format_and_resumes_across_processes(model, tmp_path):
    options = SamplingOptions(method="ddpm", steps=4, cfg_scale=1.5, seed=0, batch_size=3)
    reference = sample_to_npz(model, SPACE, tmp_path / "ref.npz", 10, options, classes=[0, 3, 9], progress=False)
    with np.load(reference) as ref:
        images, labels = ref["arr_0"], ref["arr_1"]
    assert images.shape == (10, 8, 8, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 3, 9, 0, 3, 9, 0, 3, 9, 0]
    assert not (tmp_path / "ref.npz.parts").exists()

    # Process 1 of 2 does its shards, then "dies"; a single process resumes and completes the run.
    out = tmp_path / "split.npz"
    assert sample_to_npz(model, SPACE, out, 10, options, [0, 3, 9], rank=1, world=2, progress=False) is None
    done = sorted(p.name for p in (tmp_path / "split.npz.parts").glob("0*.npz"))
    assert done == ["000001.npz", "000003.npz"]
    sample_to_npz(model, SPACE, out, 10, options, [0, 3, 9], progress=False)
    with np.load(out) as split:
        assert np.array_equal(split["arr_0"], images) and np.array_equal(split["arr_1"], labels)


def test_resuming_with_other_settings_is_refused(model, tmp_path):
    out = tmp_path / "s.npz"
    sample_to_npz(model, SPACE, out, 4, SamplingOptions(steps=2, batch_size=2), rank=1, world=2, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        sample_to_npz(model, SPACE, out, 4, SamplingOptions(steps=3, batch_size=2), progress=False)


def test_guidance_needs_a_null_class(tmp_path):
    m = build_model(model_spec("DiCo-Tiny", in_channels=1, num_classes=10, class_dropout_prob=0.0)).eval()
    with pytest.raises(ValueError, match="null class"):
        generate(m, SPACE, [0], torch.tensor([1]), SamplingOptions(steps=2, cfg_scale=2.0))


def test_cli_writes_png_and_npz_from_our_checkpoint(checkpoint, tmp_path, capsys):
    png = tmp_path / "grid.png"
    assert cli(["sample", "--ckpt", str(checkpoint), "--steps", "3", "--num-samples", "6", "--classes", "1,2",
                "--cfg-scale", "2", "--out", str(png)]) == 0
    from PIL import Image

    assert Image.open(png).size[0] > 8 * 2
    npz = tmp_path / "s.npz"
    assert cli(["sample", "--ckpt", str(checkpoint), "--method", "dpm++2m", "--steps", "5", "--num-samples", "5",
                "--out", str(npz)]) == 0
    with np.load(npz) as f:
        assert f["arr_0"].shape == (5, 8, 8, 3) and f["arr_1"].shape == (5,)
    assert "wrote 5 samples" in capsys.readouterr().out


def test_cli_errors_are_clear(checkpoint, tmp_path, capsys):
    official = tmp_path / "official.pt"
    torch.save(torch.load(checkpoint, weights_only=True)["model"], official)  # bare weights, no spec
    assert cli(["sample", "--ckpt", str(official), "--out", str(tmp_path / "x.png")]) == 2
    assert "pass --model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # checked while the flags are read: the flag parser's message
        cli(["sample", "--ckpt", str(checkpoint), "--out", str(tmp_path / "x.jpg")])
    assert refused.value.code == 2 and "--out must end in .png" in capsys.readouterr().err
    assert cli(["sample", "--ckpt", str(checkpoint), "--classes", "12", "--out", str(tmp_path / "x.png")]) == 2
    assert "--classes (class_labels) must be integer class ids in [0, 10), got 12" in capsys.readouterr().err


def test_guidance_interval_guides_only_inside_it(model):
    """Inside the flow-time interval the denoiser runs both halves (cond and null), outside it the cond half alone."""
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args: calls.append((len(args[0]), args[1][0].item())))
    denoiser = Denoiser(model, ClassLabels(torch.tensor([1, 2]), 10), Guidance(2.0, interval=(0.3, 0.7)),
                        flow_time=FlowObjective().flow_time)
    with torch.no_grad():
        z = denoiser.layout(torch.randn(2, 1, 8, 8))
        Sampler(create_transport()).sample_ode(sampling_method="euler", num_steps=11)(z, denoiser)
    hook.remove()
    guided, alone = [t for n, t in calls if n == 4], [t for n, t in calls if n == 2]
    assert guided and all(0.3 <= t <= 0.7 for t in guided)
    assert alone and all(t < 0.3 or t > 0.7 for t in alone)
    with pytest.raises(ValueError, match="cannot be combined"):
        Denoiser(model, ClassLabels(torch.tensor([1]), 10), Guidance(2.0, interval=(0.3, 0.7)),
                 cache=CacheOptions(interval=2))


def test_out_is_a_png_grid_or_an_adm_npz_and_sample_to_npz_writes_only_npz(tmp_path):
    grid_or_npz = r"--out must end in \.png \(a grid\) or \.npz \(ADM format\), got "
    with pytest.raises(ValueError, match=f"^{grid_or_npz}x\\.jpg$"):
        SampleConfig(ckpt="c.pt", out="x.jpg")
    config = SampleConfig(ckpt="c.pt", out=str(tmp_path / "x.png"))
    config.out = str(tmp_path / "x")  # (a config edited after construction is checked again by sample)
    with pytest.raises(ValueError, match=f"^{grid_or_npz}.*x$"):
        sample(config)
    with pytest.raises(ValueError, match=r"^--out must end in \.npz, got x\.png$"):
        sample_to_npz(None, SPACE, "x.png", 1, SamplingOptions())


def test_deep_cache_refresh_steps_are_exact_and_cached_steps_skip_the_deep_levels(model):
    from dico.models.dico import FeatureCache

    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([500, 500]), torch.tensor([1, 2])
    with torch.no_grad():
        full = model(x, t, y)
        for depth in (1, 2):
            cache = FeatureCache(depth)
            assert torch.equal(model(x, t, y, cache=cache), full)  # a refresh call is the full network
            cache.refresh = False
            calls = []
            hook = model.latent[0].register_forward_hook(lambda *a: calls.append(1))
            reused = model(x, t, y, cache=cache)
            hook.remove()
            assert not calls  # the middle stage did not run
            assert torch.allclose(reused, full, atol=1e-6)  # same input and step: same features
            moved = model(x + 0.5, t, y, cache=cache)
            assert not torch.allclose(moved, model(x + 0.5, t, y), atol=1e-4)  # stale deep features are used


def test_deep_cache_sampling_stays_close_to_uncached(model):
    options = SamplingOptions(method="ddim", steps=10, cfg_scale=2.0, seed=0)
    labels = torch.tensor([1, 2, 3, 4])
    plain = generate(model, SPACE, list(range(4)), labels, options)
    options.cache_interval = 2
    cached = generate(model, SPACE, list(range(4)), labels, options)
    drift = np.abs(plain.astype(float) - cached.astype(float)).mean()
    assert 0 < drift < 8  # mean absolute drift in grey levels out of 255
    with pytest.raises(ValueError, match="--cache-depth must be an integer in"):  # checked again when sampling
        options.cache_depth = 3
        generate(model, SPACE, [0], labels[:1], options)


def test_official_latent_checkpoint_samples_through_its_vae(tmp_path):
    """An official-style bare state dict needs --model; latents decode through the VAE (a tiny real one here)."""
    from diffusers import AutoencoderKL

    from dico.data import load_vae

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    vae.save_pretrained(tmp_path / "vae")  # downsamples by 2, so "--image-size 64" means 8x8 latents -> 16x16 px
    model = build_model(model_spec("DiCo-S", num_classes=10, hidden_size=32, depth=[1, 1, 1, 1, 1]))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    torch.save(model.state_dict(), tmp_path / "official.pt")
    out = tmp_path / "s.npz"
    assert cli(["sample", "--ckpt", str(tmp_path / "official.pt"), "--model", "DiCo-S", "--num-classes", "10",
                "--image-size", "64", "--vae", str(tmp_path / "vae"), "--steps", "2", "--num-samples", "2",
                "--classes", "3,4", "--out", str(out)]) != 0  # DiCo-S is 128 wide: the tiny weights do not fit
    model_b = build_model(model_spec("DiCo-S", num_classes=10))
    for p in model_b.parameters():
        torch.nn.init.normal_(p, std=0.02)
    torch.save(model_b.state_dict(), tmp_path / "official.pt")
    assert cli(["sample", "--ckpt", str(tmp_path / "official.pt"), "--model", "DiCo-S", "--num-classes", "10",
                "--image-size", "64", "--vae", str(tmp_path / "vae"), "--steps", "2", "--num-samples", "2",
                "--classes", "3,4", "--out", str(out)]) == 0
    with np.load(out) as f:
        images, labels = f["arr_0"], f["arr_1"]
    assert images.shape == (2, 16, 16, 3) and labels.tolist() == [3, 4]
    space = OutputSpace(8, 4, str(tmp_path / "vae"))
    expected = generate(model_b.eval(), space, [0, 1], torch.tensor([3, 4]), SamplingOptions(steps=2),
                        vae=load_vae(tmp_path / "vae", "cpu"))
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1


def test_deep_cache_with_guidance_refreshes_exactly_and_runs_the_cond_half_on_cached_calls(model):
    x = torch.randn(3, 1, 8, 8)
    x2, t, y = torch.cat([x, x]), torch.full((6,), 400), torch.tensor([1, 2, 3, 10, 10, 10])
    fn = Denoiser(model, ClassLabels(y[:3], 10), Guidance(2.5, channels=1), cache=CacheOptions(interval=3, depth=1))
    sizes = []
    hook = model.x_embedder.register_forward_hook(lambda m, i, o: sizes.append(len(i[0])))
    with torch.no_grad():
        first = fn(x2, t)
        second = fn(x2 + 0.01, t)
    hook.remove()
    assert sizes == [6, 3]  # the cached call ran the conditional half only
    from dico.models.dico import FeatureCache

    with torch.no_grad():
        assert torch.allclose(first, model.forward_with_cfg(x2, t, y, 2.5, 1), atol=1e-6)  # refresh = full CFG
        stale = FeatureCache(1, refresh=False, features=fn.cache.features[:3])
        cond = model(x2[:3] + 0.01, t[:3], y[:3], cache=stale)
    assert torch.allclose(second[:3, :1], cond[:, :1] + 1.5 * fn.direction, atol=1e-5)
    assert torch.equal(second[:3], second[3:])


def test_our_checkpoint_keeps_its_own_model_and_space(checkpoint, tmp_path, capsys):
    out = tmp_path / "x.png"
    assert cli(["sample", "--ckpt", str(checkpoint), "--model", "DiCo-Tiny", "--steps", "2", "--num-samples", "2",
                "--out", str(out)]) == 0  # the same name as stored: fine, and still 8x8 pixels (no VAE)
    assert cli(["sample", "--ckpt", str(checkpoint), "--model", "DiCo-XL", "--out", str(out), "--overwrite"]) == 2
    assert "holds DiCo-Tiny, not DiCo-XL" in capsys.readouterr().err
