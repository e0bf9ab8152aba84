"""Pre-extracted VAE latents: the on-disk layout `dico extract-latents` writes, and the data set that reads it.

A latents directory holds
  moments.npy  (N, 2, 2, C, h, w) float16/float32: [image, flip (0 = as is, 1 = mirrored), (mean, std), C, h, w]
  labels.npy   (N,) int64
  files.txt    the source image of each row, relative to the image folder
  meta.json    written last: its presence marks a finished extraction
and, while extraction runs, done.npy (N,) bool and extract.json (the settings a resumed run must share).

One preallocated memory-mapped array instead of the official two files per image: 1.28M images open as one file,
items are slices of the page cache, and no directory listing of millions of names is needed at start-up.
"""

import json
import os
from pathlib import Path

import numpy as np
import torch

from .folders import augment_generator

LATENT_FORMAT = "dico-latents/1"
MOMENTS, LABELS, FILES, META = "moments.npy", "labels.npy", "files.txt", "meta.json"
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


def create_latent_files(out, labels: np.ndarray, latent_shape, dtype: str, files) -> None:
    """Preallocate the arrays of an extraction of len(labels) images (sparse files: no time spent on zeros)."""
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"latent storage dtype must be one of {STORAGE_DTYPES}, got {dtype!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    count = len(labels)
    moments = np.lib.format.open_memmap(out / MOMENTS, mode="w+", dtype=dtype, shape=(count, 2, 2, *latent_shape))
    del moments
    done = np.lib.format.open_memmap(out / DONE, mode="w+", dtype=np.bool_, shape=(count,))
    done.flush()
    del done
    np.save(out / LABELS, np.asarray(labels, dtype=np.int64))
    (out / FILES).write_text("".join(f"{f}\n" for f in files))


def open_moments(directory, mode: str = "r") -> np.memmap:
    return np.load(Path(directory) / MOMENTS, mmap_mode=mode)


def open_done(directory, mode: str = "r+") -> np.memmap:
    return np.load(Path(directory) / DONE, mmap_mode=mode)


def write_json_atomic(path, payload: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


class LatentDataset(torch.utils.data.Dataset):
    """(latent float32 (C, h, w), label int64) pairs drawn from stored posterior moments.

    Every visit draws a fresh latent: the flip (as is / mirrored) and the Gaussian noise come from a generator keyed
    by (seed, epoch, index), so a draw is reproducible and independent of workers and processes. Returns
    (mean + std * noise) * scale, the scaled latent the model trains on. Call `set_epoch(epoch)` before indexing.
    """

    def __init__(self, directory, seed: int = 0, flip: bool = True):
        self.directory = Path(directory)
        self.meta = read_meta(self.directory)
        self.seed, self.flip, self.epoch = int(seed), flip, 0
        self.scale = float(self.meta["scale"])
        self.latent_shape = tuple(self.meta["latent_shape"])
        self.labels = np.load(self.directory / LABELS)
        self._moments = None  # opened lazily, in each DataLoader worker
        if len(self.labels) != self.meta["count"]:
            raise ValueError(f"{self.directory}: {LABELS} holds {len(self.labels)} labels, meta.json says "
                             f"{self.meta['count']} images")

    @property
    def moments(self) -> np.memmap:
        if self._moments is None:
            self._moments = open_moments(self.directory)
        return self._moments

    def __getstate__(self):
        # A pickled memmap would be copied into memory (spawned workers); workers reopen the file instead.
        return {**self.__dict__, "_moments": None}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        generator = augment_generator(self.seed, self.epoch, index)
        flip = int(torch.randint(2, (1,), generator=generator)) if self.flip else 0
        noise = torch.randn(self.latent_shape, generator=generator)
        mean, std = torch.from_numpy(np.array(self.moments[index, flip], dtype=np.float32))
        return (mean + std * noise) * self.scale, torch.tensor(self.labels[index], dtype=torch.int64)
