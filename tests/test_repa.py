"""REPA and latents from any autoencoder: the projector and loss against a hand computation, the hooked layers of
DiCo and DiT, grid resizing, the HASTE stop, encoders from local files, and extraction end to end (encoder tokens,
a non-SD AutoencoderKL and an AutoencoderDC, resume, channel statistics, decoding) on tiny random networks."""

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from dico.data import DigitsDataset, LatentDataset, build_dataset, extract_latents, load_vae
from dico.data.folders import ImageFolderDataset, augment_generator
from dico.data.latents import DONE, META, open_moments, open_repa_features
from dico.data.vae import check_vae_matches, decode_latents, latent_normalization
from dico.models import create_model
from dico.repa import (DigitsPatchEncoder, RepaConfig, RepaLoss, feature_module, load_encoder, repa_dataset,
                       repa_weight_at, resize_tokens, save_encoder_file, train_digits_encoder)
from helpers import no_warnings, save_tiny_vae

SIZE = 16  # image size of the extraction tests; the tiny autoencoders halve it once -> 8x8 latents


def tiny_dico(**overrides):
    torch.manual_seed(0)
    return create_model("DiCo-Tiny", **{"in_channels": 4, "num_classes": 10, **overrides})


def run(model, x, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 1000, (len(x),), generator=g)
    y = torch.randint(0, 10, (len(x),), generator=g)
    return model(x, t, y)


# ---------------------------------------------------------------------------------------------------- loss

def test_projector_and_loss_match_a_hand_computation():
    model = tiny_dico()
    repa = RepaLoss(model, RepaConfig(enabled=True, projector_dim=16), target_dim=5).attach(model)
    kept = []
    model.encoder_level_2[-1].register_forward_hook(lambda m, a, out: kept.append(out.detach().double()))
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    run(model, x)
    target = torch.randn(3, 16, 5, generator=torch.Generator().manual_seed(2))  # level 2 of 8x8 is 4x4
    loss = repa(target)

    # by hand, in float64: tokens in row-major grid order, Linear-SiLU-Linear-SiLU-Linear, cosine per position
    tokens = kept[0].permute(0, 2, 3, 1).reshape(3, 16, 64)
    (w0, b0), (w1, b1), (w2, b2) = [(layer.weight.double(), layer.bias.double()) for layer in repa.projector[::2]]
    silu = lambda v: v / (1 + torch.exp(-v))  # noqa: E731
    z = silu(silu(tokens @ w0.T + b0) @ w1.T + b1) @ w2.T + b2
    t = target.double()
    cos = (z * t).sum(-1) / (z.norm(dim=-1) * t.norm(dim=-1))
    assert [type(m) for m in repa.projector] == [nn.Linear, nn.SiLU, nn.Linear, nn.SiLU, nn.Linear]
    assert [tuple(m.weight.shape) for m in repa.projector[::2]] == [(16, 64), (16, 16), (5, 16)]
    torch.testing.assert_close(loss.double(), -cos.mean(), rtol=1e-5, atol=1e-6)


def test_the_projector_stays_outside_the_model_and_trains_only_the_layers_below_it():
    model = tiny_dico()
    keys = set(model.state_dict())
    repa = RepaLoss(model, RepaConfig(enabled=True, projector_dim=8), target_dim=6).attach(model)
    assert set(model.state_dict()) == keys  # EMA / inference / export weights never hold the projector
    assert set(repa.state_dict()) == {f"projector.{k}" for k in repa.projector.state_dict()}
    run(model, torch.randn(2, 4, 8, 8))
    repa(torch.randn(2, 16, 6)).backward()
    assert all(p.grad is not None for p in repa.projector.parameters())
    # (the blocks' zero-initialised gates pass only the residual stream at first)
    assert all(p.grad.abs().sum() > 0 for p in model.x_embedder.parameters())
    assert all(p.grad is None for p in model.decoder_level_1.parameters())  # nothing above level 2
    with pytest.raises(RuntimeError, match="ran 0 times"):
        repa(torch.randn(2, 16, 6))
    repa.detach()
    run(model, torch.randn(2, 4, 8, 8))
    with pytest.raises(RuntimeError, match="attach"):
        repa(torch.randn(2, 16, 6))


@pytest.mark.parametrize("layer, shape", [
    ("encoder_level_1", (32, 16, 16)), ("encoder_level_2", (64, 8, 8)), ("encoder_level_2.0", (64, 8, 8)),
    ("latent", (128, 4, 4)), ("decoder_level_2", (64, 8, 8)), ("decoder_level_1", (64, 16, 16)),
    ("auto", (64, 8, 8))])
def test_the_hook_captures_the_chosen_dico_level(layer, shape):
    model = tiny_dico()
    repa = RepaLoss(model, RepaConfig(enabled=True, layer=layer, projector_dim=8), target_dim=4).attach(model)
    stage, _, block = (layer if layer != "auto" else "encoder_level_2").partition(".")
    expected = []
    getattr(model, stage)[int(block) if block else -1].register_forward_hook(lambda m, a, out: expected.append(out))
    run(model, torch.randn(2, 4, 16, 16))
    captured = repa.take_feature()
    assert tuple(captured.shape) == (2, *shape) and captured is expected[0]
    assert repa.projector[0].in_features == shape[0]


def test_the_hook_captures_the_chosen_dit_block_and_survives_gradient_checkpointing():
    torch.manual_seed(0)
    model = create_model("DiT-S/2", input_size=8, in_channels=4, num_classes=10, depth=6)
    assert feature_module(model, "auto") is model.blocks[3]  # REPA's depth 4 below 24 blocks
    repa = RepaLoss(model, RepaConfig(enabled=True, layer="2", projector_dim=8), target_dim=4).attach(model)
    expected = []
    model.blocks[1].register_forward_hook(lambda m, a, out: expected.append(out))
    run(model, torch.randn(2, 4, 8, 8))
    captured = repa.take_feature()
    assert tuple(captured.shape) == (2, 16, 384) and captured is expected[0]
    with pytest.raises(ValueError, match="blocks 1..6"):
        feature_module(model, "7")
    with pytest.raises(ValueError, match="encoder_level_2"):
        feature_module(tiny_dico(), "encoder_level_9")

    from dico.training.loop import enable_gradient_checkpointing

    dico = tiny_dico()
    repa = RepaLoss(dico, RepaConfig(enabled=True, projector_dim=8), target_dim=4).attach(dico)
    enable_gradient_checkpointing(dico)
    run(dico, torch.randn(2, 4, 8, 8))
    repa(torch.randn(2, 16, 4)).backward()  # recomputation in backward does not fire the hook again
    assert all(p.grad.abs().sum() > 0 for p in dico.x_embedder.parameters())


def test_grids_are_resized_by_area_when_shrinking_and_bilinearly_otherwise():
    tokens = torch.randn(2, 64, 3)  # an 8x8 grid
    grid = tokens.view(2, 8, 8, 3)
    pooled = grid.view(2, 4, 2, 4, 2, 3).mean(dim=(2, 4)).reshape(2, 16, 3)
    torch.testing.assert_close(resize_tokens(tokens, (8, 8), (4, 4)), pooled)
    small = torch.arange(4.0).view(1, 4, 1)  # a 2x2 grid [[0, 1], [2, 3]] -> 4x4, half-pixel centres
    up = resize_tokens(small, (2, 2), (4, 4)).view(4, 4)
    assert up[0, 0] == 0 and up[0, 1] == 0.25 and up[1, 1] == 0.75 and up[3, 3] == 3
    assert resize_tokens(tokens, (8, 8), (8, 8)) is tokens

    model = tiny_dico(in_channels=1)
    target = torch.randn(2, 64, 6)  # an 8x8 encoder grid against DiCo level 2 of 8x8 digits (4x4)
    for resize in ("target", "features"):
        repa = RepaLoss(model, RepaConfig(enabled=True, projector_dim=8, resize=resize), 6).attach(model)
        kept = []
        model.encoder_level_2[-1].register_forward_hook(lambda m, a, out: kept.append(out))
        run(model, torch.randn(2, 1, 8, 8))
        loss = repa(target)
        projected = repa.projector(kept[-1].flatten(2).transpose(1, 2))
        if resize == "target":
            other = target.view(2, 4, 2, 4, 2, 6).mean(dim=(2, 4)).reshape(2, 16, 6)
        else:
            other = target
            projected = F.interpolate(projected.transpose(1, 2).reshape(2, 6, 4, 4), size=(8, 8), mode="bilinear",
                                      align_corners=False).flatten(2).transpose(1, 2)
        torch.testing.assert_close(loss, -F.cosine_similarity(projected, other, dim=-1).mean())
        repa.detach()


def test_haste_stops_alignment_at_the_stop_step():
    config = RepaConfig(enabled=True, weight=0.5, stop_step=3)
    assert [repa_weight_at(config, s) for s in range(5)] == [0.5, 0.5, 0.5, 0.0, 0.0]
    assert config.weight_at(10**6) == 0.0
    assert RepaConfig(enabled=True, weight=0.7).weight_at(10**6) == 0.7
    assert RepaConfig(weight=0.7).weight_at(0) == 0.0  # not enabled
    with pytest.raises(ValueError, match="resize"):
        RepaConfig(resize="nearest")


def test_a_repa_training_step_resumes_exactly_from_the_model_and_projector_state(tmp_path):
    """dico's trainer with REPA on the digits (their teacher's tokens): 4 steps straight, or 2 and a resume to 4,
    end in the same model, EMA, optimizer and projector state, bit for bit; the resumed half crosses the HASTE stop
    (step 3), so the alignment weight, not just the state, is picked up again at the right step."""
    from dico.training import train
    from helpers import tiny_run_config

    def config(results, **changes):
        return tiny_run_config(results, repa_encoder="digits", repa_layer="encoder_level_1", repa_projector_dim=16,
                               repa_stop_step=3, **changes)

    with no_warnings():  # the documented REPA path, its cached digits teacher read back included
        straight = train(config(tmp_path / "straight"), progress=False, write_grid=False)
    halfway = train(config(tmp_path / "resumed", max_steps=2), progress=False, write_grid=False)
    resumed = train(config(tmp_path / "resumed"), resume="auto", progress=False, write_grid=False)
    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    assert a["step"] == b["step"] == 4
    for key in ("model", "ema", "repa_projector"):
        assert a[key].keys() == b[key].keys(), key
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert a["opt"]["param_groups"] == b["opt"]["param_groups"]
    assert a["opt"]["state"].keys() == b["opt"]["state"].keys()
    for index, state in a["opt"]["state"].items():  # Adam's moments and step count of every parameter
        assert state.keys() == b["opt"]["state"][index].keys()
        assert all(torch.equal(value, b["opt"]["state"][index][name]) for name, value in state.items()), index
    # The projector is really trained: it moved between the two halves (at step 2, before the stop), and the
    # optimizer holds its parameters beside the model's.
    first = torch.load(halfway, weights_only=True)
    assert any(not torch.equal(first["repa_projector"][k], a["repa_projector"][k]) for k in a["repa_projector"])
    model = create_model(a["spec"]["name"], **a["spec"]["config"])
    assert len(a["opt"]["state"]) == len(list(model.parameters())) + len(a["repa_projector"])


# ---------------------------------------------------------------------------------------------------- encoders

class TinyViT(nn.Module):
    """A ViT-like encoder with a class token and one register token before its 4x4 patch tokens."""

    def __init__(self, dim: int = 12, patch: int = 4):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.prefix = nn.Parameter(torch.randn(1, 2, dim))
        self.block = nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.block(torch.cat([self.prefix.expand(len(x), -1, -1), tokens], dim=1))


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("encoder") / "tiny-vit.pt"
    return save_encoder_file(path, TinyViT().eval(), torchscript=True, input_size=16, prefix_tokens=2,
                             mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def test_a_torchscript_encoder_gives_its_patch_tokens_after_its_own_preprocessing(vit_file):
    encoder = load_encoder(str(vit_file), image_size=24)
    assert encoder.name.startswith(f"file:{vit_file.resolve()}#")
    images = torch.rand(2, 3, 24, 24) * 2 - 1
    x = F.interpolate((images + 1) / 2, size=(16, 16), mode="bicubic", align_corners=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    reference = torch.jit.load(str(vit_file))(x)[:, 2:]
    tokens = encoder(images)
    assert tokens.shape == (2, 16, 12) and encoder.token_shape(24) == (16, 12)
    torch.testing.assert_close(tokens, reference)


HUBCONF = """
import torch
import torch.nn as nn


class TinyDino(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 6, 14, stride=14)

    def forward_features(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return {"x_norm_clstoken": tokens.mean(1), "x_norm_patchtokens": tokens}


def tiny_dinov2():
    torch.manual_seed(0)
    return TinyDino()
"""


def test_a_torch_hub_encoder_sees_224_px_imagenet_normalised_images_as_repa_feeds_dinov2(tmp_path):
    (tmp_path / "hubconf.py").write_text(HUBCONF)  # a local hub repository: no network
    encoder = load_encoder(f"hub:{tmp_path}:tiny_dinov2", image_size=256)
    images = torch.rand(2, 3, 256, 256) * 2 - 1
    x = F.interpolate((images + 1) / 2, size=(224, 224), mode="bicubic", align_corners=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    tokens = encoder(images)
    assert tokens.shape == (2, 256, 6)  # DINOv2's 16x16 patch grid at 224 px, no class token
    torch.testing.assert_close(tokens, encoder.backbone.forward_features(x)["x_norm_patchtokens"])
    assert load_encoder(f"hub:{tmp_path}:tiny_dinov2", image_size=512).input_size == 448


def test_a_state_dict_encoder_round_trips_and_bad_names_fail_clearly(tmp_path):
    torch.manual_seed(0)
    network = DigitsPatchEncoder(dim=8).eval()
    path = save_encoder_file(tmp_path / "digits.pt", network, arch="digits-patch-convnet", config={"dim": 8},
                             input_size=8, channels=1, mean=(0.5,), std=(0.5,))
    with no_warnings():  # not tried as TorchScript first (torch.jit.load's deprecation warning)
        encoder = load_encoder(f"file:{path}", image_size=8)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    torch.testing.assert_close(encoder(x), network(x).flatten(2).transpose(1, 2))
    torch.testing.assert_close(encoder(x.expand(-1, 3, -1, -1)), encoder(x))  # RGB input read as grey
    with pytest.raises(ValueError, match="unknown encoder"):
        load_encoder(str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="neither TorchScript"):
        load_encoder(str(tmp_path / "junk.pt"))


def test_the_digits_teacher_trains_deterministically_and_learns_digits():
    a = train_digits_encoder(epochs=2, dim=32)
    b = train_digits_encoder(epochs=2, dim=32)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    data = DigitsDataset()
    with torch.no_grad():
        accuracy = (a.classify(data.images).argmax(1) == data.labels).float().mean()
        tokens = a(data.images[:4])
    assert accuracy > 0.4  # two epochs (0.65 measured; chance 0.1); the cached teacher trains 12 (0.99)
    assert tokens.shape == (4, 32, 8, 8)


def test_digits_get_their_teacher_tokens_in_memory(tmp_path):
    torch.manual_seed(0)
    network = DigitsPatchEncoder(dim=8).eval()
    path = save_encoder_file(tmp_path / "d.pt", network, arch="digits-patch-convnet", config={"dim": 8},
                             input_size=8, channels=1, mean=(0.5,), std=(0.5,))
    dataset, dim = repa_dataset(DigitsDataset(), encoder=str(path))
    x, y, tokens = dataset[7]
    assert dim == 8 and tokens.shape == (64, 8)
    with torch.no_grad():
        expected = network(x[None]).flatten(2).transpose(1, 2)[0]
    torch.testing.assert_close(tokens, expected.half().float())


# ---------------------------------------------------------------------------------------------------- extraction

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for i in range(5):
        pixels = np.random.default_rng(i).integers(0, 256, (16 + 3 * i, 18, 3), dtype=np.uint8)
        (root / ("a" if i < 3 else "b")).mkdir(exist_ok=True)
        Image.fromarray(pixels).save(root / ("a" if i < 3 else "b") / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def kl8_dir(tmp_path_factory):
    """A tiny random AutoencoderKL with 8 latent channels: not the SD-VAE's latent space."""
    return save_tiny_vae(tmp_path_factory.mktemp("vae") / "kl8", latent_channels=8)


@pytest.fixture(scope="module")
def dc_dir(tmp_path_factory):
    from diffusers import AutoencoderDC

    torch.manual_seed(0)
    vae = AutoencoderDC(latent_channels=8, attention_head_dim=4, encoder_block_types=("ResBlock",) * 2,
                        decoder_block_types=("ResBlock",) * 2, encoder_block_out_channels=(8, 16),
                        decoder_block_out_channels=(8, 16), encoder_layers_per_block=(1, 1),
                        decoder_layers_per_block=(1, 1), encoder_qkv_multiscales=((), ()),
                        decoder_qkv_multiscales=((), ()), upsample_block_type="interpolate",
                        downsample_block_type="Conv", scaling_factor=0.41)
    path = tmp_path_factory.mktemp("vae") / "dc"
    vae.save_pretrained(path)
    return path


SETTINGS = dict(image_size=SIZE, batch_size=2, num_workers=0, device="cpu", progress=False)


@pytest.fixture(scope="module")
def extracted(folder, kl8_dir, vit_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("latents") / "kl8"
    return extract_latents(folder, out, vae=str(kl8_dir), repa_encoder=load_encoder(str(vit_file), SIZE), **SETTINGS)


def test_extraction_stores_encoder_tokens_of_each_image_and_its_mirror(extracted, folder, kl8_dir, vit_file):
    meta = json.loads((extracted / META).read_text())
    encoder = load_encoder(str(vit_file), SIZE)
    assert meta["latent_shape"] == [8, 8, 8] and meta["autoencoder"] == "AutoencoderKL" and not meta["sd_vae"]
    assert meta["repa_encoder"] == encoder.name and meta["repa_shape"] == [16, 12]
    features = open_repa_features(extracted)
    assert features.shape == (5, 2, 16, 12) and features.dtype == np.float16
    images = ImageFolderDataset(folder, image_size=SIZE, flip=False)
    for i in range(len(images)):
        x = images[i][0][None]
        for flip, view in enumerate([x, x.flip(-1)]):
            np.testing.assert_array_equal(features[i, flip], encoder(view)[0].half().numpy())


def test_channel_statistics_are_numpys_on_the_stored_moments(extracted):
    meta = json.loads((extracted / META).read_text())
    moments = open_moments(extracted).astype(np.float64)
    mean, std = moments[:, :, 0], moments[:, :, 1]
    expected_mean = mean.mean(axis=(0, 1, 3, 4))
    # the latents training draws are mean + std * noise: their variance adds the posterior's
    expected_var = (mean**2 + std**2).mean(axis=(0, 1, 3, 4)) - expected_mean**2
    np.testing.assert_allclose(meta["latent_mean"], expected_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(meta["latent_std"], np.sqrt(expected_var), rtol=1e-12, atol=1e-12)


def test_latents_train_standardised_with_the_tokens_of_the_drawn_flip(extracted):
    dataset = LatentDataset(extracted, seed=3, repa_features=True)
    assert dataset.normalization["latent_mean"] is not None  # not the SD-VAE: channel statistics by default
    mean_c = torch.tensor(dataset.meta["latent_mean"]).view(-1, 1, 1)
    std_c = torch.tensor(dataset.meta["latent_std"]).view(-1, 1, 1)
    moments, features = open_moments(extracted), open_repa_features(extracted)
    flips = set()
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            latent, label, tokens = dataset[index]
            g = augment_generator(3, epoch, index)
            flip = int(torch.randint(2, (1,), generator=g))
            noise = torch.randn(8, 8, 8, generator=g)
            m, s = torch.from_numpy(moments[index, flip].astype(np.float32))
            torch.testing.assert_close(latent, (m + s * noise - mean_c) / std_c)
            torch.testing.assert_close(tokens, torch.from_numpy(features[index, flip].astype(np.float32)))
            flips.add(flip)
    assert flips == {0, 1}
    assert len(LatentDataset(extracted)[0]) == 2  # without repa_features: (latent, label) as before
    scaled = LatentDataset(extracted, latent_norm="scale")
    assert scaled.normalization == {"latent_scale": scaled.meta["scale"], "latent_mean": None, "latent_std": None}
    dataset_b, facts = build_dataset(str(extracted))
    assert facts.in_channels == 8 and facts.resolution == 8


def test_repa_dataset_reads_the_stored_tokens_and_refuses_another_encoder(extracted, vit_file, tmp_path):
    dataset, dim = repa_dataset(LatentDataset(extracted), encoder=str(vit_file))
    assert dim == 12 and len(dataset[0]) == 3
    other = save_encoder_file(tmp_path / "other.pt", DigitsPatchEncoder(dim=8), arch="digits-patch-convnet",
                              config={"dim": 8})
    with pytest.raises(ValueError, match="hold the features of"):
        repa_dataset(LatentDataset(extracted), encoder=str(other))


def test_interrupted_extraction_with_an_encoder_resumes_to_the_same_bytes(extracted, folder, kl8_dir, vit_file,
                                                                          tmp_path):
    out = tmp_path / "resumed"
    settings = {**SETTINGS, "vae": str(kl8_dir), "repa_encoder": load_encoder(str(vit_file), SIZE)}
    extract_latents(folder, out, max_batches=1, **settings)
    assert np.load(out / DONE).tolist() == [True, True, False, False, False]
    with pytest.raises(ValueError, match="other settings"):
        extract_latents(folder, out, **{**settings, "repa_encoder": None})
    extract_latents(folder, out, **settings)
    np.testing.assert_array_equal(open_moments(out), open_moments(extracted))
    np.testing.assert_array_equal(open_repa_features(out), open_repa_features(extracted))
    assert json.loads((out / META).read_text()) == json.loads((extracted / META).read_text())


def test_decoding_undoes_the_channel_normalisation(extracted, kl8_dir):
    vae = load_vae(kl8_dir)
    meta = json.loads((extracted / META).read_text())
    norm = latent_normalization(meta)
    raw = torch.from_numpy(open_moments(extracted)[:2, 0, 0].astype(np.float32))
    mean_c, std_c = (torch.tensor(norm[k]).view(1, -1, 1, 1) for k in ("latent_mean", "latent_std"))
    images = decode_latents(vae, (raw - mean_c) / std_c, mean=norm["latent_mean"], std=norm["latent_std"])
    torch.testing.assert_close(images, vae.decode(raw).sample, rtol=1e-4, atol=1e-5)


def test_an_autoencoder_dc_extracts_deterministic_latents(folder, dc_dir, tmp_path):
    from diffusers import AutoencoderDC

    out = extract_latents(folder, tmp_path / "dc", vae=str(dc_dir), dtype="float32", **SETTINGS)
    meta = json.loads((out / META).read_text())
    assert meta["autoencoder"] == "AutoencoderDC" and meta["latent_shape"] == [8, 8, 8] and meta["scale"] == 0.41
    moments = open_moments(out)
    assert not moments[:, :, 1].any()  # no posterior spread
    reference = AutoencoderDC.from_pretrained(dc_dir).eval()
    x = ImageFolderDataset(folder, image_size=SIZE, flip=False)[4][0][None]
    with torch.no_grad():
        np.testing.assert_allclose(moments[4, 1, 0], reference.encode(x.flip(-1)).latent[0].numpy(), atol=1e-5)


def test_sampling_refuses_a_vae_other_than_the_trained_one(kl8_dir):
    ema, mse = "stabilityai/sd-vae-ft-ema", "stabilityai/sd-vae-ft-mse"
    assert check_vae_matches(ema, None) == ema
    assert check_vae_matches(ema, "mse") == mse  # one encoder, one latent space
    assert check_vae_matches(ema, kl8_dir) == str(kl8_dir.resolve())  # a local copy (not verifiable offline)
    with pytest.raises(ValueError, match="trained on the latents of stabilityai/sd-vae-ft-ema"):
        check_vae_matches(ema, "someone/other-vae")
    with pytest.raises(ValueError, match="per-channel"):
        check_vae_matches(str(kl8_dir.resolve()), ema, latent_mean=[0.0] * 8)
    with pytest.raises(ValueError, match="per-channel statistics"):
        check_vae_matches(ema, "mse", latent_mean=[0.0] * 4)
    with pytest.raises(ValueError, match="trained on the latents of someone/dc-ae"):
        check_vae_matches("someone/dc-ae", "ema", latent_scale=0.41)
    with pytest.raises(ValueError, match="trained on the latents of /data/kl8"):
        check_vae_matches("/data/kl8", "ema", latent_scale=0.5)
    with pytest.raises(ValueError, match="generates pixels"):
        check_vae_matches(None, "ema")


def test_tokens_are_added_to_a_finished_extraction_without_running_the_vae_again(extracted, folder, kl8_dir,
                                                                                   vit_file, tmp_path):
    out = tmp_path / "later"
    extract_latents(folder, out, vae=str(kl8_dir), **SETTINGS)
    assert json.loads((out / META).read_text())["repa_encoder"] is None
    moments_before = (out / "moments.npy").stat().st_mtime_ns
    encoder = load_encoder(str(vit_file), SIZE)
    extract_latents(folder, out, vae=str(kl8_dir), repa_encoder=encoder, max_batches=1, **SETTINGS)  # interrupted
    assert np.load(out / "repa_done.npy").tolist() == [True, True, False, False, False]
    assert json.loads((out / META).read_text())["repa_encoder"] is None  # not usable for REPA yet
    extract_latents(folder, out, vae=str(kl8_dir), repa_encoder=encoder, **SETTINGS)
    assert (out / "moments.npy").stat().st_mtime_ns == moments_before
    assert not (out / "repa_done.npy").exists() and not (out / "repa_extract.json").exists()
    np.testing.assert_array_equal(open_repa_features(out), open_repa_features(extracted))
    assert json.loads((out / META).read_text()) == json.loads((extracted / META).read_text())


def test_two_processes_extract_the_tokens_one_does(extracted, folder, kl8_dir, vit_file, tmp_path):
    import os
    import sys

    from helpers import run_child

    script = tmp_path / "run.py"
    script.write_text(
        "import sys\nfrom dico.data import extract_latents\nfrom dico.repa import load_encoder\n"
        f"extract_latents({str(folder)!r}, sys.argv[1], vae={str(kl8_dir)!r}, "
        f"repa_encoder=load_encoder({str(vit_file)!r}, {SIZE}), **{SETTINGS!r})\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "two"
    done = run_child([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                      str(script), str(out)], env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(open_repa_features(out).astype(np.float32),
                               open_repa_features(extracted).astype(np.float32), rtol=0, atol=1e-3)


def test_a_repa_training_run_resumes_exactly_and_exports_no_projector(tmp_path):
    import dico
    from dico.checkpoints import load_pretrained
    from dico.training import train
    from helpers import tiny_run_config

    def config(results, **changes):
        return tiny_run_config(results, repa_encoder="digits", repa_layer="encoder_level_1", repa_projector_dim=16,
                               **changes)

    straight = train(config(tmp_path / "straight"), progress=False, write_grid=False)
    train(config(tmp_path / "resumed", max_steps=2), progress=False, write_grid=False)
    resumed = train(config(tmp_path / "resumed"), resume="auto", progress=False, write_grid=False)
    a, b = torch.load(straight, weights_only=True), torch.load(resumed, weights_only=True)
    for key in ("model", "ema", "repa_projector"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    model = load_pretrained(resumed).model
    assert not any("projector" in k for k in model.state_dict())
    assert set(model.state_dict()) == set(dico.create_model("DiCo-Tiny", **model.spec["config"]).state_dict())
