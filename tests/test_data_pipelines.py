"""Data pipelines: image folders (ADM crop, keyed flips), VAE helpers, latent extraction (resumable, multi-process)
and the latent data set, each checked against an independent computation."""

import json
import os
import pickle
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import dico
from dico.cli import main as cli
from dico.data import (DataFacts, ImageFolderDataset, LatentDataset, build_dataset, center_crop_arr,
                       decode_latents, encode_moments, extract_latents, load_digits_uint8, load_vae,
                       read_meta, resolve_vae, scan_image_folder)
from dico.data.latents import DONE, META, PLAN, create_latent_files, open_moments, write_json_atomic
from dico.training import preset, train
from helpers import run_child, save_tiny_vae

TINY_MODEL = {"hidden_size": 16, "depth": [1, 1, 1, 1, 1]}
SIZE = 16  # image size of the extraction tests; the tiny VAE halves it once -> 8x8 latents


def random_image(path, height, width, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    """Two classes, seven images of several sizes (and one JPEG) in sorted-name order."""
    root = tmp_path_factory.mktemp("classes")
    shapes = {"cat": [(16, 16), (20, 24), (40, 33)], "dog": [(17, 30), (16, 16), (35, 18), (64, 48)]}
    for c, (name, sizes) in enumerate(shapes.items()):
        for i, (h, w) in enumerate(sizes):
            random_image(root / name / f"{i}.png", h, w, seed=10 * c + i)
    Image.open(root / "dog" / "3.png").save(root / "dog" / "4.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A real diffusers AutoencoderKL, tiny and with random weights, saved as a local directory."""
    return save_tiny_vae(tmp_path_factory.mktemp("vae") / "tiny-vae")


@pytest.fixture(scope="module")
def extracted(class_folder, vae_dir, tmp_path_factory):
    """One uninterrupted extraction through the CLI: one process, batches of 2, float32 storage, at the thread count
    of the library runs compared with it (not --threads auto, whose count follows the machine's load)."""
    out = tmp_path_factory.mktemp("latents") / "ref"
    code = cli(["extract-latents", "--data", str(class_folder), "--out", str(out), "--image-size", str(SIZE),
                "--vae", str(vae_dir), "--batch-size", "2", "--num-workers", "0", "--dtype", "float32",
                "--device", "cpu", "--no-progress", "--threads", str(torch.get_num_threads())])
    assert code == 0
    return out


# ---------------------------------------------------------------------------------------------------- center crop

def test_center_crop_halves_with_box_then_cuts_the_center():
    # 8 wide x 12 high, size 4: the short side 8 >= 2*4 -> one BOX halving to 4x6; 4 < 8 stops; the short side is
    # already 4 (resize by 1 keeps it); rows (6-4)//2 = 1 .. 4 survive. Each 2x2 block averages to its base value.
    base = np.arange(6 * 4 * 3, dtype=np.int64).reshape(6, 4, 3) * 3 + 10
    offsets = np.array([[1, -1], [-1, 1]])[:, :, None]
    pixels = np.zeros((12, 8, 3), np.int64)
    for y in range(6):
        for x in range(4):
            pixels[2 * y:2 * y + 2, 2 * x:2 * x + 2] = base[y, x] + offsets
    out = np.asarray(center_crop_arr(Image.fromarray(pixels.astype(np.uint8)), 4))
    np.testing.assert_array_equal(out, base[1:5])


def test_center_crop_without_resizing_takes_the_middle_columns():
    pixels = np.random.default_rng(0).integers(0, 256, (5, 8, 3), dtype=np.uint8)
    out = np.asarray(center_crop_arr(Image.fromarray(pixels), 5))  # 5 < 10: no halving; scale 1; left = 3 // 2
    np.testing.assert_array_equal(out, pixels[:, 1:6])
    tall = np.random.default_rng(1).integers(0, 256, (9, 4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(center_crop_arr(Image.fromarray(tall), 4)), tall[2:6])


def test_center_crop_resizes_the_short_side_with_bicubic():
    # 30x20, size 8: halve to 15x10, then x 0.8 -> 12x8, cut columns 2..9. A flat colour stays flat.
    image = Image.new("RGB", (30, 20), (200, 30, 90))
    out = np.asarray(center_crop_arr(image, 8))
    assert out.shape == (8, 8, 3)
    assert (out == np.array([200, 30, 90], np.uint8)).all()


# ---------------------------------------------------------------------------------------------------- image folders

def test_class_folders_are_indexed_as_torchvision_imagefolder(tmp_path):
    from torchvision.datasets import ImageFolder

    for name in ["b", "a", "C", "a/nested"]:
        random_image(tmp_path / name / "x.png", 8, 8, seed=len(name))
    random_image(tmp_path / "b" / "y.JPEG", 9, 8, seed=7)
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    paths, labels, classes = scan_image_folder(tmp_path)
    reference = ImageFolder(str(tmp_path))
    assert classes == reference.classes
    assert [(p, int(y)) for p, y in zip(paths, labels)] == reference.samples


def test_class_folder_through_build_dataset(class_folder):
    dataset, facts = build_dataset(str(class_folder), image_size=16, seed=0)
    assert replace(facts, fingerprint=None) == DataFacts(3, 16, 2, None, class_names=["cat", "dog"])
    assert len(facts.fingerprint) == 64
    assert len(dataset) == 8
    assert dataset.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    # cat/0.png is already 16x16: no resize, so the item is exactly the official (x/255 - 0.5)/0.5, maybe mirrored.
    pixels = np.array(Image.open(class_folder / "cat" / "0.png"))
    expected = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    for epoch in range(4):
        dataset.set_epoch(epoch)
        x, y = dataset[0]
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and int(y) == 0
        assert torch.equal(x, expected) or torch.equal(x, expected.flip(-1))
    for i in range(len(dataset)):
        x, _ = dataset[i]
        assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1


def test_flat_folder_is_unconditional(tmp_path):
    for i in range(3):
        random_image(tmp_path / f"{i}.png", 12, 10, seed=i)
    dataset, facts = build_dataset(str(tmp_path), image_size=8)
    assert replace(facts, fingerprint=None) == DataFacts(3, 8, 0, None, class_names=None)
    assert [int(dataset[i][1]) for i in range(3)] == [0, 0, 0]


def test_flips_are_keyed_by_seed_epoch_and_index(class_folder):
    dataset = ImageFolderDataset(class_folder, image_size=16, seed=0)
    plain = ImageFolderDataset(class_folder, image_size=16, flip=False)[1][0]
    assert not torch.equal(plain, plain.flip(-1))

    def flips(ds, index, epochs=range(40)):
        seen = []
        for epoch in epochs:
            ds.set_epoch(epoch)
            x = ds[index][0]
            assert torch.equal(x, plain) or torch.equal(x, plain.flip(-1))
            seen.append(torch.equal(x, plain.flip(-1)))
        return seen

    first = flips(dataset, 1)
    assert 8 <= sum(first) <= 32  # a fair coin, not a constant
    assert flips(ImageFolderDataset(class_folder, image_size=16, seed=0), 1) == first  # reproducible
    assert flips(ImageFolderDataset(class_folder, image_size=16, seed=1), 1) != first  # keyed by the seed
    # keyed by the index, not by the order of access: visiting others in between changes nothing
    other = ImageFolderDataset(class_folder, image_size=16, seed=0)
    for epoch in range(40):
        other.set_epoch(epoch)
        other[2], other[0]
        assert other.flipped(1) == first[epoch]


def test_unreadable_image_is_named_in_the_error(tmp_path):
    random_image(tmp_path / "good.png", 8, 8, seed=0)
    (tmp_path / "bad.png").write_bytes(b"this is not a png")
    png = (tmp_path / "good.png").read_bytes()
    (tmp_path / "short.png").write_bytes(png[: len(png) // 2])
    dataset = ImageFolderDataset(tmp_path, image_size=8)
    names = [os.path.basename(p) for p in dataset.paths]
    with pytest.raises(ValueError, match="cannot read image .*bad.png"):
        dataset[names.index("bad.png")]
    with pytest.raises(ValueError, match="cannot read image .*short.png"):
        dataset[names.index("short.png")]


def test_bad_folders_are_refused_clearly(tmp_path, class_folder):
    with pytest.raises(FileNotFoundError, match="no images"):
        build_dataset(str(tmp_path), image_size=8)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(FileNotFoundError, match="empty_class holds no images"):
        build_dataset(str(tmp_path), image_size=8)
    random_image(tmp_path / "loose.png", 8, 8, seed=0)
    with pytest.raises(ValueError, match="mixes class sub-folders"):
        build_dataset(str(tmp_path), image_size=8)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        build_dataset(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="dico extract-latents --data"):
        build_dataset(str(class_folder), image_size=16, vae="ema")


# ---------------------------------------------------------------------------------------------------- VAE helpers

def test_the_scan_names_what_it_leaves_out(tmp_path):
    from dico.data.folders import scan_image_folder_and_skips

    for name in ("a/0.png", "a/1.png", "b/0.png"):
        random_image(tmp_path / name, 8, 8, seed=len(name))
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "self.png").symlink_to(tmp_path / "a" / "self.png")  # a link to itself: ELOOP
    (tmp_path / "b" / "gone.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "b" / "up").symlink_to(tmp_path / "b")  # a folder loop
    (tmp_path / "b" / "again.png").symlink_to(tmp_path / "a" / "0.png")
    paths, labels, classes, skipped = scan_image_folder_and_skips(tmp_path)
    assert [os.path.relpath(p, tmp_path) for p in paths] == ["a/0.png", "a/1.png", "b/0.png"]
    assert sorted(skipped) == [("a/notes.txt", "not an image file"), ("a/self.png", "a symbolic link loop"),
                               ("b/again.png", "a second link to an image already taken"),
                               ("b/gone.png", "a broken link"), ("b/up", "a symbolic link loop")]


def test_two_folder_loops_are_walked_once_not_exponentially(tmp_path):
    random_image(tmp_path / "a" / "0.png", 8, 8, seed=0)
    for name in "xyz":  # three links back: a walk that re-entered them would visit 3^40 folders
        (tmp_path / "a" / name).symlink_to(tmp_path / "a")
    paths, _, _ = scan_image_folder(tmp_path)
    assert [os.path.relpath(p, tmp_path) for p in paths] == ["a/0.png"]


def test_extraction_names_every_unreadable_image_at_once_and_writes_nothing(class_folder, vae_dir, tmp_path,
                                                                           capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(class_folder, data)
    for i in range(23):  # more than the 20 a message names
        (data / "cat" / f"bad{i:02d}.png").write_bytes(b"not a png at all")
    (data / "dog" / "empty.jpg").write_bytes(b"")
    Image.fromarray(np.zeros((8, 8), np.float32), "F").save(data / "dog" / "float.tiff")
    out = tmp_path / "latents"
    code = cli(["extract-latents", "--data", str(data), "--out", str(out), "--image-size", str(SIZE), "--vae",
                str(vae_dir), "--num-workers", "0", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"dico extract-latents: error: 25 of 33 images in {data} cannot "
                                                   "be read; fix or remove them and run again: cat/bad00.png (not "
                                                   "an image PIL can read), cat/bad01.png")
    assert "cat/bad19.png" in err and "cat/bad20.png" not in err and err.endswith(" and 5 more\n")
    assert not out.exists()  # checked before any work
    for path in [*(data / "cat").glob("bad*"), data / "dog" / "empty.jpg"]:
        path.unlink()
    code = cli(["extract-latents", "--data", str(data), "--out", str(out), "--image-size", str(SIZE), "--vae",
                str(vae_dir), "--num-workers", "0", "--device", "cpu", "--no-progress"])
    assert code == 2 and "1 of 9 images" in capsys.readouterr().err  # the mode F file, named by the same check


def test_extraction_counts_and_names_what_it_skipped(class_folder, vae_dir, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(class_folder, data)
    (data / "cat" / "loop.png").symlink_to(data / "cat" / "loop.png")
    (data / "dog" / "labels.txt").write_text("not an image")
    out = tmp_path / "latents"
    code = cli(["extract-latents", "--data", str(data), "--out", str(out), "--image-size", str(SIZE), "--vae",
                str(vae_dir), "--num-workers", "0", "--device", "cpu", "--no-progress"])
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"wrote latents of 8 images to {out}; skipped 2 entries: cat/loop.png (a symbolic link loop), "
        "dog/labels.txt (not an image file)")


def test_vae_loads_from_a_directory_and_decodes_scaled_latents(vae_dir):
    from diffusers import AutoencoderKL

    vae = load_vae(vae_dir, "cpu")
    reference = AutoencoderKL.from_pretrained(vae_dir)
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    for key, value in reference.state_dict().items():
        assert torch.equal(vae.state_dict()[key], value)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(decode_latents(vae, z), reference.decode(z / 0.18215).sample)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    mean, std = encode_moments(vae, x)
    posterior = reference.encode(x).latent_dist
    torch.testing.assert_close(mean, posterior.mean)
    torch.testing.assert_close(std, torch.exp(0.5 * posterior.logvar))


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")
def test_vae_names_resolve_and_missing_ones_fail_clearly(tmp_path):
    assert resolve_vae("ema") == "stabilityai/sd-vae-ft-ema"
    assert resolve_vae("mse") == "stabilityai/sd-vae-ft-mse"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_vae(str(tmp_path / "no-such-vae"))
    # offline and not cached: the Hub id cannot be found -> a message saying how to get it
    with pytest.raises(FileNotFoundError, match="hf download stabilityai/sd-vae-ft-mse"):
        load_vae("mse", cache_dir=tmp_path / "empty-cache", local_files_only=True)


# ---------------------------------------------------------------------------------------------------- extraction

def test_extracted_moments_are_the_posterior_of_each_image_and_its_mirror(extracted, class_folder, vae_dir):
    meta = json.loads((extracted / META).read_text())
    assert meta["count"] == 8 and meta["latent_shape"] == [4, 8, 8] and meta["image_size"] == SIZE
    assert meta["vae"] == str(vae_dir.resolve()) and meta["class_names"] == ["cat", "dog"]
    assert not (extracted / DONE).exists() and not (extracted / PLAN).exists()
    images = ImageFolderDataset(class_folder, image_size=SIZE, flip=False)
    np.testing.assert_array_equal(np.load(extracted / "labels.npy"), images.labels)
    moments = np.load(extracted / "moments.npy")
    assert moments.shape == (8, 2, 2, 4, 8, 8) and moments.dtype == np.float32
    vae = load_vae(vae_dir)
    for i in range(len(images)):
        x = images[i][0][None]
        for flip, view in enumerate([x, x.flip(-1)]):
            posterior = vae.encode(view).latent_dist
            torch.testing.assert_close(torch.from_numpy(moments[i, flip, 0]), posterior.mean[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(torch.from_numpy(moments[i, flip, 1]), posterior.std[0], atol=1e-5, rtol=1e-4)


def test_interrupted_extraction_resumes_to_the_uninterrupted_result(extracted, class_folder, vae_dir, tmp_path):
    out = tmp_path / "latents"
    settings = dict(image_size=SIZE, vae=str(vae_dir), batch_size=2, num_workers=0, dtype="float32", device="cpu",
                    progress=False)
    extract_latents(class_folder, out, max_batches=1, **settings)
    assert not (out / META).exists()
    assert np.load(out / DONE).tolist() == [True, True] + [False] * 6
    with pytest.raises(ValueError, match="unfinished latent extraction"):
        build_dataset(str(out))
    with pytest.raises(ValueError, match="other settings"):
        extract_latents(class_folder, out, **{**settings, "dtype": "float16"})
    extract_latents(class_folder, out, max_batches=2, **settings)  # a second interruption, then the rest
    extract_latents(class_folder, out, **settings)
    assert (out / META).exists()
    np.testing.assert_array_equal(open_moments(out), open_moments(extracted))
    before = (out / "moments.npy").stat().st_mtime_ns
    extract_latents(class_folder, out, **settings)  # finished: nothing to do
    assert (out / "moments.npy").stat().st_mtime_ns == before


def test_two_processes_extract_what_one_does(extracted, class_folder, vae_dir, tmp_path):
    out = tmp_path / "latents2"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "dico.cli",
           "extract-latents", "--data", str(class_folder), "--out", str(out), "--image-size", str(SIZE),
           "--vae", str(vae_dir), "--batch-size", "2", "--num-workers", "0", "--dtype", "float32", "--device", "cpu",
           "--no-progress"]
    done = run_child(cmd, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two, one = json.loads((out / META).read_text()), json.loads((extracted / META).read_text())
    statistics = ("latent_mean", "latent_std")  # measured on the moments, which agree to float rounding (below)
    assert {k: v for k, v in two.items() if k not in statistics} == {k: v for k, v in one.items() if k not in statistics}
    for key in statistics:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-6)
    np.testing.assert_allclose(open_moments(out), open_moments(extracted), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- latent data set

def synthetic_latents(directory, means, stds, labels):
    """A latents directory with chosen moments: (N, 2 flips, C, h, w) means and stds."""
    means, stds = np.asarray(means, np.float32), np.asarray(stds, np.float32)
    shape = list(means.shape[2:])
    create_latent_files(directory, np.asarray(labels), shape, "float32", [f"{i}.png" for i in range(len(labels))])
    moments = open_moments(directory, "r+")
    moments[:, :, 0], moments[:, :, 1] = means, stds
    moments.flush()
    write_json_atomic(directory / META, {"format": "dico-latents/1", "count": len(labels), "latent_shape": shape,
                                         "scale": 0.5, "vae": "ema", "class_names": None, "num_classes": 0,
                                         "dtype": "float32", "image_size": 16})
    return directory


def test_latent_draws_follow_the_stored_posterior_of_a_random_flip(tmp_path):
    shape = (4, 2, 2)
    channel_std = np.array([0.5, 1.0, 2.0, 0.25], np.float32)[:, None, None]
    means = np.stack([np.full(shape, 3.0), np.full(shape, -3.0)])[None]  # flip 0 at +3, flip 1 at -3
    stds = np.broadcast_to(channel_std, shape)[None, None].repeat(2, axis=1)
    dataset = LatentDataset(synthetic_latents(tmp_path / "lat", means, stds, [5]), seed=0)
    draws = []
    for epoch in range(600):
        dataset.set_epoch(epoch)
        z, label = dataset[0]
        assert int(label) == 5
        draws.append(z / 0.5)  # undo the stored scale
    draws = torch.stack(draws).double()
    mirrored = draws.mean(dim=(1, 2, 3)) < 0
    assert 0.42 < mirrored.double().mean() < 0.58  # a fair coin: 5 sigma at n=600 is 0.10
    for flip, group in ((0, draws[~mirrored]), (1, draws[mirrored])):
        n = len(group) * 4
        sample_mean = group.mean(dim=(0, 2, 3))
        sample_std = group.transpose(0, 1).reshape(4, -1).std(dim=1)
        bound = 5 * torch.from_numpy(channel_std[:, 0, 0]).double() / n ** 0.5
        assert ((sample_mean - torch.from_numpy(means[0, flip, :, 0, 0])).abs() < bound).all()
        torch.testing.assert_close(sample_std, torch.from_numpy(channel_std[:, 0, 0]).double(), rtol=0.1, atol=0)


def test_latent_draws_are_reproducible_per_seed_epoch_and_index(tmp_path):
    rng = np.random.default_rng(0)
    means, stds = rng.normal(size=(3, 2, 4, 2, 2)), rng.uniform(0.5, 1.5, size=(3, 2, 4, 2, 2))
    directory = synthetic_latents(tmp_path / "lat", means, stds, [0, 1, 2])

    def draw(seed, epoch, index):
        dataset = LatentDataset(directory, seed=seed)
        dataset.set_epoch(epoch)
        return dataset[index][0]

    z = draw(0, 3, 1)
    assert torch.equal(z, draw(0, 3, 1))
    for other in (draw(1, 3, 1), draw(0, 4, 1), draw(0, 3, 2)):
        assert not torch.equal(z, other)
    # DataLoader workers reopen the memory map (a pickled one would be copied into memory) and draw the same
    from dico.training.loop import KeyedItems

    opened = LatentDataset(directory)
    opened[0]
    assert pickle.loads(pickle.dumps(opened))._moments is None

    keys = [(e, i) for e in range(2) for i in range(3)]
    loader = torch.utils.data.DataLoader(KeyedItems(LatentDataset(directory, seed=0)), batch_size=None,
                                         sampler=keys, num_workers=1)
    for (epoch, index), (z, y) in zip(keys, loader):
        assert torch.equal(z, draw(0, epoch, index)) and int(y) == index


def test_build_dataset_on_latents_reports_their_space(extracted, vae_dir):
    dataset, facts = build_dataset(str(extracted), image_size=999, seed=0)
    assert isinstance(dataset, LatentDataset) and len(dataset) == 8
    assert replace(facts, fingerprint=None) == DataFacts(4, 8, 2, str(vae_dir.resolve()), 0.18215, ["cat", "dog"])
    assert facts.fingerprint == read_meta(extracted)["fingerprint"]
    # ema and mse share one encoder: latents may be decoded with the other decoder
    assert build_dataset(str(extracted), vae="mse")[1].vae == "stabilityai/sd-vae-ft-mse"


# ---------------------------------------------------------------------------------------------------- training, CLI

def test_training_runs_on_extracted_latents(extracted, vae_dir, tmp_path):
    config = preset("official", model="DiCo-Tiny", model_overrides=TINY_MODEL, data=str(extracted), global_batch=4,
                    max_steps=2, num_workers=0, results_dir=str(tmp_path / "run"))
    final = train(config, progress=False, write_grid=False)
    ckpt = torch.load(final, weights_only=False, map_location="cpu")
    assert ckpt["step"] == 2
    assert ckpt["space"] == {"resolution": 8, "channels": 4, "vae": str(vae_dir.resolve()), "latent_scale": 0.18215,
                             "latent_mean": None, "latent_std": None}
    assert ckpt["spec"]["config"]["num_classes"] == 2 and ckpt["spec"]["config"]["in_channels"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_training_runs_on_an_image_folder_in_pixel_space(class_folder, tmp_path):
    config = preset("official", model="DiCo-Tiny", model_overrides=TINY_MODEL, data=str(class_folder),
                    image_size=8, global_batch=4, max_steps=1, num_workers=0, results_dir=str(tmp_path / "run"))
    ckpt = torch.load(train(config, progress=False, write_grid=False), weights_only=False, map_location="cpu")
    assert ckpt["space"]["channels"] == 3 and ckpt["space"]["resolution"] == 8 and ckpt["space"]["vae"] is None


def test_export_digits_round_trips(tmp_path):
    out = tmp_path / "digits.npz"
    assert cli(["export-data", "digits", "--out", str(out)]) == 0
    images, labels = load_digits_uint8()
    with np.load(out) as npz:
        np.testing.assert_array_equal(npz["arr_0"], np.repeat(images[..., None], 3, axis=-1))
        np.testing.assert_array_equal(npz["arr_1"], labels)
