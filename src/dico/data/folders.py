"""Image folders: `root/<class>/*.jpg` (class-conditional, as torchvision's ImageFolder) or a flat folder of images
(unconditional), cropped as ADM and the official release crop, flipped by a keyed coin.

Pixel values follow the official transform (ToTensor then Normalize(0.5, 0.5)): float32 CHW RGB in [-1, 1].
"""

import errno
import hashlib
import os
from pathlib import Path
from stat import S_ISDIR

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..images import EIGHT_BIT_MODES, IMAGE_EXTENSIONS, SIXTEEN_BIT_MODES, read_rgb
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


def square_center_crop(image: Image.Image, size: int) -> Image.Image:
    """U-ViT's COCO crop (the data of REPA's text-to-image runs): the central min(H, W) square, then a LANCZOS resize
    to size x size."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)


# How images are brought to one square size: ADM's ImageNet crop (the class-conditional default) or U-ViT's COCO crop
# (the default for captioned data, as REPA's COCO latents were made).
CROPS = {"adm": center_crop_arr, "uvit": square_center_crop}


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


# What a scan leaves out, and why (errno of the failed stat of a link's target).
LINK_PROBLEMS = {errno.ELOOP: "a symbolic link loop", errno.ENOENT: "a broken link"}
NAMED = 20  # messages name this many files, then say how many more


def name_some(items, cap: int = NAMED) -> str:
    """'a, b, c' or, past `cap` items, 'a, b, ... and N more'."""
    items = list(items)
    named = ", ".join(items[:cap])
    return named if len(items) <= cap else f"{named} and {len(items) - cap} more"


def _status(path: str):
    """(device, inode, is a folder) of what `path` points to, or the reason it cannot be followed."""
    try:
        stat = os.stat(path)
    except OSError as err:
        return LINK_PROBLEMS.get(err.errno, err.strerror or type(err).__name__)
    return stat.st_dev, stat.st_ino, S_ISDIR(stat.st_mode)


def _images_under(directory: str, seen: set, skipped: list) -> list:
    """Image files below `directory`, recursively, in torchvision ImageFolder's order (folders sorted by path,
    files by name). Symbolic links are followed, but every folder is entered once and every file taken once (by
    device and inode): a link loop or a second link to the same images neither repeats nor relabels them. `seen`
    carries the files taken across classes; what is left out is added to `skipped` as (path, reason)."""
    folders, entered = [], set()

    def visit(folder: str, identity, ancestors: tuple):
        entered.add(identity)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            skipped.append((folder, f"cannot be listed: {err.strerror}"))
            return
        files = []
        for entry in entries:
            status = _status(entry.path)
            if isinstance(status, str):
                skipped.append((entry.path, status))
            elif status[2] and status[:2] in ancestors:
                skipped.append((entry.path, "a symbolic link loop"))
            elif status[2] and status[:2] in entered:
                skipped.append((entry.path, "a second link to a folder already read"))
            elif status[2]:
                visit(entry.path, status[:2], ancestors + (status[:2],))
            else:
                files.append((entry.name, status[:2]))
        folders.append((folder, files))

    status = _status(directory)
    visit(directory, status[:2], (status[:2],))
    found = []
    for folder, files in sorted(folders):
        for name, identity in files:
            path = os.path.join(folder, name)
            if not is_image_file(name):
                skipped.append((path, "not an image file"))
            elif identity in seen:
                skipped.append((path, "a second link to an image already taken"))
            else:
                seen.add(identity)
                found.append(path)
    return found


def scan_image_folder(root) -> tuple:
    """(paths, labels, class_names) of an image folder.

    Sub-folders are classes, sorted by name and indexed as torchvision's ImageFolder indexes them, so labels match
    ImageNet's usual class indices; a folder holding images directly is unconditional (every label 0,
    class_names None).
    """
    return scan_image_folder_and_skips(root)[:3]


def scan_image_folder_and_skips(root) -> tuple:
    """scan_image_folder's (paths, labels, class_names), and what it left out: (path relative to root, reason) of
    every link loop, broken link, second link and non-image file."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    classes = [e.name for e in entries if e.is_dir()]
    loose = [e.name for e in entries if e.is_file() and is_image_file(e.name)]
    if classes and loose:
        raise ValueError(f"{root} mixes class sub-folders ({classes[:3]}...) with loose images ({loose[:3]}...); "
                         "use either root/<class>/<image> (class-conditional) or root/<image> (unconditional)")
    skipped = []
    for entry in entries:
        status = _status(entry.path)
        if isinstance(status, str):
            skipped.append((entry.path, status))
        elif not status[2] and not is_image_file(entry.name):
            skipped.append((entry.path, "not an image file"))
    if loose:
        paths = [str(root / name) for name in loose]
        return paths, np.zeros(len(paths), dtype=np.int64), None, _relative(skipped, root)
    paths, labels, seen = [], [], set()
    for label, name in enumerate(classes):
        found = _images_under(str(root / name), seen, skipped)
        if not found:
            raise FileNotFoundError(f"class folder {root / name} holds no images "
                                    f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
        paths.extend(found)
        labels.extend([label] * len(found))
    if not paths:
        raise FileNotFoundError(f"no images in {root}: expected root/<class>/<image> or root/<image> "
                                f"with extensions {', '.join(IMAGE_EXTENSIONS)}")
    return paths, np.asarray(labels, dtype=np.int64), classes, _relative(skipped, root)


def _relative(skipped: list, root: Path) -> list:
    return [(os.path.relpath(path, root), reason) for path, reason in skipped]


def unreadable_images(paths, root) -> list:
    """(path relative to root, reason) of every file in `paths` whose header PIL cannot read, or whose pixel mode
    has no 8-bit RGB reading: cheap (no pixels are decoded), so a folder's bad files are all found before any work."""
    bad = []
    for path in paths:
        try:
            with Image.open(path) as image:
                mode, size = image.mode, image.size
        except UnidentifiedImageError:
            bad.append((path, "not an image PIL can read"))
            continue
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # PIL's ways of "bad file"
            bad.append((path, str(err) or type(err).__name__))
            continue
        if mode not in EIGHT_BIT_MODES and mode not in SIXTEEN_BIT_MODES:
            bad.append((path, f"pixel mode {mode!r} has no 8-bit RGB reading"))
        elif min(size) < 1:
            bad.append((path, "no pixels"))
    return _relative(bad, Path(root))


def folder_fingerprint(root, paths, labels) -> str:
    """A hash of the (relative path, label) list: a resumed extraction must see the same images in the same order."""
    digest = hashlib.sha256()
    for path, label in zip(paths, labels):
        digest.update(f"{os.path.relpath(path, root)}\t{int(label)}\n".encode())
    return digest.hexdigest()


def load_image(path, size: int, crop: str = "adm") -> torch.Tensor:
    """One image file as float32 (3, size, size) in [-1, 1], center-cropped as `crop` (a key of CROPS) says; a
    clear error if it cannot be read."""
    pixels = np.asarray(CROPS[crop](read_rgb(path), size))
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
        self.paths, self.labels, self.class_names, self.skipped = scan_image_folder_and_skips(self.root)
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
