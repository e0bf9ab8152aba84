"""Image sets to evaluate: ADM-format .npz files and folders of png/jpg files.

An ADM .npz holds `arr_0`, uint8 images (N, H, W, C) with C = 1 or 3, optionally `arr_1` (class labels) and, for
reference batches, precomputed Inception statistics (`mu`, `sigma`, `mu_s`, `sigma_s`). Images are streamed batch by
batch straight out of the zip member, so 50k samples at 256x256 never sit in memory at once.

Text-to-image samples carry their prompts (CLIP score needs them): an .npz stores them as `prompts`, one string per
image (dico.images.PROMPTS_KEY); a folder holds a `metadata.jsonl` with one row per image, `{"file_name": ...,
"text": ...}` (Hugging Face's image-folder convention, as the training data's). A reference folder of photographs of
any size (COCO's val2014) is read centre-cropped to one size (`crop_size`), the way U-ViT prepares COCO (whose
statistics REPA and DiCo report FID against) or the way ADM prepares ImageNet (`crop`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..data.folders import CROPS  # how a folder of photographs is brought to one size (U-ViT's or ADM's crop)
from ..images import IMAGE_EXTENSIONS, PROMPTS_KEY, read_rgb

STATISTICS_KEYS = ("mu", "sigma", "mu_s", "sigma_s")
_HASH_CHUNK = 16 << 20


@dataclass(frozen=True)
class ImageSource:
    """A validated set of images on disk (an .npz file or a folder), read lazily."""

    path: Path
    kind: str  # "npz" or "folder"
    count: int  # number of images; 0 for a reference .npz that holds only statistics
    height: int = 0
    width: int = 0
    channels: int = 0
    files: tuple[Path, ...] = ()  # the images of a folder, sorted by name
    crop_size: int | None = None  # a folder read centre-cropped to crop_size x crop_size ...
    crop: str = "uvit"  # ... in this way (a key of CROPS)

    @property
    def has_images(self) -> bool:
        return self.count > 0

    def describe(self) -> str:
        if not self.has_images:
            return f"{self.path} (statistics only)"
        return f"{self.path} ({self.count} images, {self.height}x{self.width}x{self.channels})"


def open_image_source(path, *, require_images: bool = True, crop_size: int | None = None,
                      crop: str = "uvit") -> ImageSource:
    """Validate `path` (an ADM .npz or an image folder) and describe what it holds; reads no pixels.

    With `require_images=False` an .npz holding only precomputed statistics (no `arr_0`) is accepted. `crop_size`:
    read a folder's images resized and centre-cropped to that many pixels, so that they may have any sizes (COCO's
    val2014 for reference statistics at 256 px); an .npz is refused with it, its images being used as stored.
    `crop`: "uvit" (central square, LANCZOS: U-ViT's COCO preparation, which REPA's COCO statistics come from) or
    "adm" (ADM's center_crop_arr).
    """
    path = Path(path).expanduser()
    if crop_size is not None and (isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 1):
        raise ValueError(f"the crop size must be a positive number of pixels, got {crop_size!r}")
    if crop not in CROPS:
        raise ValueError(f"unknown crop {crop!r}; choose one of {', '.join(CROPS)}")
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist (expected an ADM-format .npz file or a folder of png/jpg images)"
        )
    if path.is_dir():
        source = _open_folder(path)
        if crop_size is not None:
            source = dataclasses.replace(source, height=crop_size, width=crop_size, crop_size=crop_size, crop=crop)
        return source
    if crop_size is not None:
        raise ValueError(f"{path} is an .npz, whose images are used as stored; centre-cropping to {crop_size} px "
                         f"applies to a folder of images (e.g. COCO's val2014)")
    return _open_npz(path, require_images)


def _open_npz(path: Path, require_images: bool) -> ImageSource:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "arr_0.npy" not in names:
                has_stats = {"mu.npy", "sigma.npy"} <= names or {"mu_s.npy", "sigma_s.npy"} <= names
                if require_images or not has_stats:
                    found = ", ".join(sorted(n.removesuffix(".npy") for n in names)) or "nothing"
                    raise ValueError(
                        f"{path} holds no images: an ADM .npz stores them under 'arr_0' as uint8 (N, H, W, C); "
                        f"found {found}"
                    )
                return ImageSource(path=path, kind="npz", count=0)
            with archive.open("arr_0.npy") as member:
                shape, fortran_order, dtype = _read_npy_header(member, path)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path} is not a readable .npz file (corrupt, truncated or another format): {err}") from err
    _check_image_array(path, shape, dtype)
    n, h, w, c = shape
    return ImageSource(path=path, kind="npz", count=n, height=h, width=w, channels=c)


def _read_npy_header(member, path: Path):
    try:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(member)
        return np.lib.format.read_array_header_2_0(member)
    except ValueError as err:
        raise ValueError(f"{path}: 'arr_0' is not a valid .npy array: {err}") from err


def _check_image_array(path: Path, shape: tuple, dtype: np.dtype) -> None:
    if len(shape) != 4 or shape[3] not in (1, 3):
        raise ValueError(
            f"{path}: 'arr_0' has shape {shape}; expected uint8 images (N, H, W, C) with C = 1 (gray) or 3 (RGB), "
            f"channels last as in ADM's sample files"
        )
    if dtype != np.uint8:
        raise ValueError(
            f"{path}: 'arr_0' has dtype {dtype}; expected uint8 pixels in [0, 255] (convert with "
            f"np.clip(np.round(x), 0, 255).astype(np.uint8))"
        )
    if shape[0] == 0 or shape[1] == 0 or shape[2] == 0:
        raise ValueError(f"{path}: 'arr_0' has shape {shape}, which holds no pixels")


def _open_folder(path: Path) -> ImageSource:
    from PIL import Image

    files = tuple(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"{path} is a folder without images (looked for {', '.join(IMAGE_EXTENSIONS)} files)")
    try:
        with Image.open(files[0]) as first:
            width, height = first.size
    except OSError as err:
        raise ValueError(f"{files[0]} is not a readable image: {err}") from err
    return ImageSource(path=path, kind="folder", count=len(files), height=height, width=width, channels=3, files=files)


def iter_image_batches(source: ImageSource, batch_size: int) -> Iterator[np.ndarray]:
    """Yield uint8 (B, H, W, C) batches in file order, C as stored (1 or 3; folders give 3)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if not source.has_images:
        raise ValueError(f"{source.path} holds no images to read")
    if source.kind == "npz":
        yield from _iter_npz_batches(source, batch_size)
    else:
        yield from _iter_folder_batches(source, batch_size)


def _iter_npz_batches(source: ImageSource, batch_size: int) -> Iterator[np.ndarray]:
    image_shape = (source.height, source.width, source.channels)
    image_bytes = int(np.prod(image_shape))
    with zipfile.ZipFile(source.path) as archive, archive.open("arr_0.npy") as member:
        _, fortran_order, _ = _read_npy_header(member, source.path)
        if fortran_order:
            # Column-major data cannot be cut into image rows as it streams; such files are rare and small.
            array = np.load(source.path)["arr_0"]
            for start in range(0, source.count, batch_size):
                yield np.ascontiguousarray(array[start : start + batch_size])
            return
        for start in range(0, source.count, batch_size):
            n = min(batch_size, source.count - start)
            data = member.read(n * image_bytes)
            if len(data) != n * image_bytes:
                raise ValueError(
                    f"{source.path}: 'arr_0' ends early (image {start + len(data) // image_bytes} of {source.count}); "
                    f"the file is truncated"
                )
            yield np.frombuffer(bytearray(data), dtype=np.uint8).reshape(n, *image_shape)  # writable, as torch wants


def _iter_folder_batches(source: ImageSource, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, source.count, batch_size):
        batch = []
        for file in source.files[start : start + batch_size]:
            image = read_rgb(file)
            if source.crop_size is not None:
                image = CROPS[source.crop](image, source.crop_size)
            pixels = np.asarray(image)
            if pixels.shape[:2] != (source.height, source.width):
                raise ValueError(
                    f"{file} is {pixels.shape[1]}x{pixels.shape[0]} but {source.files[0].name} is "
                    f"{source.width}x{source.height}; all images of a folder must share one size"
                )
            batch.append(pixels)
        yield np.stack(batch)


def read_labels(source: ImageSource) -> np.ndarray | None:
    """Class labels stored as `arr_1` next to the images (ADM convention), or None."""
    if source.kind != "npz":
        return None
    with np.load(source.path) as data:
        if "arr_1" not in data.files:
            return None
        labels = data["arr_1"]
    if labels.ndim != 1 or labels.shape[0] != source.count or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{source.path}: 'arr_1' should hold one integer class label per image ({source.count},), "
            f"got {labels.dtype} {labels.shape}"
        )
    return labels.astype(np.int64)


def read_reference_statistics(source: ImageSource) -> dict[str, np.ndarray]:
    """Precomputed statistics stored in a reference .npz (`mu`, `sigma`, `mu_s`, `sigma_s`), as float64."""
    if source.kind != "npz":
        return {}
    with np.load(source.path) as data:
        return {key: np.asarray(data[key], dtype=np.float64) for key in STATISTICS_KEYS if key in data.files}


def content_hash(source: ImageSource) -> str:
    """SHA-256 of the pixels as stored: the `arr_0` array of an .npz (so adding labels or statistics to the file, or
    recompressing it, keeps its features cache valid), or each image file's name and bytes of a folder."""
    digest = hashlib.sha256()
    if source.kind == "npz":
        with zipfile.ZipFile(source.path) as archive, archive.open("arr_0.npy") as member:
            while chunk := member.read(_HASH_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()
    if source.crop_size is not None:  # the same files, cropped, are other pixels
        digest.update(f"crop {source.crop} {source.crop_size}\0".encode())
    for file in source.files:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


METADATA_FILE = "metadata.jsonl"  # a folder's prompts: Hugging Face's image-folder convention


def carries_prompts(source: ImageSource) -> bool:
    """Whether the images come with prompts (text-to-image samples), without reading or checking them."""
    if source.kind == "folder":
        return (source.path / METADATA_FILE).is_file()
    with zipfile.ZipFile(source.path) as archive:
        return f"{PROMPTS_KEY}.npy" in archive.namelist()


def read_prompts(source: ImageSource) -> list[str] | None:
    """The prompt of each image, in image order: an .npz's `prompts` array or a folder's `metadata.jsonl`; None when
    the source carries none. A set of prompts that does not give exactly one string to every image is a ValueError
    naming the file."""
    if not source.has_images:
        return None
    if source.kind == "npz":
        return _npz_prompts(source)
    return _folder_prompts(source)


def _npz_prompts(source: ImageSource) -> list[str] | None:
    try:
        with np.load(source.path, allow_pickle=False) as data:
            if PROMPTS_KEY not in data.files:
                return None
            prompts = data[PROMPTS_KEY]
    except ValueError as err:  # an object array (pickled) is refused unread
        raise ValueError(f"{source.path}: '{PROMPTS_KEY}' must be an array of strings, not pickled objects") from err
    if prompts.ndim != 1 or prompts.dtype.kind != "U":
        raise ValueError(f"{source.path}: '{PROMPTS_KEY}' should hold one string per image ({source.count},), got "
                         f"{prompts.dtype} {prompts.shape}")
    if len(prompts) != source.count:
        raise ValueError(f"{source.path} holds {source.count} images but {len(prompts)} prompts; each image needs "
                         f"the one prompt it was sampled from")
    return [str(p) for p in prompts]


def _folder_prompts(source: ImageSource) -> list[str] | None:
    metadata = source.path / METADATA_FILE
    if not metadata.is_file():
        return None
    texts: dict[str, str] = {}
    try:
        lines = metadata.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read {metadata}: {err}") from err
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{metadata}, line {number}: not JSON ({err.msg})") from err
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str) or "text" not in row:
            raise ValueError(f'{metadata}, line {number}: expected {{"file_name": ..., "text": ...}}')
        if not isinstance(row["text"], str):
            raise ValueError(f"{metadata}, line {number}: 'text' must be the one prompt the image was sampled from "
                             f"(a string), got {type(row['text']).__name__}")
        if row["file_name"] in texts:
            raise ValueError(f"{metadata}, line {number}: {row['file_name']} is listed twice")
        texts[row["file_name"]] = row["text"]
    names = [file.name for file in source.files]
    missing = [name for name in names if name not in texts]
    if missing:
        raise ValueError(f"{metadata} gives no prompt for {len(missing)} of {len(names)} images (first: "
                         f"{missing[0]})")
    unknown = sorted(set(texts) - set(names))
    if unknown:
        raise ValueError(f"{metadata} lists {len(unknown)} files that are not images of {source.path} (first: "
                         f"{unknown[0]})")
    return [texts[name] for name in names]
