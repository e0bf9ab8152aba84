"""Captioned images: which caption an item carries at each visit, and (below) the caption sources dico reads."""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..randomness import PURPOSES, keyed_generator
from .folders import CROPS, load_image, name_some

# The last word of a caption draw's key (seed, PURPOSES["data"], epoch, index, CAPTION_DRAW): a stream apart from the
# item's flip and latent noise (folders.AUGMENT_DRAW = 1), so adding captions changes no image draw.
CAPTION_DRAW = 2


def caption_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of item `index`'s caption draw in `epoch`."""
    return keyed_generator(seed, PURPOSES["data"], epoch, index, CAPTION_DRAW)


def draw_caption(seed: int, epoch: int, index: int, count: int) -> int:
    """Which of an item's `count` captions it carries in this epoch: uniform, keyed by (seed, epoch, index)."""
    return int(torch.randint(count, (1,), generator=caption_generator(seed, epoch, index)))


# ---------------------------------------------------------------------------------------------------- caption sources
# Two layouts:
#   COCO 2014 as distributed: ROOT/train2014/*.jpg with ROOT/annotations/captions_train2014.json (likewise val2014);
#     `--data ROOT/train2014` finds its annotation file beside it. Images in the order of their COCO id (as U-ViT's
#     and REPA's COCO features are numbered), captions in the annotation file's order.
#   Hugging Face image folders: ROOT/metadata.jsonl, one JSON object per line with "file_name" (relative to ROOT)
#     and "text" (one caption, or a list of captions). Images in the file's line order.

METADATA = "metadata.jsonl"
COCO_SPLITS = ("train2014", "val2014")


@dataclass
class CaptionedImages:
    """Images and their captions: `paths[i]` (absolute) has the non-empty list `captions[i]`."""

    root: Path
    paths: list
    captions: list
    source: str  # where the captions came from (the annotation or metadata file)
    layout: str  # "coco" or "metadata.jsonl"

    def fingerprint(self) -> str:
        """A hash of every (relative path, captions): a resumed extraction must see the same images and captions."""
        digest = hashlib.sha256()
        for path, captions in zip(self.paths, self.captions):
            digest.update(json.dumps([os.path.relpath(path, self.root), captions]).encode() + b"\n")
        return digest.hexdigest()


def coco_annotation_file(folder) -> Path | None:
    """ROOT/annotations/captions_<split>.json for a COCO split folder ROOT/<split>, if it is there."""
    folder = Path(folder)
    candidate = folder.parent / "annotations" / f"captions_{folder.name}.json"
    return candidate if candidate.is_file() else None


def is_captioned_folder(folder) -> bool:
    folder = Path(folder)
    return (folder / METADATA).is_file() or coco_annotation_file(folder) is not None


def read_captioned_images(folder, captions_file=None) -> CaptionedImages:
    """The images of `folder` and their captions, from `captions_file` (a COCO captions .json or a metadata.jsonl)
    or, by default, from the layout `folder` has. Every bad row in one error naming the file (and line): a missing
    image, an empty caption list, an unreadable JSON line or file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist or is not a directory")
    if captions_file is None:
        if (folder / METADATA).is_file():
            captions_file = folder / METADATA
        else:
            captions_file = coco_annotation_file(folder)
        if captions_file is None:
            raise FileNotFoundError(f"{folder} has no captions: expected {folder / METADATA} (Hugging Face image "
                                    f"folder) or {folder.parent / 'annotations' / f'captions_{folder.name}.json'} "
                                    "(COCO 2014 split)")
    captions_file = Path(captions_file)
    if not captions_file.is_file():
        raise FileNotFoundError(f"captions file {captions_file} does not exist")
    if captions_file.suffix == ".jsonl":
        paths, captions, bad = _read_metadata_jsonl(folder, captions_file)
        layout = METADATA
    else:
        paths, captions, bad = _read_coco(folder, captions_file)
        layout = "coco"
    bad += [f"{captions_file}: {os.path.relpath(path, folder)}: image file missing" for path in paths
            if not os.path.isfile(path)]
    if bad:
        raise ValueError(f"{len(bad)} bad row{'s' if len(bad) > 1 else ''}; fix them and run again: {name_some(bad)}")
    if not paths:
        raise ValueError(f"{captions_file} lists no images")
    return CaptionedImages(folder.resolve(), [str(Path(p).resolve()) for p in paths], captions, str(captions_file),
                           layout)


def _check_captions(text) -> str | None:
    """Why `text` (a caption or a list of them) is not a usable caption list, or None."""
    texts = [text] if isinstance(text, str) else text
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return f"\"text\" must be a caption or a list of captions, got {type(text).__name__}"
    if not texts:
        return "empty caption list"
    if any(not t.strip() for t in texts):
        return "blank caption (the empty caption is the null condition, trained by caption dropout)"
    return None


def _read_metadata_jsonl(folder: Path, file: Path) -> tuple:
    paths, captions, bad = [], [], []
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read {file}: {err}") from err
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{file}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            bad.append(f"{where}: not JSON ({err.msg})")
            continue
        if not isinstance(row, dict) or "file_name" not in row or "text" not in row:
            bad.append(f"{where}: needs \"file_name\" and \"text\"")
            continue
        problem = _check_captions(row["text"])
        if problem:
            bad.append(f"{where}: {problem}")
            continue
        paths.append(str(folder / row["file_name"]))
        captions.append([row["text"]] if isinstance(row["text"], str) else list(row["text"]))
    return paths, captions, bad


def _read_coco(folder: Path, file: Path) -> tuple:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        images = {int(image["id"]): image["file_name"] for image in data["images"]}
        annotations = [(int(a["image_id"]), a["caption"]) for a in data["annotations"]]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        what = err.msg if isinstance(err, json.JSONDecodeError) else f"{type(err).__name__}: {err}"
        raise ValueError(f"cannot read {file} as COCO captions (images, annotations): {what}") from err
    by_image = {image_id: [] for image_id in images}
    bad = []
    for image_id, text in annotations:
        if image_id not in by_image:
            bad.append(f"{file}: a caption of image id {image_id}, which the file does not list")
        elif isinstance(text, str) and text.strip():
            by_image[image_id].append(text)
    order = sorted(images)
    bad += [f"{file}: {images[i]}: empty caption list" for i in order if not by_image[i]]
    return [str(folder / images[i]) for i in order], [by_image[i] for i in order], bad


def evaluation_captions(source, seed: int = 0, count: int | None = None) -> list:
    """One caption per image of `source` (a captioned folder, see read_captioned_images, or a latents folder
    extracted with a text encoder), drawn by the key (seed, 0, image index) as training's first epoch would:
    the prompts of "one sample per val image" (REPA's COCO protocol). `count` past the number of images cycles the
    images again, the k-th pass drawing with epoch k (U-ViT's 30K samples from COCO val's 40,504 images stop short of
    a second pass)."""
    from .latents import is_latent_dir, read_captions

    captions = (read_captions(source) if is_latent_dir(source) else read_captioned_images(source).captions)
    count = len(captions) if count is None else int(count)
    return [captions[k % len(captions)][draw_caption(seed, k // len(captions), k % len(captions),
                                                     len(captions[k % len(captions)]))] for k in range(count)]


class CaptionedImageDataset(torch.utils.data.Dataset):
    """(image float32 (3, size, size) in [-1, 1], 0) of a CaptionedImages list, centre-cropped as `crop` says (a key
    of dico.data.folders.CROPS: "uvit", U-ViT's COCO crop behind REPA's COCO latents, or "adm"); what extraction
    encodes (the captions are encoded apart)."""

    def __init__(self, images: CaptionedImages, image_size: int = 256, crop: str = "uvit"):
        if int(image_size) < 1:
            raise ValueError(f"image size must be a positive number of pixels, got {image_size}")
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {tuple(CROPS)}, got {crop!r}")
        self.crop = crop
        self.images, self.image_size = images, int(image_size)
        self.root, self.paths = images.root, images.paths
        self.labels = np.zeros(len(self.paths), dtype=np.int64)
        self.class_names, self.num_classes, self.skipped = None, 0, []

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return load_image(self.paths[index], self.image_size, self.crop), torch.tensor(0, dtype=torch.int64)
