"""Image folders: `root/<class>/*.jpg` (class-conditional, as torchvision's ImageFolder) or a flat folder of images
(unconditional), cropped as ADM and the official release crop, flipped by a keyed coin.

Pixel values follow the official transform (ToTensor then Normalize(0.5, 0.5)): float32 CHW RGB in [-1, 1].
"""

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..images import IMAGE_EXTENSIONS, read_rgb
from ..randomness import PURPOSES, keyed_generator

# The last word of an item's augmentation key, (seed, PURPOSES["data"], epoch, index, AUGMENT_DRAW): it keeps the
# key apart from the data-order key (seed, PURPOSES["data"], epoch), which keyed_seed would otherwise equal for
# index 0 (SeedSequence pads short keys with zeros).
AUGMENT_DRAW = 1


def augment_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one item's augmentation draws (flip, latent noise) in one epoch."""
    return keyed_generator(seed, PURPOSES["data"], epoch, index, AUGMENT_DRAW)


def center_crop_arr(image: Image.Image, size: int) -> Image.Image:
    """ADM's center crop: halve with a BOX filter while the short side is at least 2*size (cheap, alias-free),
    resize with BICUBIC so the short side is `size`, then cut the central size x size square."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    pixels = np.asarray(image)
    top = (pixels.shape[0] - size) // 2
    left = (pixels.shape[1] - size) // 2
    return Image.fromarray(pixels[top:top + size, left:left + size])


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(directory: str, seen: set) -> list:
    """Image files below `directory`, recursively, in torchvision ImageFolder's order. Symbolic links are followed,
    but every directory is entered once and every file taken once (by device and inode): a link loop or a second
    link to the same images neither repeats nor relabels them. `seen` carries the files taken across classes."""
    found, entered = [], set()
    for parent, dirs, names in sorted(os.walk(directory, followlinks=True)):
        identity = _identity(parent)
        if identity in entered:
            dirs[:] = []  # a loop or a second way into a directory already walked
            continue
        entered.add(identity)
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(parent, name)
            identity = _identity(path)
            if is_image_file(name) and identity is not None and identity not in seen:
                seen.add(identity)
                found.append(path)
    return found


def _identity(path: str):
    """(device, inode) of what `path` points to, or None for a dangling link."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def scan_image_folder(root) -> tuple:
    """(paths, labels, class_names) of an image folder.

    Sub-folders are classes, sorted by name and indexed as torchvision's ImageFolder indexes them, so labels match
    ImageNet's usual class indices; a folder holding images directly is unconditional (every label 0,
    class_names None).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    entries = list(os.scandir(root))
    classes = sorted(e.name for e in entries if e.is_dir())
    loose = sorted(e.name for e in entries if e.is_file() and is_image_file(e.name))
    if classes and loose:
        raise ValueError(f"{root} mixes class sub-folders ({classes[:3]}...) with loose images ({loose[:3]}...); "
                         "use either root/<class>/<image> (class-conditional) or root/<image> (unconditional)")
    if loose:
        paths = [str(root / name) for name in loose]
        return paths, np.zeros(len(paths), dtype=np.int64), None
    paths, labels, seen = [], [], set()
    for label, name in enumerate(classes):
        found = _images_under(str(root / name), seen)
        if not found:
            raise FileNotFoundError(f"class folder {root / name} holds no images "
                                    f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
        paths.extend(found)
        labels.extend([label] * len(found))
    if not paths:
        raise FileNotFoundError(f"no images in {root}: expected root/<class>/<image> or root/<image> "
                                f"with extensions {', '.join(IMAGE_EXTENSIONS)}")
    return paths, np.asarray(labels, dtype=np.int64), classes


def folder_fingerprint(root, paths, labels) -> str:
    """A hash of the (relative path, label) list: a resumed extraction must see the same images in the same order."""
    digest = hashlib.sha256()
    for path, label in zip(paths, labels):
        digest.update(f"{os.path.relpath(path, root)}\t{int(label)}\n".encode())
    return digest.hexdigest()


def load_image(path, size: int) -> torch.Tensor:
    """One image file as float32 (3, size, size) in [-1, 1], center-cropped; a clear error if it cannot be read."""
    pixels = np.asarray(center_crop_arr(read_rgb(path), size))
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float()
    return x.div_(255.0).sub_(0.5).div_(0.5)  # ToTensor + Normalize(0.5, 0.5), as the official transform


class ImageFolderDataset(torch.utils.data.Dataset):
    """(image float32 (3, size, size) in [-1, 1], label int64) from an image folder.

    With `flip`, each item is mirrored by a coin keyed by (seed, epoch, index): call `set_epoch(epoch)` before
    indexing (the trainer does), and the same item in the same epoch is the same image in every process and worker.
    """

    def __init__(self, root, image_size: int = 256, seed: int = 0, flip: bool = True):
        if int(image_size) < 1:
            raise ValueError(f"image size must be a positive number of pixels, got {image_size}")
        self.root = Path(root)
        self.image_size, self.seed, self.flip = int(image_size), int(seed), flip
        self.paths, self.labels, self.class_names = scan_image_folder(self.root)
        self.num_classes = 0 if self.class_names is None else len(self.class_names)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.paths)

    def flipped(self, index: int) -> bool:
        return bool(torch.randint(2, (1,), generator=augment_generator(self.seed, self.epoch, index)))

    def __getitem__(self, index):
        x = load_image(self.paths[index], self.image_size)
        if self.flip and self.flipped(index):
            x = torch.flip(x, dims=[-1])
        return x, torch.tensor(self.labels[index], dtype=torch.int64)
