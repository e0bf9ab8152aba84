"""Captioned data for text-to-image: COCO 2014 as distributed and Hugging Face metadata.jsonl folders, extraction of
VAE moments with every caption's token embeddings (resumable, bad rows refused before anything is written), and the
latent data set that draws one caption per visit. A tiny random VAE and a tiny random CLIP tower; nothing downloads."""

import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dico.cli import main as cli
from dico.conditioning import TextTokens
from dico.data import (TextLatentDataset, build_dataset, draw_caption, evaluation_captions, extract_latents, load_vae,
                       read_captioned_images, read_captions, read_meta)
from dico.data.folders import load_image
from dico.data.latents import DONE, META, PLAN, open_moments, open_text_context
from dico.text import build_tiny_clip, load_text_encoder
from helpers import run_child, save_tiny_vae

SIZE = 16  # image size; the tiny VAE halves it once -> 8x8 latents
# COCO ids out of name order: images are numbered by id, as U-ViT's and REPA's COCO features are
COCO = {42: ("COCO_train2014_000000000042.jpg", ["A cat on a mat.", "a small grey cat", "cat"]),
        7: ("COCO_train2014_000000000007.jpg", ["Two dogs, running!", "dogs in a field"]),
        19: ("COCO_train2014_000000000019.jpg", ["a red bus", "the bus", "A BUS ON THE STREET", "bus", "a bus."])}


def random_image(path, height, width, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


def write_coco(root, entries=COCO, split="train2014"):
    annotations, images = [], []
    for image_id, (name, captions) in entries.items():
        random_image(root / split / name, 16 + image_id % 5, 20, seed=image_id)
        images.append({"id": image_id, "file_name": name, "height": 16, "width": 20})
        annotations += [{"id": 1000 * image_id + k, "image_id": image_id, "caption": c} for k, c in enumerate(captions)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps({"images": images,
                                                                             "annotations": annotations}))
    return root / split


def write_metadata(root, rows):
    root.mkdir(parents=True, exist_ok=True)
    for k, row in enumerate(rows):
        if isinstance(row, dict) and "file_name" in row:
            random_image(root / row["file_name"], 18, 16, seed=100 + k)
    (root / "metadata.jsonl").write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("towers")
    return {"vae": save_tiny_vae(base / "vae"),
            "clip": build_tiny_clip(base / "clip", width=32, layers=1, heads=2, seed=1)}


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return write_coco(tmp_path_factory.mktemp("coco"))


def settings(tiny, **overrides):
    return {"image_size": SIZE, "vae": str(tiny["vae"]), "batch_size": 1, "num_workers": 0, "dtype": "float32",
            "device": "cpu", "progress": False, "text_encoder": str(tiny["clip"]), **overrides}


@pytest.fixture(scope="module")
def extracted(coco, tiny, tmp_path_factory):
    """One uninterrupted extraction of the COCO split through the CLI."""
    out = tmp_path_factory.mktemp("latents") / "coco"
    code = cli(["extract-latents", "--data", str(coco), "--out", str(out), "--image-size", str(SIZE), "--vae",
                str(tiny["vae"]), "--text-encoder", str(tiny["clip"]), "--batch-size", "2", "--num-workers", "0",
                "--dtype", "float32", "--device", "cpu", "--no-progress", "--threads", str(torch.get_num_threads())])
    assert code == 0
    return out


def test_coco_split_reads_its_annotations_in_id_order(coco):
    images = read_captioned_images(coco)
    order = sorted(COCO)
    assert [p.rsplit("/", 1)[1] for p in images.paths] == [COCO[i][0] for i in order]
    assert images.captions == [COCO[i][1] for i in order]
    assert images.layout == "coco" and images.source.endswith("annotations/captions_train2014.json")



def test_an_annotation_file_elsewhere_is_named_with_captions(coco, tmp_path):
    import shutil

    moved = tmp_path / "elsewhere.json"
    shutil.copy(coco.parent / "annotations" / "captions_train2014.json", moved)
    images = read_captioned_images(coco, captions_file=moved)
    assert images.captions == read_captioned_images(coco).captions and images.source == str(moved)
    with pytest.raises(FileNotFoundError, match="captions file .*missing.json does not exist"):
        read_captioned_images(coco, captions_file=tmp_path / "missing.json")


def test_captioned_images_are_cropped_as_u_vit_prepared_coco(tmp_path):
    from dico.data.folders import square_center_crop

    pixels = np.random.default_rng(0).integers(0, 256, (21, 30, 3), dtype=np.uint8)
    # U-ViT: the rows and columns (n - side) // 2 : (n + side) // 2 of the array, then LANCZOS to size x size
    expected = Image.fromarray(pixels[0:21, 4:25]).resize((8, 8), Image.LANCZOS)
    np.testing.assert_array_equal(np.asarray(square_center_crop(Image.fromarray(pixels), 8)), np.asarray(expected))
    Image.fromarray(pixels).save(tmp_path / "x.png")
    x = load_image(tmp_path / "x.png", 8, "uvit")
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), np.asarray(expected) / 127.5 - 1, atol=1e-6)


def test_metadata_jsonl_takes_one_caption_or_a_list(tmp_path):
    root = write_metadata(tmp_path / "own", [{"file_name": "b.png", "text": "a boat"},
                                             {"file_name": "sub/a.jpg", "text": ["an apple", "a red apple"]}])
    images = read_captioned_images(root)
    assert images.paths == [str(root / "b.png"), str(root / "sub" / "a.jpg")]
    assert images.captions == [["a boat"], ["an apple", "a red apple"]] and images.layout == "metadata.jsonl"


def test_bad_rows_are_named_by_file_and_line_and_nothing_is_written(tmp_path, tiny, capsys):
    root = write_metadata(tmp_path / "bad", [{"file_name": "ok.png", "text": "fine"},
                                             '{"file_name": "x.png", "text": ',
                                             {"file_name": "empty.png", "text": []},
                                             {"file_name": "nofile.png", "text": "a caption"}])
    (root / "nofile.png").unlink()
    out = tmp_path / "latents"
    code = cli(["extract-latents", "--data", str(root), "--out", str(out), "--image-size", str(SIZE), "--vae",
                str(tiny["vae"]), "--text-encoder", str(tiny["clip"]), "--num-workers", "0", "--device", "cpu",
                "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    meta = root / "metadata.jsonl"
    assert err.startswith("dico extract-latents: error: 3 bad rows; fix them and run again: ")
    assert f"{meta}:2: not JSON" in err and f"{meta}:3: empty caption list" in err
    assert f"{meta}: nofile.png: image file missing" in err
    assert not out.exists()

    coco_root = tmp_path / "coco"
    split = write_coco(coco_root, {1: ("one.jpg", ["a caption"]), 2: ("two.jpg", [])})
    with pytest.raises(ValueError, match="two.jpg: empty caption list"):
        extract_latents(split, out, **settings(tiny))
    (coco_root / "annotations" / "captions_train2014.json").write_text('{"images": [')
    with pytest.raises(ValueError, match="captions_train2014.json as COCO captions"):
        extract_latents(split, out, **settings(tiny))
    with pytest.raises(FileNotFoundError, match="has no captions"):
        extract_latents(tmp_path / "bad" / "..", out, **settings(tiny))
    assert not out.exists()


def test_extraction_stores_every_caption_s_tokens_and_the_empty_caption_once(extracted, coco, tiny):
    meta = read_meta(extracted)
    encoder = load_text_encoder(tiny["clip"])
    assert meta["text_encoder"] == encoder.to_dict() and meta["context_shape"] == [77, 32]
    assert meta["num_captions"] == 10 and meta["count"] == 3 and meta["num_classes"] == 0
    assert meta["crop"] == "uvit"  # U-ViT's COCO crop, as REPA's COCO latents were made
    assert not (extracted / DONE).exists() and not (extracted / PLAN).exists()
    order = sorted(COCO)
    assert read_captions(extracted) == [COCO[i][1] for i in order]
    assert np.load(extracted / "caption_offsets.npy").tolist() == [0, 2, 7, 10]
    context = open_text_context(extracted)
    assert context.dtype == np.float16 and context.shape == (10, 77, 32)
    expected = encoder.encode([c for i in order for c in COCO[i][1]])
    torch.testing.assert_close(torch.from_numpy(np.array(context, dtype=np.float32)), expected.half().float(),
                               rtol=0, atol=0)
    null = np.load(extracted / "null_context.npy")
    assert null.dtype == np.float16
    torch.testing.assert_close(torch.from_numpy(null.astype(np.float32)), encoder.null().half().float(), rtol=0,
                               atol=0)
    vae = load_vae(tiny["vae"])
    moments = open_moments(extracted)
    for row, image_id in enumerate(order):
        x = load_image(coco / COCO[image_id][0], SIZE, "uvit")[None]
        torch.testing.assert_close(torch.from_numpy(np.array(moments[row, 0, 0])), vae.encode(x).latent_dist.mean[0],
                                   atol=1e-5, rtol=1e-4)


def test_interrupted_text_extraction_resumes_to_the_uninterrupted_result(extracted, coco, tiny, tmp_path):
    out = tmp_path / "latents"
    extract_latents(coco, out, max_batches=1, **settings(tiny))
    assert not (out / META).exists() and np.load(out / DONE).tolist() == [True, False, False]
    other = build_tiny_clip(tmp_path / "other-clip", width=32, layers=1, heads=2, seed=2)
    with pytest.raises(ValueError, match="other settings.*text_encoder"):
        extract_latents(coco, out, **settings(tiny, text_encoder=str(other)))
    extract_latents(coco, out, max_batches=1, **settings(tiny))
    extract_latents(coco, out, **settings(tiny))
    assert (out / META).exists()
    np.testing.assert_array_equal(open_text_context(out), open_text_context(extracted))
    np.testing.assert_allclose(open_moments(out), open_moments(extracted), rtol=0, atol=1e-6)


def test_two_processes_extract_the_captions_one_does(extracted, coco, tiny, tmp_path):
    out = tmp_path / "latents2"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "dico.cli",
           "extract-latents", "--data", str(coco), "--out", str(out), "--image-size", str(SIZE), "--vae",
           str(tiny["vae"]), "--text-encoder", str(tiny["clip"]), "--batch-size", "1", "--num-workers", "0",
           "--dtype", "float32", "--device", "cpu", "--no-progress"]
    done = run_child(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_meta(out)["text_encoder"] == read_meta(extracted)["text_encoder"]
    assert read_captions(out) == read_captions(extracted)
    np.testing.assert_allclose(open_text_context(out), open_text_context(extracted), rtol=0, atol=1e-3)
    np.testing.assert_allclose(open_moments(out), open_moments(extracted), rtol=0, atol=1e-6)


def test_text_latents_draw_one_stored_caption_per_visit(extracted):
    dataset, facts = build_dataset(str(extracted), seed=3)
    assert isinstance(dataset, TextLatentDataset) and facts.num_classes == 0 and facts.context_shape == (77, 32)
    assert facts.text_encoder == read_meta(extracted)["text_encoder"]
    stored = np.array(open_text_context(extracted), dtype=np.float32)
    offsets = np.load(extracted / "caption_offsets.npy")
    seen = {i: set() for i in range(3)}
    for epoch in range(20):
        dataset.set_epoch(epoch)
        for index in range(3):
            latent, context = dataset[index]
            row = offsets[index] + draw_caption(3, epoch, index, offsets[index + 1] - offsets[index])
            assert dataset.caption_row(index) == row
            torch.testing.assert_close(context, torch.from_numpy(stored[row]), rtol=0, atol=0)
            assert latent.shape == (4, 8, 8)
            seen[index].add(int(row))
    assert seen == {i: set(range(offsets[i], offsets[i + 1])) for i in range(3)}  # every caption gets drawn
    cond = facts.conditioning(torch.stack([dataset[i][1] for i in range(3)]))
    assert isinstance(cond, TextTokens)
    torch.testing.assert_close(cond.null().context[0], facts.null_context)


def test_evaluation_takes_one_caption_per_image_keyed_like_training_s_first_epoch(extracted, coco):
    per_image = read_captions(extracted)
    prompts = evaluation_captions(extracted, seed=4)
    assert prompts == evaluation_captions(coco, seed=4)  # the folder and its latents agree
    assert prompts == [per_image[i][draw_caption(4, 0, i, len(per_image[i]))] for i in range(3)]
    longer = evaluation_captions(coco, seed=4, count=7)
    assert longer[:3] == prompts and longer[6] == per_image[0][draw_caption(4, 2, 0, len(per_image[0]))]
    assert all(longer[k] in per_image[k % 3] for k in range(7))
