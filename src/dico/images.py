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


def save_grid(images: np.ndarray, path, nrow: int, pad: int = 2, scale: int = 1, labels=None) -> Path:
    """uint8 (N, H, W, 3) images as one PNG, `nrow` images per row, white padding; `scale` enlarges each image by
    pixel repetition (so 8x8 digits stay visible). `labels` (one string per image, e.g. its prompt) are written in
    small black type: once beside each row whose images share one, else under each image (see labelled_grid)."""
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    if labels is not None:
        canvas = labelled_grid(images, nrow, pad, list(labels))
        path = Path(path)
        return atomic_write(path, lambda partial: Image.fromarray(canvas).save(partial), suffix=path.suffix)
    n, h, w, c = images.shape
    rows = (n + nrow - 1) // nrow
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i, image in enumerate(images):
        r, k = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        canvas[top:top + h, left:left + w] = image
    path = Path(path)
    return atomic_write(path, lambda partial: Image.fromarray(canvas).save(partial), suffix=path.suffix)


LABEL_WIDTH = 160  # pixels a label may take (wrapped beyond): about 30 characters of PIL's default font per line
LABEL_LINES = 3  # lines a label may take; longer ones end in "..."


def wrap_label(text: str, font, width: int, max_lines: int = LABEL_LINES) -> list:
    """`text` broken into lines of at most `width` pixels in `font`, at spaces where it can be (a word longer than a
    line is cut), at most `max_lines` lines, the last ending in "..." when the text goes on."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while font.getlength(word) > width:  # a word wider than the line is cut where it reaches the edge
            cut = max(1, max(k for k in range(1, len(word) + 1) if font.getlength(word[:k]) <= width or k == 1))
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        lines = lines[: max_lines - 1] + [last + "..."]
    return lines or [""]


def labelled_grid(images: np.ndarray, nrow: int, pad: int, labels: list) -> np.ndarray:
    """The grid of save_grid with a label per image: when every row's images share one label (a row per prompt),
    it is written once in a column left of the row; otherwise under each image, the cells widened to fit up to
    LABEL_WIDTH pixels of text. Text is PIL's default font, black on the white padding."""
    from PIL import ImageDraw, ImageFont

    n, h, w, c = images.shape
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} images")
    font = ImageFont.load_default()
    line_height = font.getbbox("Ag")[3] + 2
    rows = (n + nrow - 1) // nrow
    row_labels = [labels[r * nrow:(r + 1) * nrow] for r in range(rows)]
    per_row = nrow > 1 and all(len(set(group)) == 1 for group in row_labels)
    text_width = min(LABEL_WIDTH, max(int(font.getlength(label)) for label in labels) + 1)
    wrapped = [wrap_label(label, font, max(text_width, 1)) for label in labels]
    if per_row:
        left, cell_w, cell_h = text_width + 2 * pad, w, h
    else:
        left, cell_w = 0, max(w, text_width)
        cell_h = h + max(len(lines) for lines in wrapped) * line_height + pad
    canvas = Image.new("RGB", (left + nrow * (cell_w + pad) + pad, rows * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, image in enumerate(images):
        r, k = divmod(i, nrow)
        top, x0 = pad + r * (cell_h + pad), left + pad + k * (cell_w + pad)
        canvas.paste(Image.fromarray(np.ascontiguousarray(image)).convert("RGB"), (x0 + (cell_w - w) // 2, top))
        if not per_row:
            for j, line in enumerate(wrapped[i]):
                draw.text((x0, top + h + pad + j * line_height), line, fill="black", font=font)
    if per_row:
        for r in range(rows):
            lines = wrapped[r * nrow]
            top = pad + r * (cell_h + pad) + max(0, (h - len(lines) * line_height) // 2)
            for j, line in enumerate(lines):
                draw.text((pad, top + j * line_height), line, fill="black", font=font)
    return np.asarray(canvas)


def write_npz(path, chunks, count: int, image_shape, labels: np.ndarray, extra: dict | None = None) -> Path:
    """Write ADM's sample format (`arr_0` uint8 NHWC, `arr_1` int64 labels unless `labels` is None) chunk by chunk.

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
            if labels is not None:  # (samples of a text model have prompts, not class labels)
                with archive.open("arr_1.npy", "w") as f:
                    np.lib.format.write_array(f, np.asarray(labels, dtype=np.int64))
            for name, array in (extra or {}).items():  # more named arrays, e.g. how the samples were made
                with archive.open(f"{name}.npy", "w") as f:
                    np.lib.format.write_array(f, np.asarray(array))
        if written != count:
            raise ValueError(f"expected {count} images, got {written}")

    return atomic_write(path, write)
