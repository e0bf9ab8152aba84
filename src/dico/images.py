"""The one image writer: tensors in [-1, 1] to uint8, PNG grids and ADM-format .npz files (written streaming)."""

import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .cache import atomic_write

# What counts as an image file when reading folders (torchvision's list; PIL reads them all).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Where a text-to-image .npz keeps each image's prompt (strings, beside arr_0); `dico evaluate` reads it for CLIP score.
PROMPTS_KEY = "prompts"


# PIL modes that `Image.convert("RGB")` maps correctly: 8-bit grey, bilevel, palette (with or without
# transparency), colour with or without alpha (alpha is dropped, as torchvision's and ADM's loaders drop it).
EIGHT_BIT_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
# Integer grey modes holding 16 significant bits (PNG and TIFF 16-bit grey): PIL's convert would clip them at 255.
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def read_rgb(path) -> Image.Image:
    """An image file as 8-bit RGB whatever its mode: 16-bit grey is scaled to 8 bits (value / 257, rounded) instead
    of saturating; modes with no faithful 8-bit RGB reading (floating point, 32-bit integer colour) are refused by
    name. Errors are ValueErrors naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in SIXTEEN_BIT_MODES:
                values = np.asarray(image, dtype=np.float64)
                if values.max(initial=0) > 65535 or values.min(initial=0) < 0:
                    raise ValueError(f"{mode} values outside 0..65535")
                return Image.fromarray(np.rint(values / 257.0).astype(np.uint8), "L").convert("RGB")
            if mode not in EIGHT_BIT_MODES:
                raise ValueError(f"pixel mode {mode!r} has no faithful 8-bit RGB reading; convert the file first")
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # PIL's ways of saying "bad file"
        raise ValueError(f"cannot read image {path}: {err}") from err


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, 3), as the official sampler quantises (127.5 x + 128, clamped).

    Grey images (C=1) are replicated to RGB so that every consumer (PNG, Inception) sees three channels.
    """
    x = torch.clamp(127.5 * x.float() + 128.0, 0, 255).to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_grid(images: np.ndarray, path, nrow: int, pad: int = 2, scale: int = 1) -> Path:
    """uint8 (N, H, W, 3) images as one PNG, `nrow` images per row, white padding; `scale` enlarges each image by
    pixel repetition (so 8x8 digits stay visible)."""
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, c = images.shape
    rows = (n + nrow - 1) // nrow
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i, image in enumerate(images):
        r, k = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        canvas[top:top + h, left:left + w] = image
    path = Path(path)
    return atomic_write(path, lambda partial: Image.fromarray(canvas).save(partial), suffix=path.suffix)


def write_npz(path, chunks, count: int, image_shape, labels: np.ndarray, extra: dict | None = None) -> Path:
    """Write ADM's sample format (`arr_0` uint8 NHWC, `arr_1` int64 labels) chunk by chunk.

    `chunks` yields uint8 arrays of shape (k, *image_shape) adding up to `count` images; memory stays at one chunk
    (50k images at 256 px are 9.8 GB). Written to a temporary name and renamed, so a crash leaves no half file.
    """
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (count, *image_shape)}

    def write(partial):
        written = 0
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            with archive.open("arr_0.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_2_0(f, header)
                for chunk in chunks:
                    chunk = np.ascontiguousarray(chunk, dtype=np.uint8)
                    if chunk.shape[1:] != tuple(image_shape):
                        raise ValueError(f"chunk of shape {chunk.shape} does not match images of shape {image_shape}")
                    f.write(chunk.tobytes())
                    written += len(chunk)
            with archive.open("arr_1.npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(labels, dtype=np.int64))
            for name, array in (extra or {}).items():  # more named arrays, e.g. how the samples were made
                with archive.open(f"{name}.npy", "w") as f:
                    np.lib.format.write_array(f, np.asarray(array))
        if written != count:
            raise ValueError(f"expected {count} images, got {written}")

    return atomic_write(path, write)
