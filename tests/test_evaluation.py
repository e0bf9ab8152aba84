"""`dico evaluate`: ADM's FID / sFID / IS / precision / recall in PyTorch, and the offline Digits-FID.

No network: Inception runs with torch-fidelity's real architecture and seeded random weights saved to a temporary file
(the real weights are a 95 MB download), and is checked against torch-fidelity's own `calculate_metrics` with the same
weights. Images are few and small because Inception at 299x299 costs ~0.3 s per image on CPU.
"""

import json
import os
import zipfile

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
import torch_fidelity
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from dico.cli import main
from dico.evaluation import (
    DigitsClassifier,
    DigitsFeatures,
    GaussianStatistics,
    InceptionFeatures,
    cached_features,
    digits_images,
    digits_split,
    evaluate,
    frechet_distance,
    gaussian_statistics,
    inception_score,
    iter_image_batches,
    open_image_source,
    precision_recall,
)
from dico.evaluation.digits import DigitsClassifier, load_digits_classifier, train_digits_classifier
from dico.evaluation.images import read_labels

NUM_IMAGES = 12  # per set: enough for k=3 precision/recall, few enough for CPU Inception


# ----------------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def dico_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("dico_cache")


def single_threaded_blas():
    """The 2048x2048 eigendecompositions of FID run single-threaded here: on a shared 2-core machine multi-threaded
    OpenBLAS spins against other processes and gets 5x slower, while one thread loses at most 2x when idle."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


@pytest.fixture(scope="module", autouse=True)
def blas_one_thread():
    with single_threaded_blas():
        yield


@pytest.fixture(autouse=True)
def isolated_cache(dico_cache, monkeypatch):
    """The digits classifier and read-only-folder feature caches go to a temporary directory, not ~/.cache."""
    monkeypatch.setenv("DICO_CACHE_DIR", str(dico_cache))


def blob_images(seed: int, n: int, size: int = 32, hue_shift: float = 0.0) -> np.ndarray:
    """Smooth random colour fields with a little noise: structured enough to give Inception varied features."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 1, (n, 3, 4, 4)).astype(np.float32))
    coarse[:, 0] = (coarse[:, 0] + hue_shift).clamp(0, 1)
    fine = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).numpy()
    fine = fine + rng.normal(0, 0.05, fine.shape)
    return np.clip(np.round(fine * 255), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1).copy()


class _UnloadedInception(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception skeleton, left at PyTorch's initialisation instead of loading weights."""

    def load_state_dict(self, state_dict, strict=True, assign=False):
        return None


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory):
    """Seeded random weights for the real architecture; batchnorm calibrated and the classifier scaled so that every
    feature layer has a useful spread (not saturated softmaxes, not vanishing activations)."""
    folder = tmp_path_factory.mktemp("inception")
    empty = folder / "empty.pth"
    torch.save({}, empty)
    torch.manual_seed(0)
    net = _UnloadedInception("random", ["2048"], feature_extractor_weights_path=str(empty))
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # running statistics = those of the calibration batch
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.1, 0.3)
    calibration = torch.from_numpy(np.concatenate([blob_images(100, 3), blob_images(101, 3, hue_shift=0.3)]))
    net.train()
    with torch.no_grad():
        (pool,) = net(calibration.permute(0, 3, 1, 2).contiguous())
    net.eval()
    rms = pool.square().mean().sqrt()
    torch.nn.init.normal_(net.fc.weight, std=float(3.0 / (rms * 2048**0.5)))
    torch.nn.init.normal_(net.fc.bias, std=1.0)
    path = folder / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def image_sets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    reference, samples = blob_images(1, NUM_IMAGES), blob_images(2, NUM_IMAGES, hue_shift=0.25)
    np.savez(folder / "ref.npz", reference)
    np.savez(folder / "samples.npz", samples)
    return {"ref": folder / "ref.npz", "samples": folder / "samples.npz", "ref_images": reference,
            "sample_images": samples}  # fmt: skip


@pytest.fixture(scope="session")
def ours(image_sets, inception_weights):
    with single_threaded_blas():  # session fixtures are built before the module's autouse one applies
        return evaluate(image_sets["ref"], image_sets["samples"], inception_weights=inception_weights, batch_size=8,
                        device="cpu", progress=False)  # fmt: skip


class _UInt8Images(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


@pytest.fixture(scope="session")
def fidelity(image_sets, inception_weights):
    """torch-fidelity's own metrics: input1 = generated, input2 = real; one IS split and no shuffle, as ADM for
    fewer than 5000 samples; k = 3 neighbours for precision/recall (its default, as ADM)."""
    with single_threaded_blas():
        return torch_fidelity.calculate_metrics(
            input1=_UInt8Images(image_sets["sample_images"]),
            input2=_UInt8Images(image_sets["ref_images"]),
            cuda=False, batch_size=8, isc=True, fid=True, prc=True, isc_splits=1, samples_shuffle=False,
            prc_neighborhood=3, feature_extractor="inception-v3-compat",
            feature_extractor_weights_path=str(inception_weights), cache=False, verbose=False, save_cpu_ram=True,
        )  # fmt: skip


# ---------------------------------------------------------------------------------------- Inception, as ADM defines
def test_metrics_equal_torch_fidelity_with_the_same_weights(ours, fidelity):
    assert ours.fid == pytest.approx(fidelity["frechet_inception_distance"], rel=1e-3)
    assert ours.inception_score == pytest.approx(fidelity["inception_score_mean"], rel=1e-3)
    assert ours.precision == pytest.approx(fidelity["precision"], rel=1e-3)
    assert ours.recall == pytest.approx(fidelity["recall"], rel=1e-3)
    # The weights give the metrics room to be wrong: nothing is saturated or trivially equal.
    assert ours.fid > 1 and 1.2 < ours.inception_score < NUM_IMAGES - 1
    assert ours.sfid > 0 and ours.num_samples == ours.num_reference == NUM_IMAGES
    assert ours.reference_statistics == "computed"


def test_fid_of_a_set_with_itself_is_zero(image_sets, inception_weights, ours):
    same = evaluate(image_sets["samples"], image_sets["samples"], inception_weights=inception_weights, device="cpu",
                    progress=False)  # fmt: skip
    assert abs(same.fid) < 1e-6 * ours.fid and abs(same.sfid) < 1e-6 * ours.sfid
    assert same.precision == 1.0 and same.recall == 1.0


def test_spatial_features_are_mixed_6_conv_first_7_channels_flattened_nhwc(inception_weights):
    """Recompute ADM's "mixed_6/conv" by hand: the network up to Mixed_6c, then Mixed_6d's 1x1 branch (conv, BN, ReLU),
    channels [:7] of the NHWC tensor flattened row-major: index = (h * 17 + w) * 7 + c. The images are gray (one
    channel), which the extractor must read as RGB with the value replicated; the hand computation gets RGB."""
    gray = blob_images(7, 2)[..., :1]
    extractor = InceptionFeatures(inception_weights)
    spatial = extractor(gray)["spatial"]
    net = extractor.network
    with torch.no_grad():
        x = torch.from_numpy(np.repeat(gray, 3, axis=3)).permute(0, 3, 1, 2).float()
        x = (interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False) - 128) / 128
        for name in ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                     "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c"]:  # fmt: skip
            x = getattr(net, name)(x)
        mixed_6_conv = net.Mixed_6d.branch1x1(x).numpy()  # (N, 192, 17, 17)
    assert mixed_6_conv.shape == (2, 192, 17, 17)
    by_hand = np.empty((2, 17 * 17 * 7), dtype=np.float32)
    for h in range(17):
        for w in range(17):
            for c in range(7):
                by_hand[:, (h * 17 + w) * 7 + c] = mixed_6_conv[:, c, h, w]
    np.testing.assert_allclose(spatial, by_hand, rtol=1e-5, atol=1e-5)
    assert np.abs(by_hand).max() > 0.1  # not a vacuous comparison of zeros


def _shifted_statistics(image_sets, inception_weights):
    """The samples' own statistics, and means moved by random deltas (pool, spatial)."""
    stats = cached_features(open_image_source(image_sets["samples"]), InceptionFeatures(inception_weights)).statistics
    rng = np.random.default_rng(3)
    return stats, rng.normal(0, 0.5, 2048), rng.normal(0, 0.5, 2023)


def test_cli_uses_precomputed_reference_statistics_and_writes_json(image_sets, inception_weights, tmp_path, capsys):
    """A reference .npz with images and mu/sigma/mu_s/sigma_s (as ADM's VIRTUAL_imagenet256_labeled.npz) is scored by
    its statistics: with the samples' own covariances and means moved by delta, FID = |delta|^2 exactly; precision and
    recall still come from its images (here the samples themselves, so both are 1)."""
    stats, delta, delta_s = _shifted_statistics(image_sets, inception_weights)
    ref = tmp_path / "ref_with_stats.npz"
    np.savez(ref, image_sets["sample_images"], mu=stats["pool"].mu + delta, sigma=stats["pool"].sigma,
             mu_s=stats["spatial"].mu + delta_s, sigma_s=stats["spatial"].sigma)  # fmt: skip
    out = tmp_path / "metrics.json"
    code = main(["evaluate", str(ref), str(image_sets["samples"]), "--inception-weights", str(inception_weights),
                 "--json", str(out), "--device", "cpu", "--batch-size", "5", "--quiet"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    for name in ("FID", "sFID", "Inception Score", "Precision", "Recall", "Samples", "precomputed"):
        assert name in printed
    metrics = json.loads(out.read_text())
    assert metrics["reference_statistics"] == "precomputed" and metrics["features"] == "inception"
    assert metrics["num_samples"] == metrics["num_reference"] == NUM_IMAGES
    assert metrics["fid"] == pytest.approx(delta @ delta, rel=1e-6)
    assert metrics["sfid"] == pytest.approx(delta_s @ delta_s, rel=1e-6)
    assert metrics["precision"] == 1.0 and metrics["recall"] == 1.0 and metrics["inception_score"] > 1


def test_reference_with_statistics_only_gives_fid_but_no_precision_recall(image_sets, inception_weights, tmp_path):
    stats, delta, _ = _shifted_statistics(image_sets, inception_weights)
    stats_only = tmp_path / "stats_only.npz"
    np.savez(stats_only, mu=stats["pool"].mu + delta, sigma=stats["pool"].sigma, mu_s=stats["spatial"].mu,
             sigma_s=stats["spatial"].sigma)  # fmt: skip
    result = evaluate(stats_only, image_sets["samples"], inception_weights=inception_weights, device="cpu",
                      progress=False)  # fmt: skip
    assert result.fid == pytest.approx(delta @ delta, rel=1e-6) and abs(result.sfid) < 1e-6 * (delta @ delta)
    assert result.precision is None and result.recall is None and result.num_reference == 0
    assert any("precision/recall unavailable" in note for note in result.notes)
    assert "unavailable" in result.format()


def test_reference_with_mu_and_sigma_only_gives_fid_without_sfid(image_sets, inception_weights, tmp_path):
    """The shape of U-ViT's fid_stats_mscoco256_val.npz (REPA's COCO reference): FID's statistics and nothing else."""
    stats, delta, _ = _shifted_statistics(image_sets, inception_weights)
    np.savez(tmp_path / "fid_stats.npz", mu=stats["pool"].mu + delta, sigma=stats["pool"].sigma)
    result = evaluate(tmp_path / "fid_stats.npz", image_sets["samples"], inception_weights=inception_weights,
                      device="cpu", progress=False)  # fmt: skip
    assert result.fid == pytest.approx(delta @ delta, rel=1e-6) and result.sfid is None
    assert any("sFID unavailable" in note for note in result.notes) and "sFID             unavailable" in result.format()
    np.savez(tmp_path / "spatial_only.npz", mu_s=stats["spatial"].mu, sigma_s=stats["spatial"].sigma)
    with pytest.raises(ValueError, match="holds neither images nor mu and sigma"):
        evaluate(tmp_path / "spatial_only.npz", image_sets["samples"], inception_weights=inception_weights,
                 device="cpu", progress=False)  # fmt: skip


def test_text_to_image_samples_are_told_coco_s_sample_counts(image_sets, inception_weights, ours, tmp_path):
    assert any("use 50000" in note for note in ours.notes)
    prompted = tmp_path / "prompted.npz"
    np.savez(prompted, image_sets["sample_images"], prompts=np.array([f"prompt {i}" for i in range(NUM_IMAGES)]))
    result = evaluate(image_sets["ref"], prompted, inception_weights=inception_weights, device="cpu", progress=False)
    assert result.fid == pytest.approx(ours.fid, rel=1e-9)
    assert any("one sample per val2014 image (40504) or for 30000" in note for note in result.notes)
    assert not any("50000" in note for note in result.notes)


def test_sfid_spatial_features_are_cached_as_statistics_only(image_sets, ours):
    (cache,) = image_sets["samples"].parent.glob("samples.npz.*.inception-*.features.npz")
    with np.load(cache) as data:
        assert set(data.files) == {"pool", "logits", "mu_pool", "sigma_pool", "mu_spatial", "sigma_spatial"}
        assert data["pool"].shape == (NUM_IMAGES, 2048) and data["sigma_spatial"].shape == (2023, 2023)


def test_features_are_cached_next_to_the_input_and_keyed_by_content(digits_sets, tmp_path):
    extractor = DigitsFeatures()
    images = np.load(digits_sets / "held_out.npz")["arr_0"]
    path = tmp_path / "few.npz"
    np.savez(path, images[:30])
    first = cached_features(open_image_source(path), extractor, batch_size=7, progress=False)
    assert not first.from_cache and first.cache_path.parent == tmp_path
    assert first.cache_path.name.startswith("few.npz.") and first.cache_path.name.endswith(".features.npz")
    assert extractor.identity in first.cache_path.name
    # Labels or statistics added to the file leave the pixels, and so the cache key, unchanged.
    np.savez(path, images[:30], np.zeros(30, np.int64))
    again = cached_features(open_image_source(path), extractor, progress=False)
    assert again.from_cache and again.cache_path == first.cache_path
    for layer in ("features", "logits"):
        np.testing.assert_array_equal(again.features[layer], first.features[layer])
    np.testing.assert_array_equal(again.statistics["features"].sigma, first.statistics["features"].sigma)
    # Other pixels under the same name are other content: a new cache entry, not the stale one.
    np.savez(path, images[30:60])
    changed = cached_features(open_image_source(path), extractor, progress=False)
    assert not changed.from_cache and changed.cache_path != first.cache_path
    assert not np.array_equal(changed.features["features"], first.features["features"])
    # A damaged cache file is recomputed, with a warning, not trusted.
    changed.cache_path.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="ignoring unreadable feature cache"):
        rebuilt = cached_features(open_image_source(path), extractor, progress=False)
    assert not rebuilt.from_cache
    np.testing.assert_array_equal(rebuilt.features["features"], changed.features["features"])


def test_unwritable_cache_location_falls_back_to_the_dico_cache_dir(digits_sets, tmp_path, dico_cache):
    path = tmp_path / "few.npz"
    np.savez(path, np.load(digits_sets / "held_out.npz")["arr_0"][:10])
    beside = cached_features(open_image_source(path), DigitsFeatures(), progress=False, use_cache=True).cache_path
    beside.unlink()
    beside.mkdir()  # the cache file cannot be written there any more (works even for root, unlike chmod)
    moved = cached_features(open_image_source(path), DigitsFeatures(), progress=False)
    assert not moved.from_cache and moved.cache_path == dico_cache / "features" / beside.name
    assert cached_features(open_image_source(path), DigitsFeatures(), progress=False).from_cache


# ------------------------------------------------------------------------------------------------------- bad inputs
def test_missing_corrupt_and_wrong_shape_inputs_give_clear_errors(tmp_path, image_sets, inception_weights):
    good = str(image_sets["samples"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate(tmp_path / "nope.npz", good, inception_weights=inception_weights, device="cpu")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"this is not a zip file" * 10)
    with pytest.raises(ValueError, match="not a readable .npz"):
        evaluate(corrupt, good, inception_weights=inception_weights, device="cpu")
    cases = {
        "nhw.npz": (np.zeros((4, 8, 8), np.uint8), r"\(N, H, W, C\)"),
        "rgba.npz": (np.zeros((4, 8, 8, 4), np.uint8), r"C = 1 \(gray\) or 3"),
        "float.npz": (np.zeros((4, 8, 8, 3), np.float32), "uint8"),
        "empty.npz": (np.zeros((0, 8, 8, 3), np.uint8), "holds no pixels"),
    }
    for name, (array, message) in cases.items():
        np.savez(tmp_path / name, array)
        with pytest.raises(ValueError, match=message):
            open_image_source(tmp_path / name)
    np.savez(tmp_path / "labels_only.npz", labels=np.arange(3))
    with pytest.raises(ValueError, match="holds no images.*arr_0.*found labels"):
        open_image_source(tmp_path / "labels_only.npz")
    # A file cut short: the header promises more images than the archive holds.
    whole = (tmp_path / "whole.npz")
    np.savez(whole, np.zeros((6, 8, 8, 3), np.uint8))
    with zipfile.ZipFile(whole) as archive:
        header_and_data = archive.read("arr_0.npy")
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as archive:
        archive.writestr("arr_0.npy", header_and_data[: len(header_and_data) - 8 * 8 * 3 * 2])
    with pytest.raises(ValueError, match="truncated"):
        list(iter_image_batches(open_image_source(tmp_path / "short.npz"), 4))


def test_bad_inception_weights_and_statistics_give_clear_errors(tmp_path, image_sets, inception_weights):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00\x01 not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch weights file"):
        InceptionFeatures(garbage)
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a torch-fidelity Inception-v3 state dict"):
        InceptionFeatures(tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05-6726825d.pth"):
        InceptionFeatures(tmp_path / "missing.pth")
    np.savez(tmp_path / "bad_stats.npz", image_sets["ref_images"][:4], mu=np.zeros(10), sigma=np.eye(10))
    with pytest.raises(ValueError, match="do not fit ADM's Inception pool features"):
        evaluate(tmp_path / "bad_stats.npz", image_sets["samples"], inception_weights=inception_weights, device="cpu")
    np.savez(tmp_path / "half_stats.npz", image_sets["ref_images"][:4], mu=np.zeros(2048))
    with pytest.raises(ValueError, match="has 'mu' but not 'sigma'"):
        evaluate(tmp_path / "half_stats.npz", image_sets["samples"], inception_weights=inception_weights, device="cpu")
    with pytest.raises(ValueError, match="unknown features 'clip'"):
        evaluate(image_sets["ref"], image_sets["samples"], features="clip")


def test_labels_and_single_images_are_checked_before_any_feature_is_computed(tmp_path, digits_sets):
    images = np.load(digits_sets / "held_out.npz")["arr_0"][:5]
    np.savez(tmp_path / "one.npz", images[:1])
    with pytest.raises(ValueError, match="single image"):
        evaluate(digits_sets / "train.npz", tmp_path / "one.npz", features="digits", device="cpu")
    np.savez(tmp_path / "label_11.npz", images, np.array([0, 1, 2, 3, 11]))
    with pytest.raises(ValueError, match=r"labels \(arr_1\) must lie in \[0, 9\]"):
        evaluate(digits_sets / "train.npz", tmp_path / "label_11.npz", features="digits", device="cpu")
    np.savez(tmp_path / "float_labels.npz", images, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="one integer class label per image"):
        evaluate(digits_sets / "train.npz", tmp_path / "float_labels.npz", features="digits", device="cpu")
    assert not list(tmp_path.glob("*.features.npz"))


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    code = main(["evaluate", str(tmp_path / "missing_ref.npz"), str(tmp_path / "missing.npz"), "--features", "digits"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- metrics on their own
def _adm_frechet_distance(mu1, sigma1, mu2, sigma2):
    """ADM's formula, via scipy's matrix square root of the (non-symmetric) product."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    diff = mu1 - mu2
    return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def test_frechet_distance_equals_scipy_sqrtm_formula():
    rng = np.random.default_rng(0)
    for dim in (1, 5, 64):
        a, b = rng.normal(size=(3 * dim + 5, dim)), rng.normal(size=(3 * dim + 5, dim)) @ rng.normal(size=(dim, dim))
        sa, sb = gaussian_statistics(a), gaussian_statistics(b + 0.3)
        expected = _adm_frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma)
        assert frechet_distance(sa, sb) == pytest.approx(expected, rel=1e-8)
        assert frechet_distance(sb, sa) == pytest.approx(expected, rel=1e-8)
    # Analytic: N(0, I) vs N(m, 4I) in d dims -> |m|^2 + d (1 + 4 - 2 * 2) = |m|^2 + d
    m = np.full(7, 0.5)
    assert frechet_distance(GaussianStatistics(np.zeros(7), np.eye(7)), GaussianStatistics(m, 4 * np.eye(7))) == (
        pytest.approx(m @ m + 7)
    )


def test_gaussian_statistics_equal_numpy_mean_and_cov():
    # Several chunks, and far from zero: the one-pass sums must not lose the variance to cancellation.
    features = (np.random.default_rng(1).normal(size=(20000, 6)) * 3 + 1e4).astype(np.float32)
    stats = gaussian_statistics(features)
    np.testing.assert_allclose(stats.mu, features.astype(np.float64).mean(0), rtol=1e-10)
    np.testing.assert_allclose(stats.sigma, np.cov(features.astype(np.float64), rowvar=False), rtol=1e-9)
    assert stats.sigma.dtype == np.float64


def test_inception_score_uses_splits_of_5000_like_adm():
    logits = np.random.default_rng(2).normal(0, 3, size=(12000, 20))
    scores = []
    for start in range(0, len(logits), 5000):  # ADM: 5000, 5000, then the last 2000
        p = np.exp(logits[start : start + 5000])
        p /= p.sum(1, keepdims=True)
        kl = (p * (np.log(p) - np.log(p.mean(0, keepdims=True)))).sum(1).mean()
        scores.append(np.exp(kl))
    assert inception_score(logits) == pytest.approx(np.mean(scores), rel=1e-10)
    assert inception_score(np.zeros((10, 5))) == pytest.approx(1.0)  # uninformative classifier
    one_hot = np.eye(5)[np.arange(100) % 5] * 1000.0
    assert inception_score(one_hot) == pytest.approx(5.0, rel=1e-6)  # confident and uniform over 5 classes


def _brute_force_precision_recall(ref, smp, k=3):
    d_rr = np.linalg.norm(ref[:, None] - ref[None], axis=-1)
    d_ss = np.linalg.norm(smp[:, None] - smp[None], axis=-1)
    d_sr = np.linalg.norm(smp[:, None] - ref[None], axis=-1)
    r_ref, r_smp = np.sort(d_rr, axis=1)[:, k], np.sort(d_ss, axis=1)[:, k]
    return (d_sr <= r_ref[None]).any(1).mean(), (d_sr <= r_smp[:, None]).any(0).mean()


def test_precision_recall_equals_brute_force_for_any_batch_size():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(300, 16)).astype(np.float32)
    smp = (rng.normal(size=(200, 16)) * 1.3 + 0.4).astype(np.float32)
    expected = _brute_force_precision_recall(ref.astype(np.float64), smp.astype(np.float64))
    assert 0.05 < expected[0] < 0.95 and 0.05 < expected[1] < 0.95
    for row_batch_size in (7, 64, 4096):
        assert precision_recall(ref, smp, row_batch_size=row_batch_size) == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------------------------------------- reading inputs
def test_npz_streaming_and_image_folders_read_the_same_pixels(tmp_path):
    from PIL import Image

    images = blob_images(5, 11, size=9)
    np.savez(tmp_path / "plain.npz", images)
    np.savez_compressed(tmp_path / "compressed.npz", images)
    for name in ("plain.npz", "compressed.npz"):
        source = open_image_source(tmp_path / name)
        assert (source.count, source.height, source.width, source.channels) == (11, 9, 9, 3)
        batches = list(iter_image_batches(source, 4))
        assert [len(b) for b in batches] == [4, 4, 3]
        np.testing.assert_array_equal(np.concatenate(batches), images)
    # What `dico sample` writes (streamed, zip64, .npy header 2.0, labels in arr_1) reads back the same.
    from dico.images import write_npz

    written = open_image_source(write_npz(tmp_path / "sampled.npz", [images[:6], images[6:]], 11, (9, 9, 3),
                                          np.arange(11)))  # fmt: skip
    np.testing.assert_array_equal(np.concatenate(list(iter_image_batches(written, 5))), images)
    np.testing.assert_array_equal(read_labels(written), np.arange(11))
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    np.testing.assert_array_equal(np.concatenate(list(iter_image_batches(open_image_source(folder), 5))), images)
    Image.fromarray(images[0][:5]).save(folder / "999.png")
    with pytest.raises(ValueError, match="must share one size"):
        list(iter_image_batches(open_image_source(folder), 5))


# --------------------------------------------------------------------------------------------------- Digits-FID
@pytest.fixture(scope="session")
def digits_sets(tmp_path_factory):
    """Held-out digits (with labels) vs the classifier's training split, and uniform noise."""
    folder = tmp_path_factory.mktemp("digits")
    images, labels = digits_images()
    train, held_out = digits_split()
    np.savez(folder / "train.npz", images[train], labels[train])
    np.savez(folder / "held_out.npz", images[held_out], labels[held_out])
    noise = np.random.default_rng(0).integers(0, 256, size=(len(held_out), 16, 16, 1), dtype=np.uint8)
    np.savez(folder / "noise.npz", noise, labels[held_out])
    return folder


def test_digits_fid_is_small_for_real_digits_and_large_for_noise(digits_sets):
    real = evaluate(digits_sets / "train.npz", digits_sets / "held_out.npz", features="digits", device="cpu",
                    progress=False)  # fmt: skip
    noise = evaluate(digits_sets / "train.npz", digits_sets / "noise.npz", features="digits", device="cpu",
                     progress=False)  # fmt: skip
    assert real.features == "digits" and real.sfid is None and real.inception_score is None
    assert real.fid < 0.02 * noise.fid
    assert real.class_accuracy > 0.95 and noise.class_accuracy < 0.3  # the independent-classifier figure
    assert real.precision > 0.8 and real.recall > 0.8
    assert noise.precision < 0.05
    assert any("not comparable with ImageNet FID" in note for note in real.notes)


def test_digits_features_read_an_image_folder_like_its_npz(digits_sets, tmp_path):
    from PIL import Image

    images = np.load(digits_sets / "held_out.npz")["arr_0"][:40]
    np.savez(tmp_path / "few.npz", images)
    for i, image in enumerate(images):
        Image.fromarray(image[..., 0]).save(tmp_path / f"{i:02d}.png")  # gray png -> RGB on reading
    result = evaluate(tmp_path / "few.npz", tmp_path, features="digits", device="cpu", progress=False)
    assert abs(result.fid) < 1e-6 and result.precision == 1.0 and result.recall == 1.0
    assert result.class_accuracy is None and any("no labels" in note for note in result.notes)


def test_digits_classifier_training_is_deterministic_and_reads_other_resolutions():
    first, second = train_digits_classifier(epochs=1), train_digits_classifier(epochs=1)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    # The same digits at 8x8 (native) and 16x16 reach the classifier as the same 16x16 input up to resampling.
    native = torch.from_numpy(digits_images(resolution=8)[0][:5]).permute(0, 3, 1, 2)
    assert DigitsClassifier.prepare(native).shape == (5, 1, 16, 16)



def test_the_cached_digits_classifier_honours_the_umask(tmp_path, monkeypatch):
    import dico.evaluation.digits as digits

    monkeypatch.setattr(digits, "train_digits_classifier", DigitsClassifier)  # any weights: the file's mode counts
    old = os.umask(0o022)
    try:
        _, path = load_digits_classifier(tmp_path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # safetensors' writer alone makes it 0600


def test_cli_digits_json(digits_sets, tmp_path, capsys):
    out = tmp_path / "digits.json"
    code = main(["evaluate", str(digits_sets / "train.npz"), str(digits_sets / "held_out.npz"), "--features", "digits",
                 "--json", str(out), "--device", "cpu", "--quiet"])  # fmt: skip
    assert code == 0
    assert "Digits-FID" in capsys.readouterr().out
    metrics = json.loads(out.read_text())
    assert metrics["class_accuracy"] > 0.95 and metrics["fid"] >= 0 and metrics["sfid"] is None
