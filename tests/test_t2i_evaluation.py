"""`dico evaluate` for text-to-image: CLIP score of samples against the prompts they carry, and reference statistics
from a folder of photographs of any size (COCO's val2014), centre-cropped as ADM and REPA prepare them.

No network: the CLIP model is a tiny one with random weights and CLIP's real tokenizer (tests/clip_helpers.py), and
its score is checked against a hand computation with the same model; with random weights a matching prompt scores no
better than a shuffled one, so the direction of the score is not something these tests can show. FID runs on the
offline digits features (the Inception path reads images the same way and is covered by test_evaluation.py).
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from clip_helpers import save_tiny_clip
from dico.cli import main
from dico.data.folders import center_crop_arr
from dico.evaluation import clip_score, evaluate, iter_image_batches, open_image_source, read_prompts
from dico.evaluation.images import content_hash
from dico.images import PROMPTS_KEY, write_npz

PROMPTS = ["a handwritten 3", "seven", "the digit 0", "a photo of a cat on a red sofa", "", "two dogs"]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """The digits classifier is trained once per session into its own cache folder."""
    monkeypatch.setenv("DICO_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "dico_cache"))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    # Seed 4: on the test images the pair cosines have both signs and a positive mean, so every term counts.
    return save_tiny_clip(tmp_path_factory.mktemp("clip"), seed=4)


def colour_images(seed: int, n: int, size: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    return np.stack([np.asarray(Image.fromarray(c).resize((size, size), Image.BILINEAR)) for c in coarse])


def sampled_npz(path, images, prompts) -> str:
    """An .npz as `dico sample --prompt` writes it: ADM's arr_0 / arr_1 and the prompts beside them."""
    write_npz(path, [images], len(images), images.shape[1:], np.zeros(len(images)),
              extra={PROMPTS_KEY: np.array(prompts)})  # fmt: skip
    return path


def hand_clip_score(clip_folder, images: np.ndarray, prompts) -> tuple[float, torch.Tensor]:
    """CLIP score by hand through CLIPModel.forward (not the get_*_features torchmetrics calls): 100 x the mean
    cosine of image and text embeddings, clamped at 0 as torchmetrics clamps the mean; and the pair cosines."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(clip_folder).eval()
    processor = CLIPProcessor.from_pretrained(clip_folder)
    inputs = processor(text=list(prompts), images=list(torch.from_numpy(images).permute(0, 3, 1, 2)),
                       return_tensors="pt", padding=True)  # fmt: skip
    with torch.no_grad():
        out = model(**inputs)
    cosines = (out.image_embeds * out.text_embeds).sum(-1) / (out.image_embeds.norm(dim=-1) * out.text_embeds.norm(dim=-1))
    return max(100 * cosines.mean().item(), 0.0), cosines


# ------------------------------------------------------------------------------------------------------ CLIP score
def test_clip_score_is_torchmetrics_clip_score_and_equals_a_hand_computation(tiny_clip, tmp_path):
    images = colour_images(0, len(PROMPTS))
    samples = open_image_source(sampled_npz(tmp_path / "samples.npz", images, PROMPTS))
    assert read_prompts(samples) == PROMPTS
    expected, cosines = hand_clip_score(tiny_clip, images, PROMPTS)
    assert expected > 0 and len(set(np.sign(cosines.numpy()))) == 2  # the clamp and both signs are exercised
    for batch_size in (1, 4, 32):  # the mean does not depend on how the images are batched
        got = clip_score(samples, PROMPTS, tiny_clip, batch_size=batch_size, progress=False)
        assert got == pytest.approx(expected, abs=1e-4)
    # Another prompt for one image changes the score by that pair's cosine change, as the mean says.
    changed = PROMPTS[:1] + ["something else entirely"] + PROMPTS[2:]
    other, other_cosines = hand_clip_score(tiny_clip, images, changed)
    assert clip_score(samples, changed, tiny_clip, progress=False) == pytest.approx(other, abs=1e-4)
    assert other - expected == pytest.approx(100 * (other_cosines[1] - cosines[1]).item() / len(PROMPTS), abs=1e-4)
    # A negative mean cosine (this random CLIP's are all negative here) is clamped to 0, as torchmetrics does.
    negative = save_tiny_clip(tmp_path / "negative_clip", seed=0)
    _, cosines = hand_clip_score(negative, images, PROMPTS)
    assert cosines.mean() < 0 and clip_score(samples, PROMPTS, negative, progress=False) == 0.0


def test_evaluate_reports_clip_score_for_npz_and_folder_samples_alike(tiny_clip, tmp_path, capsys):
    """The same samples as an .npz with prompts and as a PNG folder with metadata.jsonl give the same numbers; the
    CLI prints the CLIP score and writes it to the JSON."""
    images = np.repeat(colour_images(1, len(PROMPTS), size=16)[..., :1], 3, axis=-1)  # grey, as digits are
    npz = sampled_npz(tmp_path / "samples.npz", images, PROMPTS)
    folder = tmp_path / "pngs"
    folder.mkdir()
    rows = []
    for i in reversed(range(len(images))):  # row order does not matter: file names match
        Image.fromarray(images[i]).save(folder / f"{i:03d}.png")
        rows.append(json.dumps({"file_name": f"{i:03d}.png", "text": PROMPTS[i]}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    reference = tmp_path / "ref.npz"
    np.savez(reference, colour_images(2, 8, size=16))
    by_npz = evaluate(reference, npz, features="digits", device="cpu", progress=False, clip_model=tiny_clip)
    by_folder = evaluate(reference, folder, features="digits", device="cpu", progress=False, clip_model=tiny_clip)
    expected, _ = hand_clip_score(tiny_clip, images, PROMPTS)
    assert by_npz.clip_score == pytest.approx(expected, abs=1e-4)
    assert by_folder.clip_score == pytest.approx(by_npz.clip_score, abs=1e-5)
    assert by_folder.fid == pytest.approx(by_npz.fid, rel=1e-6) and by_npz.clip_model == str(tiny_clip)

    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(reference), str(npz), "--features", "digits", "--device", "cpu", "--quiet",
                 "--clip-model", str(tiny_clip), "--json", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert f"CLIP score       {by_npz.clip_score:.4f}" in printed
    metrics = json.loads(out.read_text())
    assert metrics["clip_score"] == pytest.approx(by_npz.clip_score, abs=1e-5)
    # Without --clip-model there is no CLIP score row, and samples without prompts are fine.
    plain = evaluate(reference, npz, features="digits", device="cpu", progress=False)
    assert plain.clip_score is None and "CLIP score" not in plain.format()


def _no_work_done(tmp_path):
    return not list(tmp_path.rglob("*.features.npz"))


@pytest.mark.parametrize("case, message", [
    ("no prompts", "carries no prompts"),
    ("fewer prompts", "holds 6 images but 5 prompts"),
    ("pickled prompts", "must be an array of strings"),
    ("prompts not strings", "one string per image"),
    ("folder without a row", "gives no prompt for 1 of 6 images (first: 005.png)"),
    ("folder with a list", "'text' must be the one prompt"),
    ("folder with a stray row", "lists 1 files that are not images"),
    ("folder with bad JSON", "metadata.jsonl, line 2: not JSON"),
    ("missing CLIP folder", "CLIP model folder"),
    ("not a CLIP folder", "cannot load a CLIP model and processor"),
])  # fmt: skip
def test_bad_prompts_and_clip_models_are_one_line_errors_before_any_work(case, message, tiny_clip, tmp_path, capsys):
    images = colour_images(3, len(PROMPTS))
    reference = tmp_path / "ref.npz"
    np.savez(reference, colour_images(4, 8))
    samples, clip = tmp_path / "samples.npz", str(tiny_clip)
    if case == "no prompts":
        np.savez(samples, images)
    elif case == "fewer prompts":
        np.savez(samples, images, prompts=np.array(PROMPTS[:5]))
    elif case == "pickled prompts":
        np.savez(samples, images, prompts=np.array(PROMPTS, dtype=object))
    elif case == "prompts not strings":
        np.savez(samples, images, prompts=np.arange(len(PROMPTS)))
    elif case.startswith("folder"):
        samples = tmp_path / "pngs"
        samples.mkdir()
        rows = []
        for i, image in enumerate(images):
            Image.fromarray(image).save(samples / f"{i:03d}.png")
            rows.append(json.dumps({"file_name": f"{i:03d}.png", "text": PROMPTS[i]}))
        if case == "folder without a row":
            rows.pop()
        elif case == "folder with a list":
            rows[2] = json.dumps({"file_name": "002.png", "text": ["a", "b"]})
        elif case == "folder with a stray row":
            rows.append(json.dumps({"file_name": "zzz.png", "text": "gone"}))
        elif case == "folder with bad JSON":
            rows[1] = rows[1][:-1]
        (samples / "metadata.jsonl").write_text("\n".join(rows))
    else:
        sampled_npz(samples, images, PROMPTS)
        clip = str(tmp_path / "nowhere") if case == "missing CLIP folder" else str(tmp_path)
    code = main(["evaluate", str(reference), str(samples), "--features", "digits", "--device", "cpu", "--quiet",
                 "--clip-model", clip])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert _no_work_done(tmp_path)


# ------------------------------------------------------------------------------- a reference folder of photographs
def photographs(folder, sizes, seed=5):
    """Images of different sizes and modes, as COCO's val2014 holds (some grey)."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i, (w, h) in enumerate(sizes):
        coarse = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
        (image.convert("L") if i == 1 else image).save(folder / f"COCO_val2014_{i:012d}.jpg", quality=95)
    return folder


def uvit_crop(image: Image.Image, size: int) -> np.ndarray:
    """U-ViT's COCO crop as its datasets.py writes it: slice the central square of the array, LANCZOS to size."""
    pixels = np.asarray(image)
    side = min(pixels.shape[:2])
    rows, cols = pixels.shape[0], pixels.shape[1]
    square = pixels[(rows - side) // 2 : (rows + side) // 2, (cols - side) // 2 : (cols + side) // 2]
    return np.asarray(Image.fromarray(square).resize((size, size), Image.LANCZOS))


def test_a_reference_folder_of_any_sizes_is_read_centre_cropped_as_uvit_or_adm(tmp_path):
    sizes = [(40, 30), (17, 50), (64, 64), (33, 16), (100, 45)]
    folder = photographs(tmp_path / "val2014", sizes)
    with pytest.raises(ValueError, match="must share one size"):
        list(iter_image_batches(open_image_source(folder), 2))
    files = sorted(folder.iterdir())
    hand = {"uvit": lambda f: uvit_crop(Image.open(f).convert("RGB"), 16),
            "adm": lambda f: np.asarray(center_crop_arr(Image.open(f).convert("RGB"), 16))}
    for crop in ("uvit", "adm"):
        source = open_image_source(folder, crop_size=16, crop=crop)
        assert (source.count, source.height, source.width, source.crop_size) == (5, 16, 16, 16)
        pixels = np.concatenate(list(iter_image_batches(source, 2)))
        np.testing.assert_array_equal(pixels, np.stack([hand[crop](f) for f in files]))
    assert open_image_source(folder, crop_size=16).crop == "uvit"  # COCO's, the default
    # The features cache tells cropped reads from plain ones, and crops of other sizes or ways apart.
    hashes = {content_hash(open_image_source(folder, crop_size=s, crop=c)) for s in (16, 24) for c in ("uvit", "adm")}
    hashes.add(content_hash(open_image_source(folder)))
    assert len(hashes) == 5
    with pytest.raises(ValueError, match="unknown crop 'torchvision'"):
        open_image_source(folder, crop_size=16, crop="torchvision")
    np.savez(tmp_path / "ref.npz", pixels)
    with pytest.raises(ValueError, match="applies to a folder of images"):
        open_image_source(tmp_path / "ref.npz", crop_size=16)
    with pytest.raises(ValueError, match="positive number of pixels"):
        open_image_source(folder, crop_size=0)


def test_evaluate_against_a_cropped_photograph_folder_equals_its_cropped_npz(tmp_path, capsys):
    sizes = [(40, 30), (17, 50), (64, 64), (33, 16), (100, 45), (20, 21), (50, 80), (31, 31)]
    folder = photographs(tmp_path / "val2014", sizes, seed=6)
    cropped = np.stack([uvit_crop(Image.open(f).convert("RGB"), 16) for f in sorted(folder.iterdir())])
    np.savez(tmp_path / "cropped.npz", cropped)
    samples = tmp_path / "samples.npz"
    np.savez(samples, colour_images(7, 8, size=16))
    by_folder = evaluate(folder, samples, features="digits", device="cpu", progress=False, reference_size=16)
    by_npz = evaluate(tmp_path / "cropped.npz", samples, features="digits", device="cpu", progress=False)
    assert by_folder.fid == pytest.approx(by_npz.fid, rel=1e-9) and by_folder.num_reference == 8
    assert main(["evaluate", str(folder), str(samples), "--features", "digits", "--quiet", "--device", "cpu",
                 "--reference-size", "16"]) == 0  # fmt: skip
    assert f"{by_npz.fid:.4f}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:  # refused while the flags are read
        main(["evaluate", str(folder), str(samples), "--features", "digits", "--reference-size", "0"])
    assert exit_.value.code == 2
    assert "--reference-size must be an integer >= 1" in capsys.readouterr().err
