"""Pre-extracted VAE latents: the on-disk layout `dico extract-latents` writes, and the data set that reads it.

A latents directory holds
  moments.npy  (N, 2, 2, C, h, w) float16/float32: [image, flip (0 = as is, 1 = mirrored), (mean, std), C, h, w]
  labels.npy   (N,) int64
  files.txt    the source image of each row, relative to the image folder
  meta.json    written last: its presence marks a finished extraction; besides the settings it holds the
               autoencoder ("vae", "autoencoder", "sd_vae", "scale") and per-channel latent statistics
               ("latent_mean", "latent_std": see `dico.data.vae.latent_statistics`)
  repa_features.npy (N, 2, T, D) float16, only with a REPA encoder: [image, flip, token, feature], the patch tokens
               of the encoder named by meta["repa_encoder"] for the image and its mirror image
and, only for captioned images extracted with a text encoder (meta["text_encoder"], its TextEncoder.to_dict()):
  text_context.npy    (M, L, D) float16: the token embeddings of every caption, image by image
  caption_offsets.npy (N + 1,) int64: image i's captions are rows caption_offsets[i]:caption_offsets[i + 1]
  captions.jsonl      the caption of each row, one JSON string a line
  null_context.npy    (L, D) float16: the empty caption's embedding, the null of caption dropout and guidance
and, while extraction runs, done.npy (N,) bool and extract.json (the settings a resumed run must share); while
tokens are added to a finished extraction, repa_done.npy and repa_extract.json likewise.

One preallocated memory-mapped array instead of the official two files per image: 1.28M images open as one file,
items are slices of the page cache, and no directory listing of millions of names is needed at start-up.
"""

import json
import os
from pathlib import Path

import numpy as np
import torch

from .captions import draw_caption
from .folders import augment_generator
from .vae import latent_normalization, latent_statistics

LATENT_FORMAT = "dico-latents/1"
MOMENTS, LABELS, FILES, META = "moments.npy", "labels.npy", "files.txt", "meta.json"
REPA_FEATURES = "repa_features.npy"
REPA_DONE, REPA_PLAN = "repa_done.npy", "repa_extract.json"  # while tokens are added to a finished extraction
REPA_DTYPE = "float16"
TEXT_CONTEXT, CAPTION_OFFSETS, CAPTIONS, NULL_CONTEXT = ("text_context.npy", "caption_offsets.npy", "captions.jsonl",
                                                       "null_context.npy")
TEXT_DTYPE = "float16"
STATISTICS_CHUNK = 1024  # images per read when measuring channel statistics (about 130 MB at 256 px)
DONE, PLAN = "done.npy", "extract.json"
STORAGE_DTYPES = ("float16", "float32")


def is_latent_dir(path) -> bool:
    path = Path(path)
    return (path / META).is_file() or (path / MOMENTS).is_file()


def read_meta(directory) -> dict:
    """meta.json of a finished extraction; a clear error for a missing or unfinished one."""
    directory = Path(directory)
    if not (directory / META).is_file():
        if (directory / MOMENTS).is_file():
            raise ValueError(f"{directory} holds an unfinished latent extraction (no {META}); run the same "
                             "`dico extract-latents` command again to resume it")
        raise FileNotFoundError(f"{directory} is not a latents directory (no {META}); write one with "
                                "`dico extract-latents --data IMAGE_FOLDER --out DIR`")
    meta = json.loads((directory / META).read_text())
    if meta.get("format") != LATENT_FORMAT:
        raise ValueError(f"{directory / META} has format {meta.get('format')!r}, expected {LATENT_FORMAT!r}")
    return meta


def create_latent_files(out, labels: np.ndarray, latent_shape, dtype: str, files, repa_shape=None) -> None:
    """Preallocate the arrays of an extraction of len(labels) images (sparse files: no time spent on zeros);
    with `repa_shape` (T, D) also the encoder's patch tokens."""
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"latent storage dtype must be one of {STORAGE_DTYPES}, got {dtype!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    count = len(labels)
    moments = np.lib.format.open_memmap(out / MOMENTS, mode="w+", dtype=dtype, shape=(count, 2, 2, *latent_shape))
    del moments
    if repa_shape is not None:
        create_repa_files(out, count, repa_shape, done_name=None)
    create_done(out / DONE, count)
    np.save(out / LABELS, np.asarray(labels, dtype=np.int64))
    (out / FILES).write_text("".join(f"{f}\n" for f in files))


def create_done(path, count: int) -> None:
    done = np.lib.format.open_memmap(path, mode="w+", dtype=np.bool_, shape=(count,))
    done.flush()
    del done


def create_repa_files(out, count: int, repa_shape, done_name: str | None = REPA_DONE) -> None:
    """Preallocate the encoder tokens of `count` images (and, to add them to a finished extraction, their own
    done mask)."""
    features = np.lib.format.open_memmap(Path(out) / REPA_FEATURES, mode="w+", dtype=REPA_DTYPE,
                                         shape=(count, 2, *repa_shape))
    del features
    if done_name is not None:
        create_done(Path(out) / done_name, count)


def open_moments(directory, mode: str = "r") -> np.memmap:
    return np.load(Path(directory) / MOMENTS, mmap_mode=mode)


def open_repa_features(directory, mode: str = "r") -> np.memmap:
    return np.load(Path(directory) / REPA_FEATURES, mmap_mode=mode)


def channel_statistics(directory) -> tuple:
    """Per-channel (mean, std) of the latents stored as moments under `directory` (both flips, every position),
    summed in float64 over chunks of images (see `dico.data.vae.latent_statistics` for the formula)."""
    moments = open_moments(directory)
    channels = moments.shape[3]
    sum_z, sum_z2 = np.zeros(channels), np.zeros(channels)
    for start in range(0, len(moments), STATISTICS_CHUNK):
        chunk = np.asarray(moments[start:start + STATISTICS_CHUNK], dtype=np.float64)
        mean, std = chunk[:, :, 0], chunk[:, :, 1]
        sum_z += mean.sum(axis=(0, 1, 3, 4))
        sum_z2 += (mean**2 + std**2).sum(axis=(0, 1, 3, 4))
    count = moments.shape[0] * 2 * moments.shape[4] * moments.shape[5]
    return latent_statistics(sum_z, sum_z2, count)


def create_text_files(out, captions: list, null_context) -> None:
    """Preallocate the token embeddings of every caption of `captions` (a list per image) and write what is known
    before encoding: the offsets, the caption texts and the empty caption's embedding `null_context` (L, D)."""
    out = Path(out)
    counts = [len(c) for c in captions]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    context = np.lib.format.open_memmap(out / TEXT_CONTEXT, mode="w+", dtype=TEXT_DTYPE,
                                        shape=(int(offsets[-1]), *null_context.shape))
    del context
    np.save(out / CAPTION_OFFSETS, offsets)
    np.save(out / NULL_CONTEXT, np.asarray(null_context, dtype=TEXT_DTYPE))
    (out / CAPTIONS).write_text("".join(json.dumps(text) + "\n" for texts in captions for text in texts),
                                encoding="utf-8")


def open_text_context(directory, mode: str = "r") -> np.memmap:
    return np.load(Path(directory) / TEXT_CONTEXT, mmap_mode=mode)


def read_captions(directory) -> list:
    """The captions of a text latents folder, a list per image (as caption_offsets groups the rows)."""
    directory = Path(directory)
    rows = [json.loads(line) for line in (directory / CAPTIONS).read_text(encoding="utf-8").splitlines()]
    offsets = np.load(directory / CAPTION_OFFSETS)
    return [rows[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def open_done(directory, mode: str = "r+", name: str = DONE) -> np.memmap:
    return np.load(Path(directory) / name, mmap_mode=mode)


def write_json_atomic(path, payload: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


class LatentDataset(torch.utils.data.Dataset):
    """(latent float32 (C, h, w), label int64) pairs drawn from stored posterior moments; with `repa_features`
    (latent, label, encoder tokens float32 (T, D)), the tokens of the same (as is or mirrored) image.

    Every visit draws a fresh latent: the flip (as is / mirrored) and the Gaussian noise come from a generator keyed
    by (seed, epoch, index), so a draw is reproducible and independent of workers and processes. Returns the latent
    normalised as the model trains on it: (mean + std * noise) * scale (`latent_norm` "scale", the default for the
    SD-VAE) or ((mean + std * noise) - mean_c) / std_c ("channel", the default for other autoencoders), see
    `dico.data.vae.latent_normalization`. Call `set_epoch(epoch)` before indexing.
    """

    def __init__(self, directory, seed: int = 0, flip: bool = True, latent_norm: str | None = None,
                 repa_features: bool = False):
        self.directory = Path(directory)
        self.meta = read_meta(self.directory)
        self.seed, self.flip, self.epoch = int(seed), flip, 0
        self.normalization = latent_normalization(self.meta, latent_norm)
        self.scale = self.normalization["latent_scale"]
        self.channel_stats = None
        if self.normalization["latent_mean"] is not None:
            self.channel_stats = tuple(torch.tensor(self.normalization[k], dtype=torch.float32).view(-1, 1, 1)
                                       for k in ("latent_mean", "latent_std"))
        self.latent_shape = tuple(self.meta["latent_shape"])
        self.labels = np.load(self.directory / LABELS)
        self.repa_features = repa_features
        if repa_features and not self.meta.get("repa_encoder"):
            raise ValueError(f"{self.directory} holds no REPA encoder features; extract them with "
                             "`dico extract-latents ... --repa-encoder NAME`")
        self._moments = self._features = None  # opened lazily, in each DataLoader worker
        if len(self.labels) != self.meta["count"]:
            raise ValueError(f"{self.directory}: {LABELS} holds {len(self.labels)} labels, meta.json says "
                             f"{self.meta['count']} images")

    @property
    def moments(self) -> np.memmap:
        if self._moments is None:
            self._moments = open_moments(self.directory)
        return self._moments

    @property
    def features(self) -> np.memmap:
        if self._features is None:
            self._features = open_repa_features(self.directory)
        return self._features

    @property
    def repa_encoder(self) -> str | None:
        return self.meta.get("repa_encoder")

    def __getstate__(self):
        # A pickled memmap would be copied into memory (spawned workers); workers reopen the file instead.
        return {**self.__dict__, "_moments": None, "_features": None}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        generator = augment_generator(self.seed, self.epoch, index)
        flip = int(torch.randint(2, (1,), generator=generator)) if self.flip else 0
        noise = torch.randn(self.latent_shape, generator=generator)
        mean, std = torch.from_numpy(np.array(self.moments[index, flip], dtype=np.float32))
        if self.channel_stats is None:
            latent = (mean + std * noise) * self.scale
        else:
            latent = (mean + std * noise - self.channel_stats[0]) / self.channel_stats[1]
        label = torch.tensor(self.labels[index], dtype=torch.int64)
        if not self.repa_features:
            return latent, label
        return latent, label, torch.from_numpy(np.array(self.features[index, flip], dtype=np.float32))


class TextLatentDataset(LatentDataset):
    """(latent float32 (C, h, w), context float32 (L, D)) from latents extracted with a text encoder: the latent as
    LatentDataset draws it, and one of the image's captions drawn per visit by a generator keyed by (seed, epoch,
    index) (dico.data.captions.draw_caption), as its stored token embeddings; with `repa_features` the encoder tokens
    third. `null_context`: the empty caption's embedding (L, D).

    No mirroring by default: a caption may say "on the left" (U-ViT and REPA train COCO unflipped); `flip=True`
    draws from the stored mirror images too.
    """

    def __init__(self, directory, seed: int = 0, flip: bool = False, latent_norm: str | None = None,
                 repa_features: bool = False):
        super().__init__(directory, seed=seed, flip=flip, latent_norm=latent_norm, repa_features=repa_features)
        if not self.meta.get("text_encoder"):
            raise ValueError(f"{self.directory} holds no caption embeddings; extract them with `dico extract-latents "
                             "--data CAPTIONED_FOLDER --text-encoder NAME ...`")
        self.text_encoder = self.meta["text_encoder"]
        self.offsets = np.load(self.directory / CAPTION_OFFSETS)
        self.null_context = torch.from_numpy(np.load(self.directory / NULL_CONTEXT).astype(np.float32))
        self._context = None
        if len(self.offsets) != len(self) + 1:
            raise ValueError(f"{self.directory}: {CAPTION_OFFSETS} has {len(self.offsets)} entries for {len(self)} "
                             "images")

    @property
    def context(self) -> np.memmap:
        if self._context is None:
            self._context = open_text_context(self.directory)
        return self._context

    def __getstate__(self):
        return {**super().__getstate__(), "_context": None}

    def caption_row(self, index: int) -> int:
        """The row of text_context (and of captions.jsonl) item `index` carries in this epoch."""
        first, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return first + draw_caption(self.seed, self.epoch, index, end - first)

    def __getitem__(self, index):
        latent, _, *tokens = super().__getitem__(index)
        context = torch.from_numpy(np.array(self.context[self.caption_row(index)], dtype=np.float32))
        return (latent, context, *tokens)
